"""``fairloop generator train``: train the embedded generator from scratch, resumably.

Seven stages, each saved in a work folder so a killed run continues where it stopped:

1. **pool** — an unbiased pool of SynthFaces renders (:func:`sample_attributes` with the
   generator's own seed, no shortcut), independent of any user's training split, as Stable
   Diffusion is independent of CelebA;
2. **autoencoder** — ``AutoencoderKL`` with L1 + MSE + image-gradient loss and a tiny KL term;
3. **encode** — every image to latents (distribution mean) and two training captions per image
   to MiniLM token embeddings, once, so the UNet stage spends its time on the UNet;
4. **critic** — an attribute classifier (the oracle's network) trained briefly on the pool's
   renders, for the decoder stage's attribute loss;
5. **decoder** — the decoder alone is trained further on the cached latents, with the critic's
   attribute loss beside the pixel losses: a reconstruction must still read as old, smiling or
   chubby (pixel losses alone blurred away the wrinkles that make a face old). The latent space does
   not move, so this stage can run beside the UNet stage;
6. **unet** — ε-prediction on the DDPM schedule with 10 % caption dropout (classifier-free
   guidance) and an EMA of the weights, which is what gets saved;
7. **checker** — the critic that ships beside the weights and checks every draw: the same network
   trained as long as the oracle (12 epochs) with its own seed. The 4-epoch critic read gender
   wrong on 8 % of held-out renders (this one 4 %), and every misread sends an edit up the ladder.

``fairloop generator distil`` (:func:`distil_guidance`) then adds a guidance-distilled copy of the
UNet to finished weights: one network pass per sampling step instead of two.

The result (fp16 safetensors + ``manifest.json`` with the data seed, steps, time and scores) is
written atomically to ``out`` — by default the package's own asset folder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fairloop.diffusion.embedded import ASSETS, SCHEDULE, TextEncoder, build_unet, build_vae
from fairloop.io import atomic_write, atomic_write_json, atomic_write_tensors, replace_folder, work_folder

Log = Callable[[str], None]


@dataclass(frozen=True)
class GeneratorTrainConfig:
    n_images: int = 24_000
    data_seed: int = 20261123
    ae_steps: int = 5_000
    decoder_steps: int = 1_500
    unet_steps: int = 8_000
    batch_size: int = 32
    held_out: int = 512               # pool images kept out of autoencoder and critic training, for their scores
    critic_epochs: int = 4            # the decoder stage's critic
    checker_epochs: int = 12          # the shipped critic, which checks draws
    attribute_weight: float = 0.1     # of the critic's loss in the decoder stage
    ae_lr: float = 1e-3
    unet_lr: float = 3e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    threads: int = 2
    checkpoint_every: int = 200


# -------------------------------------------------------------------------------------- stages
def build_pool(cfg: GeneratorTrainConfig, work: Path, log: Log) -> Path:
    """Render the unbiased pool once: ``pool.npz`` with uint8 images and the attribute table."""
    from fairloop.data.synthfaces import ATTRIBUTES, render_pool

    path = work / "pool.npz"
    if path.exists():
        return path

    def report(done: int, total: int) -> None:
        if done % 4000 == 0:
            log(f"pool: {done}/{total} renders")

    images, table = render_pool(cfg.n_images, cfg.data_seed, report)
    save_npz(path, images=images, attributes=table.to_numpy(np.int8), names=np.array(ATTRIBUTES))
    return path


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _psnr(vae, images: np.ndarray) -> float:
    errors = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = _to_unit(images[start:start + 64])
            recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            errors.append(((recon - x) / 2).pow(2).flatten(1).mean(1))
    mse = torch.cat(errors).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train_autoencoder(cfg: GeneratorTrainConfig, work: Path, images: np.ndarray, log: Log):
    """Train (or resume) the autoencoder; returns it with its held-out PSNR."""
    vae = build_vae()
    held_out, train = images[:cfg.held_out], images[cfg.held_out:]
    done = resume(work / "vae", vae)
    if done < cfg.ae_steps:
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
        resume_optimizer(work / "vae", opt)
        rng = np.random.default_rng([cfg.data_seed, 1, done])
        started = time.time()
        for step in range(done, cfg.ae_steps):
            set_lr(opt, cfg.ae_lr, step, cfg.ae_steps)
            x = _to_unit(train[rng.integers(len(train), size=cfg.batch_size)])
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = (F.l1_loss(recon, x) + F.mse_loss(recon, x) + gradient_loss(recon, x)
                    + 1e-6 * posterior.kl().mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _checkpoint_and_log("autoencoder", [(work / "vae", vae, opt)], step, cfg.ae_steps, done, started, loss, cfg,
                                log)
    vae.eval()
    return vae, _psnr(vae, held_out)


def gradient_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: keeps the thin edges (brows, jaw, glasses) that MSE blurs."""
    def grads(t):
        return t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1]

    (ry, rx), (xy, xx) = grads(recon), grads(x)
    return F.l1_loss(ry, xy) + F.l1_loss(rx, xx)


def encode_pool(cfg: GeneratorTrainConfig, work: Path, vae, pool: dict, log: Log) -> Path:
    """Latents of every image and MiniLM embeddings of two captions each, in ``encoded.pt``."""
    from fairloop.diffusion.captions import training_caption

    path = work / "encoded.pt"
    if path.exists():
        return path
    images, attributes, names = pool["images"], pool["attributes"], [str(n) for n in pool["names"]]
    latents = []
    with torch.inference_mode():
        for start in range(0, len(images), 256):
            latents.append(vae.encode(_to_unit(images[start:start + 256])).latent_dist.mean)
    latents = torch.cat(latents)
    scaling = 1.0 / latents.std().item()
    encoder = TextEncoder()
    rng = np.random.default_rng([cfg.data_seed, 3])
    texts = torch.empty((len(images), 2, 32, 384), dtype=torch.float16)
    for start in range(0, len(images), 256):
        rows = [dict(zip(names, map(int, a))) for a in attributes[start:start + 256]]
        for variant in range(2):
            texts[start:start + 256, variant] = encoder([training_caption(r, rng) for r in rows]).half()
        if (start // 256) % 16 == 15:
            log(f"encode: {start + 256}/{len(images)} captions")
    empty = encoder([""])[0].half()
    encoded = {"latents": latents.half(), "texts": texts, "empty": empty, "scaling_factor": torch.tensor(scaling)}
    atomic_write(path, lambda tmp: torch.save(encoded, tmp))
    return path


def train_critic(cfg: GeneratorTrainConfig, work: Path, pool: dict, log: Log, *, name: str = "critic",
                 epochs: int | None = None, seed_offset: int = 0):
    """The oracle's network trained on this pool (the held-out images stay out). Not the packaged
    oracle, which scores the generator: a decoder tuned against the judge would flatter it, and a
    check by the judge would hide the generator's errors."""
    from fairloop.tools.quality import attribute_net, fit_attribute_net

    epochs = cfg.critic_epochs if epochs is None else epochs
    net = attribute_net(pool["attributes"].shape[1])
    if resume(work / name, net):
        return net.eval()

    def report(label: str, step: int, steps: int) -> None:
        if step == steps:
            log(f"{name}: {label} done")

    images = torch.from_numpy(pool["images"]).permute(0, 3, 1, 2)
    net = fit_attribute_net(images, pool["attributes"], torch.arange(cfg.held_out, len(images)),
                            epochs=epochs, seed=cfg.data_seed + seed_offset, device="cpu", progress=report)
    checkpoint(work / name, net, None, epochs)
    return net


@torch.inference_mode()
def _critic_accuracy(critic, pool: dict, n: int) -> float:
    """Of the first ``n`` (held-out) renders, the share the critic reads right on every attribute."""
    seen = critic(_to_unit(pool["images"][:n]).add(1).div(2)) > 0
    return float((seen.numpy() == (pool["attributes"][:n] == 1)).all(1).mean())


def finetune_decoder(cfg: GeneratorTrainConfig, work: Path, vae, pool: dict, latents: torch.Tensor, critic,
                     log: Log):
    """Train the decoder (and post-quant conv) on the cached latent means with pixel losses plus
    ``attribute_weight`` × the critic's loss; the encoder is untouched."""
    from fairloop.tools.quality import positive_weights

    images = pool["images"]
    labels = torch.from_numpy(pool["attributes"].astype(np.float32))
    attribute_loss = torch.nn.BCEWithLogitsLoss(pos_weight=positive_weights(labels[cfg.held_out:]))
    critic.requires_grad_(False)
    done = resume(work / "decoder", vae)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    if done < cfg.decoder_steps:
        vae.train()
        opt = torch.optim.AdamW(params, lr=cfg.ae_lr / 3, weight_decay=0.0)
        resume_optimizer(work / "decoder", opt)
        rng = np.random.default_rng([cfg.data_seed, 5, done])
        started = time.time()
        for step in range(done, cfg.decoder_steps):
            set_lr(opt, cfg.ae_lr / 3, step, cfg.decoder_steps)
            idx = rng.integers(cfg.held_out, len(images), size=cfg.batch_size)  # the held-out images stay out
            x = _to_unit(images[idx])
            recon = vae.decode(latents[torch.from_numpy(idx)].float()).sample
            loss = (F.l1_loss(recon, x) + F.mse_loss(recon, x) + gradient_loss(recon, x)
                    + cfg.attribute_weight * attribute_loss(critic(recon.clamp(-1, 1).add(1).div(2)), labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _checkpoint_and_log("decoder", [(work / "decoder", vae, opt)], step, cfg.decoder_steps, done, started, loss,
                                cfg, log)
    vae.eval()
    return vae, _psnr(vae, images[:cfg.held_out]), _attributes_kept(vae, critic, pool, cfg.held_out)


@torch.inference_mode()
def _attributes_kept(vae, critic, pool: dict, n: int) -> float:
    """Of the first ``n`` (held-out) renders, the share whose reconstruction the critic reads exactly
    as their attributes (the render itself, not its label, is the reference: the critic errs too)."""
    x = _to_unit(pool["images"][:n])
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    seen_source = critic(x.add(1).div(2)) > 0
    seen_recon = critic(recon.add(1).div(2)) > 0
    return float((seen_source == seen_recon).all(1).float().mean())


def train_unet(cfg: GeneratorTrainConfig, work: Path, encoded: dict, log: Log):
    """Train (or resume) the UNet; returns the EMA copy."""
    from diffusers import DDPMScheduler

    unet, ema = build_unet(), build_unet()
    done = resume(work / "unet", unet)
    if not resume(work / "unet-ema", ema):
        ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    scale = float(encoded["scaling_factor"])
    latents, texts, empty = encoded["latents"], encoded["texts"], encoded["empty"].float()
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "set_alpha_to_one"})
    if done < cfg.unet_steps:
        opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
        resume_optimizer(work / "unet", opt)
        rng = np.random.default_rng([cfg.data_seed, 4, done])
        torch.manual_seed(cfg.data_seed + done)
        started = time.time()
        for step in range(done, cfg.unet_steps):
            set_lr(opt, cfg.unet_lr, step, cfg.unet_steps, warmup=200)
            idx = torch.from_numpy(rng.integers(len(latents), size=cfg.batch_size))
            z0 = latents[idx].float() * scale
            context = texts[idx, torch.from_numpy(rng.integers(2, size=cfg.batch_size))].float()
            drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.caption_dropout)
            context[drop] = empty
            noise = torch.randn_like(z0)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,))
            loss = F.mse_loss(unet(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=context).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            _ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
            _checkpoint_and_log("unet", [(work / "unet", unet, opt), (work / "unet-ema", ema, None)], step,
                                cfg.unet_steps, done, started, loss, cfg, log)
    return ema.eval()


def train_generator(cfg: GeneratorTrainConfig, work: str | Path, out: str | Path | None = None,
                    log: Log = print) -> Path:
    """Run every stage (skipping finished ones) and write the shippable generator to ``out``."""
    torch.set_num_threads(cfg.threads)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else ASSETS
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def stage(name, fn):
        started = time.time()
        result = fn()
        timings[name] = timings.get(name, 0.0) + time.time() - started
        atomic_write_json(timings_path, timings)
        return result

    pool = np.load(stage("pool", lambda: build_pool(cfg, work, log)))
    pool = {k: pool[k] for k in pool.files}
    vae, psnr = stage("autoencoder", lambda: train_autoencoder(cfg, work, pool["images"], log))
    log(f"autoencoder: held-out PSNR {psnr:.1f} dB")
    encoded = torch.load(stage("encode", lambda: encode_pool(cfg, work, vae, pool, log)), weights_only=True)
    critic = stage("critic", lambda: train_critic(cfg, work, pool, log))
    vae, decoder_psnr, kept = stage("decoder", lambda: finetune_decoder(cfg, work, vae, pool, encoded["latents"],
                                                                         critic, log))
    log(f"decoder: held-out PSNR {decoder_psnr:.1f} dB; the critic reads every attribute of {kept:.0%} of "
        "held-out reconstructions as on the render")
    unet = stage("unet", lambda: train_unet(cfg, work, encoded, log))
    checker = stage("checker", lambda: train_critic(cfg, work, pool, log, name="checker", epochs=cfg.checker_epochs,
                                                     seed_offset=1))
    manifest = {
        "name": "fairloop embedded latent diffusion", "config": asdict(cfg),
        "data": {"pool": "SynthFaces renders, sample_attributes (no shortcut)", "seed": cfg.data_seed,
                 "n_images": cfg.n_images},
        "text_encoder": "all-MiniLM-L6-v2 last hidden state, 32 tokens",
        "scaling_factor": float(encoded["scaling_factor"]),
        "scores": {"autoencoder_psnr_db": round(psnr, 2), "decoder_psnr_db": round(decoder_psnr, 2),
                   "reconstructions_all_attributes_kept_by_critic": round(kept, 3),
                   "checker_held_out_all_attributes": round(_critic_accuracy(checker, pool, cfg.held_out), 3)},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    save_generator(vae, unet, manifest, out, checker)
    log(f"generator written to {out}")
    return out


def save_generator(vae, unet, manifest: dict, out: Path, critic=None) -> None:
    """fp16 safetensors in diffusers layout (+ the critic) + manifest, swapped in atomically."""
    import copy

    from fairloop.data.synthfaces import ATTRIBUTES
    from fairloop.tools.quality import ORACLE_WIDTH

    out = Path(out)
    tmp = work_folder(out)
    tmp.chmod(0o755)
    copy.deepcopy(vae).half().save_pretrained(tmp / "vae", safe_serialization=True)
    copy.deepcopy(unet).half().save_pretrained(tmp / "unet", safe_serialization=True)
    if critic is not None:
        (tmp / "critic").mkdir()
        atomic_write_tensors(tmp / "critic" / "weights.safetensors",
                             {k: v.half().contiguous() for k, v in critic.state_dict().items()})
        atomic_write_json(tmp / "critic" / "config.json", {"attributes": list(ATTRIBUTES), "width": ORACLE_WIDTH})
    atomic_write_json(tmp / "manifest.json", manifest)
    replace_folder(tmp, out)


@dataclass(frozen=True)
class DistilConfig:
    n_images: int = 6_000        # a pool of its own (its own seed): noised latents and captions to learn from
    data_seed: int = 20261207
    steps: int = 2_000
    batch_size: int = 32
    lr: float = 1e-4
    guidance: float = 5.0        # the guidance scale the student learns (SamplingConfig's default)
    threads: int = 2
    checkpoint_every: int = 100


def distil_guidance(cfg: DistilConfig, folder: str | Path | None, work: str | Path, out: str | Path | None = None,
                    log: Log = print) -> Path:
    """Guidance distillation (Meng et al. 2023, its first stage, at one fixed scale): a copy of the
    UNet learns to give in one pass what classifier-free guidance at ``cfg.guidance`` computes from
    two (the caption's and the empty caption's noise estimates), on noised latents of a fresh pool
    at uniformly drawn timesteps. The copy is written as ``unet-guided/`` beside the teacher, which
    stays for everything guidance distillation does not cover (other scales, negative prompts that
    name attributes, edit masks, inversion). Resumable through ``work``; ``out`` defaults to
    ``folder`` (default: the packaged weights), replaced atomically."""
    import copy
    import shutil

    from fairloop.diffusion.embedded import EmbeddedPipeline

    torch.set_num_threads(cfg.threads)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(folder) if folder else ASSETS
    out = Path(out) if out else folder
    started_all = time.time()
    teacher_pipe = EmbeddedPipeline.load(folder)
    teacher = teacher_pipe.unet.requires_grad_(False)
    pool_cfg = GeneratorTrainConfig(n_images=cfg.n_images, data_seed=cfg.data_seed, held_out=0)
    pool = np.load(build_pool(pool_cfg, work, log))
    pool = {k: pool[k] for k in pool.files}
    encoded = torch.load(encode_pool(pool_cfg, work, teacher_pipe.vae, pool, log), weights_only=True)
    latents, texts = encoded["latents"], encoded["texts"]
    scale = teacher_pipe.scaling_factor  # the teacher's, not this pool's
    empty = encoded["empty"].float().expand(cfg.batch_size, -1, -1)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    done = resume(work / "guided", student)
    num_steps = teacher_pipe.scheduler.config.num_train_timesteps
    final_loss = None  # none when a finished distillation is only written out again
    if done < cfg.steps:
        opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
        resume_optimizer(work / "guided", opt)
        rng = np.random.default_rng([cfg.data_seed, 6, done])
        torch.manual_seed(cfg.data_seed + done)
        started = time.time()
        for step in range(done, cfg.steps):
            set_lr(opt, cfg.lr, step, cfg.steps, warmup=50)
            idx = torch.from_numpy(rng.integers(len(latents), size=cfg.batch_size))
            context = texts[idx, torch.from_numpy(rng.integers(2, size=cfg.batch_size))].float()
            z0 = latents[idx].float() * scale
            t = torch.randint(0, num_steps, (cfg.batch_size,))
            noisy = teacher_pipe.scheduler.add_noise(z0, torch.randn_like(z0), t)
            with torch.no_grad():
                eps_uncond, eps_cond = teacher(torch.cat([noisy, noisy]), torch.cat([t, t]),
                                               encoder_hidden_states=torch.cat([empty, context])).sample.chunk(2)
                target = eps_uncond + cfg.guidance * (eps_cond - eps_uncond)
            loss = F.mse_loss(student(noisy, t, encoder_hidden_states=context).sample, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            _checkpoint_and_log("distil", [(work / "guided", student, opt)], step, cfg.steps, done, started, loss,
                                cfg, log)
        final_loss = round(loss.item(), 5)
    manifest = {**teacher_pipe.manifest, "guided_unet": {
        "guidance": cfg.guidance, "config": asdict(cfg), "final_loss": final_loss,
        "seconds": round(time.time() - started_all, 1)}}
    tmp = work_folder(out)
    tmp.chmod(0o755)
    shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unet-guided", ".*"))
    copy.deepcopy(student).eval().half().save_pretrained(tmp / "unet-guided", safe_serialization=True)
    atomic_write_json(tmp / "manifest.json", manifest)
    replace_folder(tmp, out)
    log(f"guidance-distilled UNet written to {out / 'unet-guided'}")
    return out


# ------------------------------------------------------------------------------------ helpers
def set_lr(opt, base: float, step: int, total: int, warmup: int = 0) -> None:
    """Linear warm-up, then cosine decay to 5 % of ``base``."""
    if step < warmup:
        lr = base * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in opt.param_groups:
        group["lr"] = lr


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def checkpoint(folder: Path, model, opt, step: int) -> None:
    atomic_write_tensors(folder / "weights.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    if opt is not None:
        atomic_write(folder / "optimizer.pt", lambda tmp: torch.save(opt.state_dict(), tmp))
    atomic_write_json(folder / "step.json", {"step": step})  # last: a step counts once everything is saved


def _checkpoint_and_log(name: str, folders: list[tuple[Path, Any, Any]], step: int, total: int, done: int,
                        started: float, loss: torch.Tensor, cfg: GeneratorTrainConfig | DistilConfig, log: Log) -> None:
    """Every ``checkpoint_every`` steps and at the end: save ``(folder, model, optimizer)`` and report."""
    if (step + 1) % cfg.checkpoint_every and step + 1 != total:
        return
    for folder, model, opt in folders:
        checkpoint(folder, model, opt, step + 1)
    from fairloop.progress import clock_text

    rate = (step + 1 - done) * cfg.batch_size / (time.time() - started)
    eta = clock_text((total - step - 1) * cfg.batch_size / rate)
    log(f"{name}: step {step + 1}/{total}, loss {loss.item():.4f}, {rate:.0f} images/s, eta {eta}")


def resume(folder: Path, model) -> int:
    """Load a checkpoint if there is one; returns its step (0 when none)."""
    from safetensors.torch import load_file

    if not (folder / "step.json").exists():
        return 0
    model.load_state_dict(load_file(folder / "weights.safetensors"))
    return int(json.loads((folder / "step.json").read_text())["step"])


def resume_optimizer(folder: Path, opt) -> None:
    if (folder / "optimizer.pt").exists():
        opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))


def save_npz(path: Path, **arrays) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare temp name
            np.savez(f, **arrays)

    atomic_write(path, write)


__all__ = ["DistilConfig", "GeneratorTrainConfig", "distil_guidance", "save_generator", "train_generator"]

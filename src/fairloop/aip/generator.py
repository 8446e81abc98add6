"""AIP's attribute-conditional generator (seed 002): an encoder z = enc(x) and a decoder x = dec(z, a).

Why a model of its own and not the embedded generator's autoencoder: AIP moves ``a`` to change
attributes and ``z`` to change the rest, so z must carry who the person is and *not* their
attributes. The embedded generator's VAE latent is an image code that carries every attribute; a
decoder reading it beside ``a`` would learn to ignore ``a``. SynthFaces gives what makes z
attribute-free by construction: its renderer draws one identity under any attribute vector, so the
decoder learns to turn enc(render(a1, id)) and an independent, random a2 into render(a2, id) — z
cannot pass attributes through, because a2 says nothing about x1. (Seed 002 gets the same from an
attribute discriminator on a GAN; here the pairs make it a plain regression.)

Training (``fairloop generator train-aip``) is resumable like ``fairloop generator train``: the pair
pool is rendered once into the work folder, the weights are checkpointed every few hundred steps.
Losses: L1 + MSE + image-gradient L1 on both reconstructions, the embedded generator's critic on
dec(z, a2) (so thin cues such as wrinkles survive; the attribute *oracle*, a separately trained
reader, scores the result, so the scores do not grade the training loss), and a small L2 on z that
gives its coordinates a common scale (AIP's proximity term and LPR's tolerance are in that scale).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write_json, atomic_write_tensors, replace_folder, work_folder

Log = Callable[[str], None]

PACKAGED_AIP = Path(__file__).resolve().parents[1] / "assets" / "aip-generator"


class AttributeAutoencoder(nn.Module):
    """enc: 64×64 image in [0, 1] → z (``latent_dim``); dec: (z, a) → image in [0, 1]; ``a`` has one
    entry per name in ``attributes`` (0/1, or in between while AIP searches)."""

    def __init__(self, attributes: Sequence[str], latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.latent_dim, self.width = latent_dim, width
        w = width

        def down(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]

        def up(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.GroupNorm(8, c_out), nn.SiLU()]

        # GroupNorm, not BatchNorm: every image's output depends on that image alone, so a batched
        # search gives each image the result it would get alone
        self.encoder = nn.Sequential(*down(3, w), *down(w, 2 * w), *down(2 * w, 4 * w), *down(4 * w, 4 * w),
                                     nn.Flatten(), nn.Linear(4 * w * 16, latent_dim))
        self.project = nn.Linear(latent_dim + len(self.attributes), 4 * w * 16)
        self.decoder = nn.Sequential(*up(4 * w, 4 * w), *up(4 * w, 2 * w), *up(2 * w, w), *up(w, w // 2),
                                     nn.Conv2d(w // 2, 3, 3, padding=1), nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, a.to(z.dtype)], 1))
        return self.decoder(h.view(len(z), 4 * self.width, 4, 4))

    def config(self) -> dict[str, Any]:
        return {"attributes": list(self.attributes), "latent_dim": self.latent_dim, "width": self.width}


def save_aip_generator(model: AttributeAutoencoder, manifest: dict[str, Any], out: str | Path) -> Path:
    """fp16 safetensors + ``config.json`` + ``manifest.json``, swapped in as one folder."""
    out = Path(out)
    tmp = work_folder(out)
    tmp.chmod(0o755)
    atomic_write_tensors(tmp / "weights.safetensors", {k: v.detach().half().contiguous()
                                                       for k, v in model.state_dict().items()})
    atomic_write_json(tmp / "config.json", model.config())
    atomic_write_json(tmp / "manifest.json", manifest)
    replace_folder(tmp, out)
    return out


def load_aip_generator(folder: str | Path | None = None, device: str | torch.device = "cpu") -> AttributeAutoencoder:
    """The generator saved in ``folder`` (default: the packaged one), in float32, for inference."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else PACKAGED_AIP
    weights, config = folder / "weights.safetensors", folder / "config.json"
    if not weights.is_file() or not config.is_file():
        where = "the packaged AIP generator is missing" if folder == PACKAGED_AIP else f"no AIP generator in {folder}"
        raise ConfigError(f"{where} (need weights.safetensors and config.json)",
                          "train one with 'fairloop generator train-aip' (add --out FOLDER for your own copy)")
    try:
        meta = json.loads(config.read_text())
        model = AttributeAutoencoder([str(a) for a in meta["attributes"]], int(meta["latent_dim"]), int(meta["width"]))
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    except Exception as exc:  # noqa: BLE001 — bad JSON, missing keys, SafetensorError, size mismatches
        raise DataError(f"AIP generator {folder} is damaged or does not match its config ({exc})",
                        "retrain it with 'fairloop generator train-aip'") from None
    model.requires_grad_(False)
    return model.to(device).eval()


def check_fits(model: AttributeAutoencoder, dataset, target: str) -> None:
    """A :class:`ConfigError` unless every attribute ``model`` conditions on is in ``dataset``, the
    ``target`` among them (the search keeps or flips it)."""
    missing = [a for a in model.attributes if a not in dataset.attributes]
    if missing:
        raise ConfigError(f"the AIP generator conditions on attributes this dataset lacks: {', '.join(missing)}",
                          "use a SynthFaces-format folder, or train a generator on this dataset's attributes")
    if target not in model.attributes:
        raise ConfigError(f"the AIP generator has no attribute {target!r} to keep or flip",
                          f"use a --target among {', '.join(model.attributes)}")


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class AIPTrainConfig:
    n_identities: int = 12_000       # each rendered twice: natural attributes, then random ones
    data_seed: int = 20261206
    steps: int = 5_000
    batch_size: int = 32
    held_out: int = 512              # identities kept out of training, for the scores
    latent_dim: int = 32
    width: int = 32
    lr: float = 1e-3
    attribute_weight: float = 0.1    # of the critic's loss on dec(z, a2)
    latent_weight: float = 1e-3      # of mean(z²)
    threads: int = 2
    checkpoint_every: int = 200


def random_attributes(n: int, rng: np.random.Generator, names: Sequence[str]) -> np.ndarray:
    """``n`` attribute vectors with every attribute independent of the others and of the identity:
    each a fair coin, except the hair states, of which exactly one is on (as the renderer needs)."""
    from fairloop.data.synthfaces import HAIR_STATES

    out = (rng.random((n, len(names))) < 0.5).astype(np.int8)
    hair = [j for j, a in enumerate(names) if a in HAIR_STATES]
    out[:, hair] = 0
    out[np.arange(n), np.array(hair)[rng.integers(len(hair), size=n)]] = 1
    return out


def build_pairs(cfg: AIPTrainConfig, work: Path, log: Log) -> Path:
    """``pairs.npz``: per identity, a render with natural attributes (x1, a1) and one with random
    attributes (x2, a2); rendered once."""
    from fairloop.data.synthfaces import ATTRIBUTES, render_face, sample_attributes

    path = work / "pairs.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(cfg.data_seed)
    n = cfg.n_identities
    a1 = sample_attributes(n, rng)[list(ATTRIBUTES)].to_numpy(np.int8)
    a2 = random_attributes(n, rng, ATTRIBUTES)
    identities = rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)
    x1 = np.empty((n, 64, 64, 3), np.uint8)
    x2 = np.empty_like(x1)
    started = time.time()
    for i in range(n):
        x1[i] = np.asarray(render_face(dict(zip(ATTRIBUTES, a1[i])), int(identities[i])))
        x2[i] = np.asarray(render_face(dict(zip(ATTRIBUTES, a2[i])), int(identities[i])))
        if (i + 1) % 2000 == 0 or i + 1 == n:
            log(f"pairs: {i + 1}/{n} identities rendered twice, {_eta(started, i + 1, n)}")
    from fairloop.diffusion.training import save_npz

    save_npz(path, x1=x1, a1=a1, x2=x2, a2=a2, identities=identities, names=np.array(ATTRIBUTES))
    return path


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [0, 1] (the classifiers' input)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def _eta(started: float, done: int, total: int) -> str:
    elapsed = time.time() - started
    left = elapsed / max(done, 1) * (total - done)
    return f"{elapsed / 60:.1f} min elapsed, eta {left / 60:.1f} min"


def train_aip_generator(cfg: AIPTrainConfig, work: str | Path, out: str | Path | None = None,
                        log: Log = print) -> Path:
    """Render the pairs, train (or resume), score on held-out identities, write to ``out``."""
    from fairloop.diffusion.embedded import ASSETS, Critic
    from fairloop.diffusion.training import checkpoint, gradient_loss, resume, resume_optimizer, set_lr

    torch.set_num_threads(cfg.threads)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    started_all = time.time()
    data = np.load(build_pairs(cfg, work, log))
    names = tuple(str(a) for a in data["names"])
    x1, a1, x2, a2 = data["x1"], data["a1"], data["x2"], data["a2"]
    held = slice(0, cfg.held_out)
    train = np.arange(cfg.held_out, len(x1))
    model = AttributeAutoencoder(names, cfg.latent_dim, cfg.width)
    critic = Critic.load(ASSETS)
    if critic is None:
        raise ConfigError("the embedded generator ships no critic", "run 'fairloop generator train' first")
    critic_net = critic.net.requires_grad_(False)
    columns = [list(critic.columns).index(a) for a in names]
    done = resume(work / "aip", model)
    if done < cfg.steps:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        resume_optimizer(work / "aip", opt)
        rng = np.random.default_rng([cfg.data_seed, 1, done])
        started = time.time()
        for step in range(done, cfg.steps):
            set_lr(opt, cfg.lr, step, cfg.steps, warmup=100)
            idx = np.sort(rng.choice(train, size=cfg.batch_size, replace=False))
            source, target = _unit(x1[idx]), _unit(x2[idx])
            attrs, new_attrs = torch.from_numpy(a1[idx]).float(), torch.from_numpy(a2[idx]).float()
            z = model.encode(source)
            recon, moved = model.decode(z, attrs), model.decode(z, new_attrs)
            pixels = sum(F.l1_loss(r, x) + F.mse_loss(r, x) + gradient_loss(r, x)
                         for r, x in ((recon, source), (moved, target)))
            read = F.binary_cross_entropy_with_logits(critic_net(moved)[:, columns], new_attrs)
            loss = pixels + cfg.attribute_weight * read + cfg.latent_weight * z.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                checkpoint(work / "aip", model, opt, step + 1)
                log(f"aip generator: step {step + 1}/{cfg.steps}, loss {loss.item():.4f}, "
                    f"{_eta(started, step + 1 - done, cfg.steps - done)}")
    model.eval()
    scores = score_generator(model, x1[held], a1[held], x2[held], a2[held])
    log("aip generator: held-out reconstruction PSNR {reconstruction_psnr_db} dB, attribute transfer PSNR "
        "{transfer_psnr_db} dB, oracle reads a flipped attribute as set {attribute_control_mean}".format(**scores))
    manifest = {"name": "fairloop AIP attribute-conditional autoencoder", "config": asdict(cfg),
                "data": {"pairs": "SynthFaces: one identity rendered with natural and with random attributes",
                         "seed": cfg.data_seed, "n_identities": cfg.n_identities},
                "scores": scores, "seconds": round(time.time() - started_all, 1)}
    out = save_aip_generator(model, manifest, out or PACKAGED_AIP)
    log(f"AIP generator written to {out}")
    return out


@torch.inference_mode()
def score_generator(model: AttributeAutoencoder, x1: np.ndarray, a1: np.ndarray, x2: np.ndarray, a2: np.ndarray,
                    oracle=None) -> dict[str, Any]:
    """Held-out scores: reconstruction PSNR (dec(enc(x1), a1) vs x1), transfer PSNR (dec(enc(x1), a2)
    vs the render of a2), and per attribute, the share of decodes with that attribute flipped that
    the attribute oracle reads as set (a hair state is only switched on: off names no colour)."""
    from fairloop.data.synthfaces import HAIR_STATES
    from fairloop.tools.quality import AttributeOracle

    oracle = oracle or AttributeOracle.packaged()
    source, target = _unit(x1), _unit(x2)
    attrs = torch.from_numpy(a1).float()
    z = model.encode(source)

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(10 * math.log10(1 / max(F.mse_loss(a, b).item(), 1e-12)), 2)

    control: dict[str, float] = {}
    columns = {a: j for j, a in enumerate(oracle.attributes)}
    for j, name in enumerate(model.attributes):
        flipped = attrs.clone()
        if name in HAIR_STATES:
            rows = flipped[:, j] == 0
            flipped[:, [model.attributes.index(h) for h in HAIR_STATES]] = 0
            flipped[:, j] = 1
        else:
            rows = torch.ones(len(flipped), dtype=torch.bool)
            flipped[:, j] = 1 - flipped[:, j]
        if not rows.any() or name not in columns:
            continue
        seen = oracle.predict(model.decode(z[rows], flipped[rows]))[:, columns[name]] >= 0.5
        control[name] = round(float((seen == flipped[rows, j].numpy().astype(bool)).mean()), 3)
    recon = model.decode(z, attrs)
    read = oracle.predict(recon)[:, [columns[a] for a in model.attributes if a in columns]] >= 0.5
    kept = read == a1[:, [j for j, a in enumerate(model.attributes) if a in columns]].astype(bool)
    return {"reconstruction_psnr_db": psnr(recon, source),
            "transfer_psnr_db": psnr(model.decode(z, torch.from_numpy(a2).float()), target),
            "reconstruction_attributes_read": round(float(kept.mean()), 3),
            "attribute_control": control,
            "attribute_control_mean": round(float(np.mean(list(control.values()))), 3) if control else None,
            "n_held_out": len(x1)}


__all__ = [
    "PACKAGED_AIP",
    "AIPTrainConfig",
    "AttributeAutoencoder",
    "check_fits",
    "load_aip_generator",
    "random_attributes",
    "save_aip_generator",
    "score_generator",
    "train_aip_generator",
]

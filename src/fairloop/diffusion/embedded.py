"""The embedded generator: a small latent diffusion model that follows text, on the CPU.

Built from the same diffusers parts as Stable Diffusion — an ``AutoencoderKL`` (64×64×3 ↔
16×16×8 in the shipped weights) and a ``UNet2DConditionModel`` — and conditioned on the token
embeddings (last hidden state, 32 tokens × 384) of the packaged all-MiniLM-L6-v2. It was trained by
``fairloop generator train`` on an unbiased pool of SynthFaces renders with captions from
:mod:`fairloop.diffusion.captions`, and its weights ship with the package
(``fairloop/assets/embedded-generator``; ``manifest.json`` says how they were made).

Sampling is DDIM with classifier-free guidance; the negative prompt takes the place of the empty
caption. Every image has its own seed, so a batch's images do not depend on the batch size.
Image-to-image is SDEdit: the source is encoded, noised to ``strength`` and denoised with the
new caption.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fairloop import minilm
from fairloop.errors import ConfigError
from fairloop.io import atomic_write
from fairloop.tools.generate import GenerationResult, Generator, apply_edits, request_edits
from fairloop.vision.models import resolve_device

IMAGE_SIZE = 64
MAX_TOKENS = 32
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "embedded-generator"

#: Diffusers configs of the two networks that the training command builds. Saved weights carry their
#: own configs, so weights trained with other settings (the packaged ones have 4 latent channels) load.
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=8, sample_size=IMAGE_SIZE, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), norm_num_groups=8,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=VAE_CONFIG["latent_channels"], out_channels=VAE_CONFIG["latent_channels"],
    layers_per_block=1, block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32,
)
#: The training noise schedule (Stable Diffusion's); sampling uses DDIM over it.
SCHEDULE: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1)


EDIT_MODES = ("invert", "sdedit")


@dataclass(frozen=True)
class SamplingConfig:
    """How images are drawn. The defaults come from a sweep of bench_generator's edits on fresh
    renders (never a run's data): below strength 0.8 this model rarely changes hair colour."""

    steps: int = 20
    guidance: float = 5.0
    strength: float = 0.8     # image-to-image: how far the source is noised (0 = unchanged, 1 = new image)
    batch_size: int = 32
    edit: str = "sdedit"      # image-to-image with captioned sources: "sdedit" or "invert" (see image_to_image)

    def __post_init__(self):
        if self.edit not in EDIT_MODES:
            raise ConfigError(f"unknown edit mode {self.edit!r}", f"use one of {', '.join(EDIT_MODES)}")


class TextEncoder:
    """MiniLM token embeddings: ``(n, 32, 384)``; the empty string is the unconditional caption."""

    def __init__(self, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        minilm.offline_env()
        path = minilm.model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        self.device = device

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                               return_tensors="pt").to(self.device)
        return self.model(**batch).last_hidden_state


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images → ``(n, 3, 64, 64)`` floats in [-1, 1] (the autoencoder's range)."""
    arrays = [np.asarray(im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    arrays = batch.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


class EmbeddedPipeline:
    """Autoencoder + UNet + text encoder + DDIM, with text-to-image and image-to-image."""

    def __init__(self, vae, unet, scaling_factor: float, *, text_encoder: TextEncoder | None = None,
                 device: str = "cpu", manifest: dict[str, Any] | None = None):
        from diffusers import DDIMScheduler

        self.device = device
        self.vae = vae.eval().to(device)
        self.unet = unet.eval().to(device)
        self.scaling_factor = float(scaling_factor)
        self.text_encoder = text_encoder or TextEncoder(device)
        self.scheduler = DDIMScheduler(**SCHEDULE)
        self.manifest = manifest or {}

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, folder: str | Path | None = None, device: str = "cpu") -> EmbeddedPipeline:
        """Load saved weights (default: the packaged ones); fp16 files are upcast to fp32."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder) if folder else ASSETS
        manifest = read_manifest(folder)
        try:
            vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32, local_files_only=True)
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32,
                                                        local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the embedded generator at {folder} cannot be loaded: {exc}",
                              "retrain it with `fairloop generator train`, or reinstall fairloop") from exc
        return cls(vae, unet, manifest["scaling_factor"], device=device, manifest=manifest)

    @property
    def model_id(self) -> str:
        return model_id_of(self.manifest)

    # ----------------------------------------------------------------------------- sampling
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → scaled latents (the distribution's mean: edits stay faithful)."""
        with torch.inference_mode():
            return self.vae.encode(images.to(self.device)).latent_dist.mean * self.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.vae.decode(latents / self.scaling_factor).sample

    def text_to_image(self, prompts: Sequence[str], seeds: Sequence[int], *, negative_prompt: str = "",
                      config: SamplingConfig = SamplingConfig()) -> list[Image.Image]:
        return self._sample(prompts, seeds, None, negative_prompt, config)

    def image_to_image(self, sources: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int], *,
                       negative_prompt: str = "", source_prompts: Sequence[str] | None = None,
                       config: SamplingConfig = SamplingConfig()) -> list[Image.Image]:
        """Edit each source towards its prompt, ``config.strength`` of the way back from noise.

        With ``source_prompts`` (captions of the sources) this is negative-prompt inversion: the
        source is DDIM-inverted under its own caption, then sampled with that caption in the
        negative slot (so ``negative_prompt`` is not used). Where the two captions agree the
        guidance cancels and the sampler retraces the inversion, which keeps what the edit does not
        name. Without them it is SDEdit: the source is noised with the seed's noise and denoised."""
        if len(sources) != len(prompts) or (source_prompts is not None and len(source_prompts) != len(prompts)):
            raise ValueError("image_to_image needs one prompt (and one source prompt, if any) per source image")
        return self._sample(prompts, seeds, sources, negative_prompt, config, source_prompts)

    def _sample(self, prompts, seeds, sources, negative_prompt, config, source_prompts=None) -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        if not 0 < config.strength <= 1 or config.steps < 1:
            raise ConfigError(f"unusable sampling settings (steps={config.steps}, strength={config.strength})",
                              "use steps ≥ 1 and 0 < strength ≤ 1")
        out: list[Image.Image] = []
        for start in range(0, len(prompts), config.batch_size):
            stop = start + config.batch_size
            out += self._sample_batch(list(prompts[start:stop]), list(seeds[start:stop]),
                                      None if sources is None else sources[start:stop], negative_prompt, config,
                                      None if source_prompts is None else list(source_prompts[start:stop]))
        return out

    @torch.inference_mode()
    def _sample_batch(self, prompts, seeds, sources, negative_prompt, config, source_prompts) -> list[Image.Image]:
        n = len(prompts)
        cond = self.text_encoder(prompts)
        if source_prompts is None:
            uncond = self.text_encoder([negative_prompt]).expand(n, -1, -1)
        else:
            uncond = self.text_encoder(source_prompts)
        context = torch.cat([uncond, cond])
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        noise = noise.to(self.device)
        self.scheduler.set_timesteps(config.steps)
        timesteps = self.scheduler.timesteps
        if sources is None:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            keep = min(config.steps, max(1, round(config.steps * config.strength)))
            timesteps = timesteps[config.steps - keep:]
            clean = self.encode_images(to_tensor(sources))
            if source_prompts is None:
                latents = self.scheduler.add_noise(clean, noise, timesteps[:1])
            else:
                latents = self._invert(clean, uncond, timesteps)
        for t in timesteps:
            both = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
            eps_uncond, eps_cond = both.chunk(2)
            eps = eps_uncond + config.guidance * (eps_cond - eps_uncond)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return to_images(self.decode_latents(latents))

    def _invert(self, latents: torch.Tensor, context: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """DDIM inversion: clean latents → the latents at ``timesteps[0]`` that DDIM sampling under
        ``context`` (guidance 1) maps back to them."""
        alphas = self.scheduler.alphas_cumprod.to(latents.device)
        alpha_before = torch.tensor(1.0, device=latents.device)
        for t in timesteps.flip(0):  # from the least noisy step up
            eps = self.unet(latents, t, encoder_hidden_states=context).sample
            clean = (latents - (1 - alpha_before).sqrt() * eps) / alpha_before.sqrt()
            latents = alphas[t].sqrt() * clean + (1 - alphas[t]).sqrt() * eps
            alpha_before = alphas[t]
        return latents


# ------------------------------------------------------------------------------- the backend
class EmbeddedGenerator(Generator):
    """fairloop's own generator (``--generator embedded``): text-to-image, or edits of source images.

    With sources whose attribute table covers the SynthFaces vocabulary, an edit is conditioned on
    the full caption of the edited attributes (the source's attributes with the prompt's edits
    applied), so the caption names everything that should stay, and the source's own caption
    can drive an inversion (``edit="invert"``; see :meth:`EmbeddedPipeline.image_to_image`). The
    default is SDEdit, which bench_generator measured as no worse on the shipped weights: their
    autoencoder, which inversion reproduces faithfully, loses gender and age too often.
    Sources without that vocabulary get SDEdit with the prompt as written.
    """

    name = "embedded"
    exact = False

    def __init__(self, folder: str | Path | None = None, *, device: str = "auto", steps: int | None = None,
                 guidance: float | None = None, strength: float | None = None, batch_size: int | None = None,
                 edit: str | None = None, cancel: threading.Event | None = None):
        self.folder = Path(folder) if folder else ASSETS
        self.device = str(resolve_device(device))
        chosen = {"steps": steps, "guidance": guidance, "strength": strength, "batch_size": batch_size, "edit": edit}
        self.sampling = SamplingConfig(**{k: v for k, v in chosen.items() if v is not None})
        self.cancel = cancel
        self._pipeline: EmbeddedPipeline | None = None
        self.model_id = model_id_of(read_manifest(self.folder))  # checks the weights exist, without loading them

    @property
    def pipeline(self) -> EmbeddedPipeline:
        if self._pipeline is None:
            self._pipeline = EmbeddedPipeline.load(self.folder, self.device)
        return self._pipeline

    def generate(self, request, out_dir, *, sources=None, progress=None) -> GenerationResult:
        from fairloop.data.datasets import read_image
        from fairloop.data.synthfaces import ATTRIBUTES
        from fairloop.diffusion.captions import caption, intended_attributes

        request.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        edits, avoid, notes = request_edits(request, ATTRIBUTES)
        result = GenerationResult(notes=notes)
        rng = np.random.default_rng(request.seed)
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=request.n)]
        cfg = self.sampling

        if request.source_ids and sources is None:
            raise ConfigError("minimal-change edits need the source dataset", "pass sources=the dataset")
        if request.source_ids:
            ids = [request.source_ids[i % len(request.source_ids)] for i in range(request.n)]
            full = set(ATTRIBUTES) <= set(sources.attributes)
            known = [a for a in sources.attributes if a in ATTRIBUTES]
            bases = sources.table.loc[ids, known].astype(int).to_dict("records")
            if full:
                wanted = [apply_edits(b, edits, rng, avoid=avoid) for b in bases]
                prompts = [caption(w) for w in wanted]
                source_prompts = [caption(b) for b in bases] if cfg.edit == "invert" else None
            else:
                wanted = [b | edits for b in bases]
                prompts, source_prompts = [request.prompt] * request.n, None
                result.notes.append("sources lack SynthFaces attributes: edits are SDEdit conditioned on the prompt "
                                    "as written")
            strength = cfg.strength
        else:
            ids, source_prompts = [None] * request.n, None
            prompts = [request.prompt] * request.n
            wanted = [intended_attributes(request.prompt) | {request.target: request.label}] * request.n
            strength = None

        edit = None if strength is None else ("invert" if source_prompts else "sdedit")
        names = [self._file_name(p, request.negative_prompt, s, i, strength, edit)
                 for p, s, i in zip(prompts, seeds, ids)]
        todo = [k for k, name in enumerate(names) if not (out_dir / name).exists()]
        done = request.n - len(todo)
        for start in range(0, len(todo), cfg.batch_size):
            if self.cancel is not None and self.cancel.is_set():
                raise ConfigError(f"generation cancelled after {done} of {request.n} images",
                                  "run the same command again: finished images are kept and skipped")
            chunk = todo[start:start + cfg.batch_size]
            batch_prompts, batch_seeds = [prompts[k] for k in chunk], [seeds[k] for k in chunk]
            if strength is None:
                images = self.pipeline.text_to_image(batch_prompts, batch_seeds,
                                                     negative_prompt=request.negative_prompt, config=cfg)
            else:
                src = [Image.fromarray(read_image(sources.table.at[ids[k], "path"], IMAGE_SIZE)) for k in chunk]
                images = self.pipeline.image_to_image(
                    src, batch_prompts, batch_seeds, negative_prompt=request.negative_prompt, config=cfg,
                    source_prompts=None if source_prompts is None else [source_prompts[k] for k in chunk])
            for k, image in zip(chunk, images):
                atomic_write(out_dir / names[k], lambda tmp, image=image: image.save(tmp, format="PNG"))
            done += len(chunk)
            if progress:
                progress("generate", done, request.n)

        for k in range(request.n):
            result.rows.append({
                "file": names[k], "path": str(out_dir / names[k]), "prompt": request.prompt,
                "conditioning": prompts[k], "negative_prompt": request.negative_prompt, "source_id": ids[k],
                "seed": seeds[k], "backend": self.name, "model_id": self.model_id, "label": request.label,
                "intended": wanted[k], "attributes": wanted[k], "strength": strength, "edit": edit,
                "steps": cfg.steps, "guidance": cfg.guidance,
            })
        return result

    def _file_name(self, prompt: str, negative: str, seed: int, source_id: str | None, strength: float | None,
                   edit: str | None) -> str:
        """Content-addressed: a resumed run finds its finished images and does not redo them."""
        cfg = self.sampling
        key = json.dumps([self.model_id, prompt, negative, seed, source_id, strength, edit, cfg.steps, cfg.guidance])
        return hashlib.sha256(key.encode()).hexdigest()[:16] + ".png"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a generator folder; a folder without one is a clear error."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"no embedded generator at {folder} (manifest.json is missing)",
                          "train it with `fairloop generator train`, or reinstall fairloop to get the packaged weights")
    return json.loads(path.read_text())


def model_id_of(manifest: dict[str, Any]) -> str:
    """Names the weights: the packaged name plus a hash of the manifest (training seed, steps)."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    return f"fairloop-embedded-ldm@{digest}"


__all__ = ["ASSETS", "IMAGE_SIZE", "EmbeddedGenerator", "EmbeddedPipeline", "SamplingConfig", "TextEncoder",
           "build_unet", "build_vae", "model_id_of", "to_images", "to_tensor"]

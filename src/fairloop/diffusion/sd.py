"""The ``sd`` generator: any Stable Diffusion 1.x/2.x checkpoint in diffusers layout, loaded offline.

Without source images it is text-to-image (``StableDiffusionPipeline``). With sources it is SDEdit
(``StableDiffusionImg2ImgPipeline`` sharing the same components): each source is resized to the
model's resolution, noised to ``strength``, denoised with the prompt, and the result is resized
back to the source's size. Every image has its own seed (one ``torch.Generator`` per image), so an
image does not depend on the batch it was drawn in, and its file name is a hash of everything that
determines it, so a resumed run skips finished images.

On CUDA the pipeline runs in float16 with SDPA attention, the batch size follows the free GPU
memory (:func:`batch_size_for`), and the model is offloaded to the CPU between components when the
GPU cannot hold it plus one image (:func:`needs_cpu_offload`).

Not implemented: prompt-to-prompt and inversion-based editing (null-text inversion, DDIM
inversion). SDEdit is the only way this backend preserves a source; it keeps the layout and colours
of the source, not its identity, so its images are approximate counterfactuals (``exact = False``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fairloop.data.datasets import FaceDataset
from fairloop.data.synthfaces import ATTRIBUTES
from fairloop.errors import ConfigError, DataError
from fairloop.generators.base import GenerationRequest, GenerationResult, Generator, apply_edits, request_edits
from fairloop.io import atomic_write, finished_file
from fairloop.vision.models import resolve_device

GIB = 1024**3
#: Extra GPU memory one more image in a batch costs at 512×512 in a 16-bit dtype: the UNet's
#: activations for the guided and unguided pass with SDPA attention, measured at about 0.13 GiB
#: for SD 1.5 on an H200 (``bench/bench_sd_memory.py`` measures it for any checkpoint), doubled:
#: a batch that is too small is slower, one that is too large fails. (It was 1.25 GiB, which
#: gave mid-size GPUs needlessly small batches.)
IMAGE_BYTES_512_HALF = int(0.25 * GIB)
#: Memory kept once, whatever the batch, for the VAE decode, which runs one image at a time (VAE
#: slicing) — an estimate until bench_sd_memory.py has measured it on a GPU.
VAE_BYTES_512_HALF = int(1.5 * GIB)
#: Share of the free memory a batch may use: the allocator fragments, other processes allocate.
USABLE_FRACTION = 0.8
#: Batches beyond this do not run faster on one GPU; they only make progress and cancellation coarser.
MAX_BATCH = 16
CPU_BATCH = 4
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LOAD_FIX = ("pass a local Stable Diffusion folder (diffusers layout, with model_index.json) or a hub id you have "
            "cached; with local_files_only (the default) nothing is downloaded")


def image_bytes(height: int, width: int, dtype: torch.dtype) -> int:
    """Estimated GPU memory per image in a batch: linear in pixels (SDPA) and in the dtype's size."""
    return int(IMAGE_BYTES_512_HALF * (height * width) / (512 * 512) * dtype.itemsize / 2)


def vae_bytes(height: int, width: int, dtype: torch.dtype) -> int:
    """Estimated GPU memory of decoding one image, kept free once per batch."""
    return int(VAE_BYTES_512_HALF * (height * width) / (512 * 512) * dtype.itemsize / 2)


def batch_size_for(free_bytes: int, height: int, width: int, dtype: torch.dtype) -> int:
    """How many images fit in ``free_bytes`` of GPU memory (the model already loaded), 1 to MAX_BATCH."""
    room = int(free_bytes * USABLE_FRACTION) - vae_bytes(height, width, dtype)
    fits = room // image_bytes(height, width, dtype)
    return max(1, min(MAX_BATCH, fits))


def needs_cpu_offload(free_bytes: int, model_bytes: int, height: int, width: int, dtype: torch.dtype) -> bool:
    """Whether the GPU is too small to hold the weights and one image at a time: then offload."""
    return free_bytes * USABLE_FRACTION < model_bytes + vae_bytes(height, width, dtype) + image_bytes(height, width, dtype)


def check_model(model: str, local_files_only: bool = True) -> None:
    """Fail before any work when the checkpoint cannot be found: loading is lazy and slow.

    A folder must hold ``model_index.json``; anything else must be a hub id in the local cache
    (unless downloads are allowed, which cannot be checked offline). Broken weights still fail later,
    on first use.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{path} is not a Stable Diffusion folder in diffusers layout (no model_index.json)",
                              LOAD_FIX)
        return
    if not local_files_only:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except ValueError:  # not even a valid hub id, e.g. a path that does not exist
        cached = False
    if not cached:
        raise ConfigError(f"the sd model {model!r} is neither an existing folder nor a hub id in the local cache",
                          LOAD_FIX)


class SDGenerator(Generator):
    """Stable Diffusion text-to-image and SDEdit image-to-image; the pipeline loads on first use."""

    name = "sd"
    exact = False

    def __init__(self, model: str, *, device: str = "auto", dtype: torch.dtype | str | None = None, steps: int = 30,
                 guidance: float = 7.5, strength: float = 0.6, batch_size: int | None = None,
                 local_files_only: bool = True, cancel: threading.Event | None = None) -> None:
        if steps < 1 or not 0 < strength <= 1 or guidance < 0 or (batch_size is not None and batch_size < 1):
            raise ConfigError(f"unusable sd settings (steps={steps}, strength={strength}, guidance={guidance}, "
                              f"batch_size={batch_size})",
                              "use steps ≥ 1, 0 < strength ≤ 1, guidance ≥ 0 and batch_size ≥ 1")
        if int(steps * strength) < 1:  # image-to-image runs int(steps × strength) denoising steps
            raise ConfigError(f"strength {strength} × steps {steps} leaves no denoising step for image-to-image",
                              "raise steps or strength so that their product is at least 1")
        check_model(model, local_files_only)
        self.model_id = model
        self.device = str(resolve_device(device))
        self.dtype = _resolve_dtype(dtype, self.device)
        self.steps, self.guidance, self.strength = steps, guidance, strength
        self.batch_size = batch_size
        self.local_files_only = local_files_only
        self.cancel = cancel or threading.Event()
        self.resolution = 0
        self._pipes: dict[str, Any] = {}
        self._offload = False

    # ------------------------------------------------------------------------------------- loading

    def _load(self) -> None:
        """Load the checkpoint, place it on the device and pick the batch size (once)."""
        if self._pipes:
            return
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars: fairloop reports progress itself
        transformers_logging.disable_progress_bar()
        local = Path(self.model_id).expanduser()
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(local) if local.exists() else self.model_id, dtype=self.dtype, safety_checker=None,
                requires_safety_checker=False, local_files_only=self.local_files_only)
        except Exception as exc:  # OSError, ValueError, safetensors and JSON errors alike: not loadable here
            what = (f"the folder {local} is not a loadable Stable Diffusion checkpoint" if local.exists()
                    else f"{self.model_id!r} is neither an existing folder nor a cached hub id")
            raise ConfigError(f"cannot load the sd model: {what} ({type(exc).__name__}: {exc})", LOAD_FIX) from exc
        self.resolution = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor

        batch = CPU_BATCH
        if torch.device(self.device).type == "cuda":
            from diffusers.models.attention_processor import AttnProcessor2_0

            if not all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values()):
                pipe.unet.set_attn_processor(AttnProcessor2_0())
            pipe.vae.enable_slicing()  # the VAE decodes one image at a time: its peak does not grow with the batch
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                          for p in m.parameters())
            self._offload = needs_cpu_offload(free, weights, self.resolution, self.resolution, self.dtype)
            if self._offload:
                batch = 1
            else:
                pipe.to(self.device)
                free, _ = torch.cuda.mem_get_info(torch.device(self.device))
                batch = batch_size_for(free, self.resolution, self.resolution, self.dtype)
        else:
            pipe.to(self.device)
        self.batch_size = self.batch_size or batch
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        for p in (pipe, img2img):
            p.set_progress_bar_config(disable=True)
        self._pipes = {"text2img": pipe, "img2img": img2img}

    def _pipe(self, kind: str) -> Any:
        pipe = self._pipes[kind]
        if self._offload:  # offload hooks live on the shared modules: attach them for the pipeline about to run
            pipe.enable_model_cpu_offload(device=self.device)
        return pipe

    # ---------------------------------------------------------------------------------- generation

    def generate(self, request: GenerationRequest, out_dir: Path, *, sources: FaceDataset | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> GenerationResult:
        request.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if request.source_ids:
            if sources is None:
                raise ConfigError("minimal-change edits need the source dataset", "pass sources=the dataset")
            unknown = sorted(set(request.source_ids) - set(sources.table.index))
            if unknown:
                raise ConfigError(f"{len(unknown)} source ids are not in the {sources.name} dataset "
                                  f"(e.g. {', '.join(unknown[:3])})", "ask only for image ids of the source dataset")
        vocabulary = sources.attributes if sources is not None else list(ATTRIBUTES)
        edits, avoid, notes = request_edits(request, vocabulary)
        result = GenerationResult(notes=notes)

        rng = np.random.default_rng(request.seed)
        seeds = rng.integers(0, 2**31 - 1, size=request.n).tolist()
        ids = ([request.source_ids[i % len(request.source_ids)] for i in range(request.n)] if request.source_ids
               else [None] * request.n)
        strength = self.strength if request.source_ids else None
        for source_id, seed in zip(ids, seeds):
            path = out_dir / f"{self._image_key(request, seed, source_id, strength)}.png"
            result.rows.append({
                "file": path.name, "path": str(path), "prompt": request.prompt,
                "negative_prompt": request.negative_prompt, "source_id": source_id, "seed": seed,
                "backend": self.name, "model_id": self.model_id, "label": request.label, "intended": dict(edits),
                "attributes": _attributes(source_id, edits, sources, rng, avoid),
                "steps": self.steps, "guidance": self.guidance, "strength": strength,
            })

        todo = [row for row in result.rows if not finished_file(row["path"])]  # resumed runs skip finished images
        if todo:
            self._draw(todo, request, sources, progress, done=request.n - len(todo))
        return result

    def _draw(self, todo: list[dict[str, Any]], request: GenerationRequest, sources: FaceDataset | None,
              progress: Callable[[str, int, int], None] | None, done: int) -> None:
        """Generate and write the images of ``todo`` batch by batch; cancellation keeps finished batches."""
        self._load()
        pipe = self._pipe("img2img" if request.source_ids else "text2img")
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            if self.cancel.is_set():
                raise _cancelled(done, request.n)
            images = self._run(pipe, batch, request, sources, progress)
            if pipe.interrupt:  # stopped mid-denoising: these images are unfinished, keep none of them
                raise _cancelled(done, request.n)
            for row, image in zip(batch, images):
                atomic_write(row["path"], lambda tmp, image=image: image.save(tmp, format="PNG"))
            done += len(batch)
            if progress:
                progress("generate", done, request.n)

    def _image_key(self, request: GenerationRequest, seed: int, source_id: str | None, strength: float | None) -> str:
        """A hash of everything that determines the image: its file name."""
        spec = [self.model_id, request.prompt, request.negative_prompt, seed, source_id, strength, self.steps,
                self.guidance]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    def _run(self, pipe: Any, batch: list[dict[str, Any]], request: GenerationRequest, sources: FaceDataset | None,
             progress: Callable[[str, int, int], None] | None) -> list[Image.Image]:
        """One pipeline call for ``batch``; the step callback reports progress and honours ``cancel``."""

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self.cancel.is_set():
                pipeline._interrupt = True  # diffusers skips the remaining steps
            if progress:
                progress("denoise", step + 1, pipeline.num_timesteps)
            return tensors

        options: dict[str, Any] = {
            "prompt": [request.prompt] * len(batch), "negative_prompt": [request.negative_prompt] * len(batch),
            "num_inference_steps": self.steps, "guidance_scale": self.guidance, "callback_on_step_end": on_step,
            "generator": [torch.Generator(self.device).manual_seed(row["seed"]) for row in batch],
        }
        if batch[0]["source_id"] is None:
            return pipe(height=self.resolution, width=self.resolution, **options).images
        originals = [_read_source(sources.table.at[row["source_id"], "path"]) for row in batch]
        size = (self.resolution, self.resolution)
        images = pipe(image=[img.resize(size, Image.BICUBIC) for img in originals], strength=self.strength,
                      **options).images
        return [img.resize(orig.size, Image.BICUBIC) for img, orig in zip(images, originals)]


def _resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere (CPU kernels are slow or missing in half precision)."""
    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"unsupported dtype {dtype!r} for the sd generator", f"use one of {', '.join(DTYPES)}")


def _attributes(source_id: str | None, edits: dict[str, int], sources: FaceDataset | None, rng: np.random.Generator,
                avoid: set[str]) -> dict[str, int]:
    """What the image should show: the source's attributes with the edits (consistent ones on SynthFaces)."""
    if source_id is None:
        return dict(edits)
    base = {a: int(v) for a, v in sources.table.loc[source_id, sources.attributes].items()}
    if set(base) <= set(ATTRIBUTES):
        return apply_edits(base, edits, rng, avoid=avoid)
    return base | edits


def _read_source(path: str) -> Image.Image:
    """The whole source image as RGB (not cropped: the output goes back to exactly this size)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"source image {path} is listed in the attribute table but missing",
                        "restore the file or remove its row from the attribute table") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"source image {path} is corrupt or not an image ({exc})",
                        "replace the file, or remove it and its row from the attribute table") from None


def _cancelled(done: int, total: int) -> ConfigError:
    return ConfigError(f"sd generation was cancelled after {done} of {total} images",
                       "run it again to continue: finished images are kept and not generated again")


__all__ = ["SDGenerator", "batch_size_for", "check_model", "image_bytes", "needs_cpu_offload"]

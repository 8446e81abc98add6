"""Counterfactual image generation: one interface for every backend.

A :class:`GenerationRequest` holds a prompt (+ negative prompt), how many images, the class they
carry, a seed and optionally source images for minimal-change edits. A backend writes the images
into a folder and returns one manifest row per image: prompt, negative prompt, source id, seed,
backend, model id and the attributes the image is meant to show.

Backends (:data:`GENERATORS`):

- ``embedded`` (the default of ``fairloop run``, ``chat`` and ``generate``): fairloop's own small
  latent diffusion model, trained on SynthFaces renders and shipped with the package; runs on the
  CPU (:mod:`fairloop.diffusion.embedded`).
- ``sd``: Stable Diffusion through diffusers, from a local folder or hub id, for users' GPUs
  (:mod:`fairloop.diffusion.sd`).
- ``render``: the exact oracle of the synthetic domain: it parses the prompt into attribute edits
  (:mod:`fairloop.tools.prompt_parser`) and re-renders SynthFaces identities with only those
  attributes changed. Reports label it as an oracle: real data needs a real generator.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fairloop.data.datasets import FaceDataset
from fairloop.errors import ConfigError

GENERATORS = ("embedded", "sd", "render")


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``source_ids`` (image ids of ``sources``) asks for minimal-change edits."""

    prompt: str
    n: int
    label: int
    target: str
    negative_prompt: str = ""
    source_ids: tuple[str, ...] = ()
    seed: int = 0

    def validate(self) -> GenerationRequest:
        if self.n < 0 or self.label not in (0, 1) or not self.prompt.strip():
            raise ConfigError(f"unusable generation request (n={self.n}, label={self.label}, prompt={self.prompt!r})",
                              "ask for n ≥ 0 images of class 0 or 1 with a non-empty prompt")
        return self


@dataclass
class GenerationResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Generator(ABC):
    """A text-to-image (and optionally image-to-image) backend."""

    name: str
    model_id: str
    exact: bool = False  # True only for oracles that realise a prompt exactly

    @abstractmethod
    def generate(self, request: GenerationRequest, out_dir: Path, *, sources: FaceDataset | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> GenerationResult:
        """Write ``request.n`` images into ``out_dir`` and return their manifest rows."""


def make_generator(name: str, *, model: str | None = None, device: str = "auto", **options: Any) -> Generator:
    """The backend ``name``; ``model`` is the Stable Diffusion path or hub id (``sd``) or a folder
    with other embedded-generator weights (``embedded``). Heavy libraries load only here."""
    if name == "render":
        return RenderGenerator()
    if name == "embedded":
        from fairloop.diffusion.embedded import EmbeddedGenerator

        return EmbeddedGenerator(model, device=device, **options)
    if name == "sd":
        if not model:
            raise ConfigError("the sd generator needs a Stable Diffusion checkpoint",
                              "pass --generator-model PATH_OR_HUB_ID (a diffusers folder, or a hub id you have "
                              "cached)")
        from fairloop.diffusion.sd import SDGenerator

        return SDGenerator(model, device=device, **options)
    raise ConfigError(f"unknown generator {name!r}", f"use one of {', '.join(GENERATORS)}")


# ------------------------------------------------------------------------------------------- render


class RenderGenerator(Generator):
    """SynthFaces re-rendering: the exact counterfactual oracle for the synthetic domain."""

    name = "render"
    model_id = "synthfaces-renderer-v1"
    exact = True

    def generate(self, request, out_dir, *, sources=None, progress=None) -> GenerationResult:
        from fairloop.data.synthfaces import ATTRIBUTES, read_identities, render_face, sample_attributes

        request.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        edits, negative, notes = request_edits(request, ATTRIBUTES)
        result = GenerationResult(notes=notes)
        rng = np.random.default_rng(request.seed)

        identities = None
        if request.source_ids:
            if sources is None:
                raise ConfigError("minimal-change edits need the source dataset", "pass sources=the dataset")
            try:
                identities = read_identities(sources.root)
            except Exception:
                result.notes.append("sources are not SynthFaces: rendering new faces instead of editing them")
        if identities is not None:
            ids = [request.source_ids[i % len(request.source_ids)] for i in range(request.n)]
            base_rows = sources.table.loc[ids, list(ATTRIBUTES)].to_dict("records")
            seen: set[str] = set()
            seeds = []
            for i in ids:  # a source used twice gets a new identity the second time: no duplicate images
                seeds.append(int(identities[i]) if i not in seen else int(rng.integers(2**31 - 1)))
                seen.add(i)
        else:
            ids = [None] * request.n
            fixed = {k: np.full(request.n, v, np.int8) for k, v in edits.items()}
            base_rows = sample_attributes(request.n, rng, fixed).to_dict("records")
            seeds = rng.integers(0, 2**31 - 1, size=request.n).tolist()

        for k, (source_id, base, seed) in enumerate(zip(ids, base_rows, seeds)):
            attributes = apply_edits(base, edits, rng, avoid=negative)
            key = hashlib.sha256(f"{seed}:{sorted(attributes.items())}".encode()).hexdigest()[:16]
            path = out_dir / f"{key}.png"
            if not path.exists():  # content-addressed: a resumed run does not redo finished images
                render_face(attributes, seed).save(path)
            result.rows.append({
                "file": path.name, "path": str(path), "prompt": request.prompt,
                "negative_prompt": request.negative_prompt, "source_id": source_id, "seed": seed,
                "backend": self.name, "model_id": self.model_id, "label": request.label,
                "intended": {a: edits[a] for a in edits}, "attributes": attributes,
            })
            if progress:
                progress("generate", k + 1, request.n)
        return result


def request_edits(request: GenerationRequest, vocabulary) -> tuple[dict[str, int], set[str], list[str]]:
    """What a request asks of each attribute (its class always wins), the attributes its negative
    prompt names (to avoid), and notes on what the parser could not place."""
    from fairloop.tools.prompt_parser import parse_prompt

    parsed = parse_prompt(request.prompt, vocabulary)
    notes = list(parsed.conflicts)
    edits = dict(parsed.edits)
    if request.target in edits and edits[request.target] != request.label:
        notes.append(f"the prompt asks for {request.target}={edits[request.target]} but the plan is for "
                     f"class {request.label}; the class wins")
    edits[request.target] = request.label
    avoid = {k for k, v in parse_prompt(request.negative_prompt, vocabulary).edits.items() if v == 1}
    return edits, avoid, notes


def apply_edits(attributes: dict[str, int], edits: dict[str, int], rng: np.random.Generator,
                avoid: set[str] = frozenset()) -> dict[str, int]:
    """``attributes`` with ``edits`` applied, kept consistent with SynthFaces' rules.

    Exactly one hair state stays on: turning one on turns the others off, turning the current one
    off picks another colour (never one in ``avoid``, the negative prompt's attributes). Women get
    no mustache and are not bald unless the edit says so.
    """
    from fairloop.data.synthfaces import HAIR_COLORS, HAIR_STATES

    out = {k: int(v) for k, v in attributes.items()}
    out.update(edits)
    for name in avoid - set(edits):
        out[name] = 0
    on = [h for h in HAIR_STATES if edits.get(h) == 1]
    if on:
        for h in HAIR_STATES:
            out[h] = int(h == on[-1])
    if not out.get("Male", 1):
        out["Mustache"] = edits.get("Mustache", 0)
        if out.get("Bald") and "Bald" not in edits:
            out["Bald"] = 0
    if not any(out.get(h) for h in HAIR_STATES):
        choices = [h for h in HAIR_COLORS if edits.get(h) != 0 and h not in avoid] or ["Black_Hair"]
        out[choices[int(rng.integers(len(choices)))]] = 1
    return out


def image_grid(paths: list[str | Path], columns: int = 8, size: int = 64):
    """One PIL image with ``paths`` tiled in rows of ``columns`` (``fairloop generate``'s preview)."""
    from PIL import Image

    rows = max(1, -(-len(paths) // columns))
    grid = Image.new("RGB", (min(columns, max(1, len(paths))) * size, rows * size), "white")
    for k, path in enumerate(paths):
        with Image.open(path) as img:
            grid.paste(img.convert("RGB").resize((size, size)), ((k % columns) * size, (k // columns) * size))
    return grid


def generate_to_folder(prompt: str, *, n: int, out: str | Path, generator: str = "embedded", model: str | None = None,
                       negative_prompt: str = "", from_image: str | Path | None = None, strength: float | None = None,
                       steps: int | None = None, guidance: float | None = None, seed: int = 0, device: str = "auto",
                       progress: Callable[[str, int, int], None] | None = None) -> dict[str, Path]:
    """What ``fairloop generate`` does: images, ``grid.png`` and ``manifest.json`` in ``out``.

    The class of every image is whatever the prompt says of gender ("a woman…" → Male = 0);
    ``from_image`` edits one image ``n`` times with different seeds.
    """
    import pandas as pd

    from fairloop.data.synthfaces import ATTRIBUTES
    from fairloop.io import atomic_write_json
    from fairloop.tools.prompt_parser import parse_prompt

    out = Path(out)
    options = {k: v for k, v in {"steps": steps, "guidance": guidance, "strength": strength}.items() if v is not None}
    if generator == "render" and options:
        raise ConfigError("--steps, --guidance and --strength do not apply to the render oracle",
                          "leave them out, or use --generator embedded")
    backend = make_generator(generator, model=model, device=device, **options)
    sources, source_ids = None, ()
    if from_image is not None:
        from_image = Path(from_image)
        if not from_image.is_file():
            raise ConfigError(f"--from-image {from_image} is not a file", "pass the path of a JPEG or PNG image")
        table = pd.DataFrame({"path": [str(from_image.absolute())], "split": ["train"]}, index=[from_image.name])
        sources, source_ids = FaceDataset(name="from-image", root=from_image.parent, table=table), (from_image.name,)
    label = parse_prompt(prompt, ATTRIBUTES).edits.get("Male", 1)
    request = GenerationRequest(prompt=prompt, n=n, label=label, target="Male", negative_prompt=negative_prompt,
                                source_ids=source_ids * n, seed=seed).validate()
    result = backend.generate(request, out / "images", sources=sources, progress=progress)
    grid = out / "grid.png"
    image_grid([row["path"] for row in result.rows]).save(grid)
    manifest = out / "manifest.json"
    atomic_write_json(manifest, {"generator": backend.name, "model_id": backend.model_id, "exact_oracle": backend.exact,
                                 "notes": result.notes, "images": result.rows})
    return {"grid": grid, "manifest": manifest, "notes": result.notes}


def manifest_digest(rows: list[dict[str, Any]]) -> str:
    """A content hash of a manifest: names the image set in the run folder."""
    return hashlib.sha256("".join(sorted(r["file"] for r in rows)).encode()).hexdigest()[:16]


__all__ = ["GENERATORS", "GenerationRequest", "GenerationResult", "Generator", "RenderGenerator", "apply_edits",
           "generate_to_folder", "image_grid", "make_generator", "manifest_digest", "request_edits"]

"""Counterfactual image generation: one interface for every backend.

A :class:`GenerationRequest` holds a prompt (+ negative prompt), how many images, the class they
carry, a seed and optionally source images for minimal-change edits. A backend writes the images
into a folder and returns one manifest row per image: prompt, negative prompt, source id, seed,
backend, model id and the attributes the image is meant to show.

``render`` is the exact oracle of the synthetic domain: it parses the prompt into attribute edits
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

GENERATORS = ("render",)


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


def make_generator(name: str, **options: Any) -> Generator:
    if name == "render":
        return RenderGenerator()
    raise ConfigError(f"unknown generator {name!r}", f"use one of {', '.join(GENERATORS)}")


# ------------------------------------------------------------------------------------------- render


class RenderGenerator(Generator):
    """SynthFaces re-rendering: the exact counterfactual oracle for the synthetic domain."""

    name = "render"
    model_id = "synthfaces-renderer-v1"
    exact = True

    def generate(self, request, out_dir, *, sources=None, progress=None) -> GenerationResult:
        from fairloop.data.synthfaces import ATTRIBUTES, read_identities, render_face, sample_attributes
        from fairloop.tools.prompt_parser import parse_prompt

        request.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        parsed = parse_prompt(request.prompt, ATTRIBUTES)
        result = GenerationResult(notes=list(parsed.conflicts))
        edits = dict(parsed.edits)
        if request.target in edits and edits[request.target] != request.label:
            result.notes.append(f"the prompt asks for {request.target}={edits[request.target]} but the plan is for "
                                f"class {request.label}; the class wins")
        edits[request.target] = request.label
        negative = {k for k, v in parse_prompt(request.negative_prompt, ATTRIBUTES).edits.items() if v == 1}
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


def manifest_digest(rows: list[dict[str, Any]]) -> str:
    """A content hash of a manifest: names the image set in the run folder."""
    return hashlib.sha256("".join(sorted(r["file"] for r in rows)).encode()).hexdigest()[:16]


__all__ = ["GenerationRequest", "GenerationResult", "Generator", "RenderGenerator", "make_generator", "apply_edits",
           "manifest_digest"]

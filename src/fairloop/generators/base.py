"""What every generator backend takes and gives: a :class:`GenerationRequest` in, image files and
one manifest row per image out, and the attribute bookkeeping the backends share.

A request holds a prompt (+ negative prompt), how many images, the class they carry, a seed and
optionally source images for minimal-change edits. A backend writes the images into a folder and
returns one manifest row per image: prompt, negative prompt, source id, seed, backend, model id and
the attributes the image is meant to show.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fairloop.data.datasets import FaceDataset
from fairloop.errors import ConfigError


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

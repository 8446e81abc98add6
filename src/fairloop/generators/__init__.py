"""Counterfactual image generation: one interface for every backend, and the factory that picks one.

Backends (:data:`GENERATORS`):

- ``embedded`` (the default of ``fairloop run``, ``chat`` and ``generate``): fairloop's own small
  latent diffusion model, trained on SynthFaces renders and shipped with the package; runs on the
  CPU (:mod:`fairloop.diffusion.embedded`).
- ``sd``: Stable Diffusion through diffusers, from a local folder or hub id, for users' GPUs
  (:mod:`fairloop.diffusion.sd`).
- ``render``: SynthFaces' exact counterfactual oracle (:mod:`fairloop.generators.render`).

The interface lives in :mod:`fairloop.generators.base`, apart from this factory, so the backends
import the interface and the factory imports the backends (lazily: diffusers loads only when chosen).
"""

from __future__ import annotations

from typing import Any

from fairloop.errors import ConfigError
from fairloop.generators.base import GenerationRequest, GenerationResult, Generator, apply_edits, request_edits
from fairloop.generators.render import RenderGenerator

GENERATORS = ("embedded", "sd", "render")


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


__all__ = ["GENERATORS", "GenerationRequest", "GenerationResult", "Generator", "RenderGenerator", "apply_edits",
           "make_generator", "request_edits"]

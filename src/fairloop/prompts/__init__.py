"""Prompt templates kept as text files, and the one function that renders them."""

from __future__ import annotations

from importlib.resources import files
from string import Template


def load_prompt(name: str) -> Template:
    """Return the template ``prompts/<name>.txt``; ``$fields`` are filled by ``substitute``."""
    return Template(files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8"))

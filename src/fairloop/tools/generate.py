"""``fairloop generate``: images from a prompt into a folder, with a preview grid and the manifest.

The generators themselves live in :mod:`fairloop.generators`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairloop.data.datasets import FaceDataset
from fairloop.errors import ConfigError
from fairloop.generators import GenerationRequest, make_generator

#: The most images one ``fairloop generate`` makes (each is a file; the grid shows them all).
MAX_IMAGES = 10_000


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

    if not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"-n {n} is not a number of images this command makes at once",
                          f"ask for 1 to {MAX_IMAGES} images; run it again with another --seed for more")
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


__all__ = ["generate_to_folder", "image_grid", "manifest_digest"]

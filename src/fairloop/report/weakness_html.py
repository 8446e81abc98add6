"""``weaknesses.html``: the ranked edits and the worst edits' image pairs, on one self-contained page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairloop.io import atomic_write_json, atomic_write_text
from fairloop.report.render import image_png, render_template


def render_weakness_html(report: dict[str, Any], *, pairs_of: int = 5) -> str:
    """``report`` is :meth:`WeaknessReport.as_dict`; the first ``pairs_of`` edits show their pairs."""
    from fairloop.data.datasets import read_image

    shown = []
    for w in report["weaknesses"][:pairs_of]:
        shown.append({**w, "images": [
            {"source": image_png(read_image(p["source"], 64)), "counterfactual": image_png(read_image(p["counterfactual"], 64)),
             "p_source": p["p_source"], "p_counterfactual": p["p_counterfactual"]} for p in w["pairs"]]})
    return render_template("weaknesses.html", report=report, shown=shown)


def write_weaknesses(report: dict[str, Any], out_dir: str | Path, *, json_path: str | Path | None = None) -> dict[str, Path]:
    """Write ``weaknesses.json`` (or ``json_path``) and ``weaknesses.html`` (each atomically)."""
    out_dir = Path(out_dir)
    paths = {"json": Path(json_path) if json_path else out_dir / "weaknesses.json", "html": out_dir / "weaknesses.html"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["html"], render_weakness_html(report))
    return paths

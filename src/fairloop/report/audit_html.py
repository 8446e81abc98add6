"""``audit.html``: one self-contained page (images inlined) that a reviewer can open anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fairloop.io import atomic_write, atomic_write_json, atomic_write_text
from fairloop.report.render import figure_png, image_png, render_template

if TYPE_CHECKING:
    from fairloop.tools.audit import AuditResult


def render_audit_html(result: AuditResult, per_group: int = 8) -> str:
    from fairloop.data.datasets import read_image

    metrics = result.metrics.as_dict()
    groups = []
    for name, rows in result.misclassified(per_group).items():
        groups.append({
            "name": name,
            "images": [{"src": image_png(read_image(row.path, 64)), "prob": f"{row.prob:.2f}", "id": image_id}
                       for image_id, row in rows.iterrows()],
        })
    return render_template(
        "audit.html",
        result=result,
        metrics=metrics,
        rows=list(result.metrics.table_rows()),
        band=result.metrics.in_band(),
        importance_png=figure_png(result.explanation.as_pyplot_figure()),
        explanation=result.explanation.as_dict(),
        misclassified=groups,
    )


def write_audit(result: AuditResult, out_dir: str | Path, *, json_path: str | Path | None = None) -> dict[str, Path]:
    """Write ``audit.json``, ``audit.html`` and ``predictions.csv`` of an audit (each atomically)."""
    out_dir = Path(out_dir)
    paths = {
        "json": Path(json_path) if json_path else out_dir / "audit.json",
        "html": out_dir / "audit.html",
        "predictions": out_dir / "predictions.csv",
    }
    atomic_write_json(paths["json"], result.as_dict())
    atomic_write_text(paths["html"], render_audit_html(result))
    atomic_write(paths["predictions"], lambda tmp: result.predictions.to_csv(tmp))
    return paths

"""``summary.json`` and ``report.html`` of a mitigation run.

The summary holds the initial, per-iteration and final test metrics with the same keys as
``audit.json``; the report shows the metric trajectories with the fair band drawn, LIME importance
before and after, the counterfactual images per prompt, the analyzer's words verbatim, test images
whose prediction flipped, and the trace of every tool call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairloop.io import atomic_write_json, atomic_write_text
from fairloop.report.render import figure_png, image_png, render_template

if TYPE_CHECKING:
    from fairloop.runs import RunServices

TRAJECTORY = (("disparate_impact", "DI"), ("statistical_parity_difference", "SPD"),
              ("equal_opportunity_difference", "EOD"), ("average_odds_difference", "AOD"),
              ("accuracy", "accuracy"), ("worst_group_accuracy", "worst-group acc."))


def build_summary(services: RunServices, state: dict[str, Any], final_explanation: dict[str, Any]) -> dict[str, Any]:
    from fairloop.manifest import build_manifest

    cfg = services.config
    iterations = [{k: v for k, v in it.items() if k != "line"} for it in state.get("iterations", [])]
    return {
        "run_id": services.folder.path.name,
        "status": state["status"],
        "target": cfg.target,
        "protected": cfg.protected,
        "initial": state["initial"]["test"],
        "iterations": iterations,
        "final": state["current"]["test"],
        "initial_val": state["initial"]["val"],
        "final_val": state["current"]["val"],
        "images_used": state.get("images_used", 0),
        "final_model": state["model"],
        "generator": {"name": services.generator.name, "model_id": services.generator.model_id,
                      "exact_oracle": services.generator.exact},
        "explanations": {"initial": state["initial_explanation"], "final": final_explanation},
        "initial_model": state["initial_model"],
        "stage_seconds": stage_seconds(services.folder.read_trace()),
        "manifest": build_manifest(cfg.as_dict(), seeds={"run": cfg.seed}, data_hash=services.dataset.fingerprint(),
                                   models={"initial": state["initial_model"], "final": state["model"]}),
    }


def stage_seconds(trace: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds spent in each kind of step over the whole run (from ``trace.jsonl``), in the order
    they first ran, plus ``total``: where the time goes, in every summary."""
    out: dict[str, float] = {}
    for entry in trace:
        out[entry["node"]] = out.get(entry["node"], 0.0) + float(entry.get("seconds") or 0.0)
    out = {node: round(seconds, 1) for node, seconds in out.items()}
    return out | {"total": round(sum(out.values()), 1)}


def write_run_outputs(services: RunServices, state: dict[str, Any], final_explanation: dict[str, Any]) -> dict[str, Path]:
    folder = services.folder.path
    summary = build_summary(services, state, final_explanation)
    paths = {"summary": folder / "summary.json", "report": folder / "report.html"}
    atomic_write_json(paths["summary"], summary)
    atomic_write_text(paths["report"], render_run_html(services, state, summary))
    return paths


def render_run_html(services: RunServices, state: dict[str, Any], summary: dict[str, Any]) -> str:
    from fairloop.tools.explain import AttributeExplanation

    iterations = [{**it, **_generated(services, it.get("manifest")), **_causal_graph(services, it)}
                  for it in summary["iterations"]]
    before = AttributeExplanation.from_dict(summary["explanations"]["initial"])
    after = AttributeExplanation.from_dict(summary["explanations"]["final"])
    return render_template(
        "run.html",
        summary=summary,
        config=services.config.as_dict(),
        rows=_metric_rows(summary),
        trajectory_png=figure_png(_trajectory_figure(summary, services.config.band)),
        lime_before_png=figure_png(before.as_pyplot_figure()),
        lime_after_png=figure_png(after.as_pyplot_figure()),
        iterations=iterations,
        recalled=state.get("recalled", []),
        flips=_flips(services, summary),
        trace=services.folder.read_trace(),
    )


def _causal_graph(services: RunServices, iteration: dict[str, Any]) -> dict[str, Any]:
    """The causal graph an scm strategy used in this iteration, drawn, with its edges."""
    from fairloop.runs.steps import causal_model

    spec = (iteration.get("analysis") or {}).get("scm")
    if not spec:
        return {}
    data = services.dataset
    model = causal_model(spec, list(data.attributes), data.split("train").table)
    graph = model.graph
    title = "SynthFaces' true causal graph" if spec.get("graph") == "true" else "the language model's causal graph"
    return {"scm_graph": {"title": title, "mechanisms": model.source, "edges": [f"{a} → {b}" for a, b in graph.edges],
                          "png": figure_png(graph.figure(highlight=[services.config.protected], title=title))}}


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    from fairloop.tools.metrics import METRIC_LABELS

    def fmt(v):
        return "undefined" if v is None else f"{v:.4f}"

    return [(label, fmt(summary["initial"][key]), fmt(summary["final"][key])) for key, label in METRIC_LABELS.items()]


def _trajectory_figure(summary: dict[str, Any], band):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [("start", summary["initial"], True)] + [
        (f"it {it['iteration']}", it["metrics"], it["accepted"]) for it in summary["iterations"]]
    x = np.arange(len(points))
    fig = Figure(figsize=(10, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = ((axes[0], TRAJECTORY[:1], (band.di_low, band.di_high)),
              (axes[1], TRAJECTORY[1:4], (-band.max_abs_diff, band.max_abs_diff)),
              (axes[2], TRAJECTORY[4:], None))
    for ax, series, span in panels:
        if span:
            ax.axhspan(*span, color="tab:green", alpha=0.15, label="fair band")
        for key, label in series:
            values = [np.nan if m.get(key) is None else m[key] for _, m, _ in points]
            ax.plot(x, values, marker="o", label=label)
            for xi, (_, _, accepted), v in zip(x, points, values):
                if not accepted:
                    ax.plot(xi, v, marker="x", color="black", markersize=9)
        ax.set_xticks(x, [p[0] for p in points])
        ax.legend(fontsize=8)
    axes[0].set_title("disparate impact")
    axes[1].set_title("differences (test)")
    axes[2].set_title("accuracy (test)")
    fig.suptitle("test metrics per iteration (× = rolled back)", fontsize=10)
    fig.tight_layout()
    return fig


def _generated(services: RunServices, manifest_rel: str | None, per_prompt: int = 12) -> dict[str, Any]:
    """An iteration's images as one grid per prompt, and the proxy matches that split its plans."""
    if not manifest_rel:
        return {"grids": [], "proxies": []}
    manifest = json.loads(services.folder.resolve(manifest_rel).read_text())
    by_prompt: dict[str, list[dict]] = {}
    for row in manifest["images"]:
        by_prompt.setdefault(row["prompt"], []).append(row)
    from fairloop.data.datasets import read_image

    grids = [{"prompt": prompt, "n": len(rows), "exact": manifest.get("exact_oracle", False),
              "images": [image_png(read_image(services.folder.resolve(r["path"]), 64)) for r in rows[:per_prompt]]}
             for prompt, rows in by_prompt.items()]
    return {"grids": grids, "proxies": manifest.get("proxies", [])}


def _flips(services: RunServices, summary: dict[str, Any], per_side: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Test images whose prediction changed between the starting and the final model."""
    from fairloop.data.datasets import read_image
    from fairloop.runs.steps import model_key

    evals = services.folder.path / "evals"
    first = evals / f"{model_key(summary['initial_model'])}.test.npy"
    final = evals / f"{model_key(summary['final_model'])}.test.npy"
    if first == final or not first.exists() or not final.exists():
        return {}
    before, after = np.load(first), np.load(final)
    test = services.dataset.split("test")
    y = test.labels(services.config.target)
    out = {}
    for name, mask in (("now right", ((before >= 0.5) != y) & ((after >= 0.5) == y)),
                       ("now wrong", ((before >= 0.5) == y) & ((after >= 0.5) != y))):
        idx = np.flatnonzero(mask)[:per_side]
        out[f"{name} ({int(mask.sum())})"] = [
            {"src": image_png(read_image(test.table["path"].iat[i], 64)), "id": test.table.index[i],
             "before": f"{before[i]:.2f}", "after": f"{after[i]:.2f}",
             "group": f"{services.config.protected}={test.table[services.config.protected].iat[i]}"} for i in idx]
    return out

"""``report.html`` of an experiment: a forest plot per metric (arms × 95 % CI, the fair band drawn),
accuracy and cost against worst-group accuracy, and each arm's example images and LLM text.
It takes the experiment's summary and results and re-derives nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairloop.report.render import figure_png, render_template

FOREST = (("worst_group_accuracy", "worst-group accuracy"), ("accuracy", "accuracy"),
          ("disparate_impact", "DI"), ("statistical_parity_difference", "SPD"),
          ("equal_opportunity_difference", "EOD"), ("average_odds_difference", "AOD"))


def render_experiment_html(summary: dict[str, Any], rows: list[dict[str, Any]], folder: Path) -> str:
    scenarios = []
    for scenario in dict.fromkeys(s["scenario"] for s in summary["arms"]):
        arms = [s for s in summary["arms"] if s["scenario"] == scenario]
        mine = [r for r in rows if r["scenario"] == scenario]
        scenarios.append({
            "name": scenario, "arms": arms,
            "forest_png": figure_png(_forest(arms, summary["band"])),
            "tradeoff_png": figure_png(_tradeoffs(arms)),
            "examples": _examples(mine, folder),
        })
    return render_template("experiment.html", summary=summary, scenarios=scenarios)


def _forest(arms: list[dict[str, Any]], band: dict[str, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FOREST), figsize=(3.0 * len(FOREST), 0.45 * len(arms) + 1.4), sharey=True)
    names = [a["arm"] for a in arms]
    for ax, (key, label) in zip(axes, FOREST):
        if key == "disparate_impact":
            ax.axvspan(band["di_low"], band["di_high"], color="#dfd", zorder=0)
            ax.axvline(1.0, color="#999", lw=0.8)
        elif key not in ("accuracy", "worst_group_accuracy"):
            ax.axvspan(-band["max_abs_diff"], band["max_abs_diff"], color="#dfd", zorder=0)
            ax.axvline(0.0, color="#999", lw=0.8)
        for y, arm in enumerate(arms):
            interval = arm["metrics"][key]
            if interval["mean"] is None:
                continue
            low = interval["low"] if interval["low"] is not None else interval["mean"]
            high = interval["high"] if interval["high"] is not None else interval["mean"]
            ax.plot([low, high], [y, y], color="#246", lw=2)
            ax.plot([interval["mean"]], [y], "o", color="#246")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", color="#eee")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()  # the axes share y: once puts the first arm on top of every panel
    fig.tight_layout()
    return fig


def _tradeoffs(arms: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        wga, acc = arm["metrics"]["worst_group_accuracy"], arm["metrics"]["accuracy"]
        if wga["mean"] is None or acc["mean"] is None:
            continue
        for ax, x, xerr in ((left, acc["mean"], acc["half_width"]),
                            (right, arm["seconds"]["mean"], arm["seconds"]["half_width"])):
            ax.errorbar([x], [wga["mean"]], xerr=None if xerr is None else [[xerr], [xerr]],
                        yerr=None if wga["half_width"] is None else [[wga["half_width"]], [wga["half_width"]]],
                        fmt="o", capsize=3)
            ax.annotate(arm["arm"], (x, wga["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    left.set(xlabel="accuracy", ylabel="worst-group accuracy", title="accuracy vs worst-group accuracy")
    right.set(xlabel="wall seconds per job", ylabel="worst-group accuracy", title="cost vs worst-group accuracy")
    for ax in (left, right):
        ax.grid(color="#eee")
    fig.tight_layout()
    return fig


def _examples(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Per arm, the lowest seed's example images (inline) and its strategy's text."""
    import numpy as np
    from PIL import Image

    from fairloop.report.render import image_png

    out = []
    for row in sorted(rows, key=lambda r: (r["arm"], r["seed"])):
        if any(o["arm"] == row["arm"] for o in out) or not (row.get("examples") or row.get("proposal")):
            continue
        job = folder / "jobs" / row["scenario"] / row["arm"] / f"s{row['seed']}"
        images = []
        for example in row.get("examples") or []:
            path = (job / example["path"]).resolve()
            if job.resolve() in path.parents and path.is_file():  # a result file is data: stay inside the job
                with Image.open(path) as image:
                    images.append({"src": image_png(np.asarray(image.convert("RGB"))), "prompt": example["prompt"]})
        out.append({"arm": row["arm"], "seed": row["seed"], "images": images, "proposal": row.get("proposal")})
    return out

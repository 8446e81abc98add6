"""Statistics over seeds: mean ± 95 % t-interval per arm, and paired differences against a
reference arm (the same seed shares one ERM model, one data set and one test split, so differences
are taken seed by seed). A difference whose interval contains 0 is reported as within the noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fairloop.experiments.jobs import fell_back

CONFIDENCE = 0.95
#: Metrics compared, with the direction that counts as better: "up" (higher), or "fair" (closer
#: to the fair value: 1 for disparate impact, 0 for differences).
METRICS: dict[str, str] = {
    "accuracy": "up", "worst_group_accuracy": "up", "balanced_accuracy": "up",
    "disparate_impact": "fair", "statistical_parity_difference": "fair", "equal_opportunity_difference": "fair",
    "average_odds_difference": "fair",
}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and the two-sided t-interval of the mean; ``low``/``high`` are None for fewer than 2 values."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "half_width": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None, "half_width": None}
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "half_width": half}


def unfairness(metric: str, value: float | None) -> float | None:
    """How far a value is from fair: |log DI| for disparate impact, |x| for a difference."""
    if value is None:
        return None
    if metric == "disparate_impact":
        return abs(math.log(value)) if value > 0 else math.inf
    return abs(value)


def better(metric: str, a: float | None, b: float | None) -> bool | None:
    """Whether ``a`` is better than ``b`` on ``metric`` (None when either is undefined)."""
    if a is None or b is None:
        return None
    if METRICS[metric] == "up":
        return a > b
    return unfairness(metric, a) < unfairness(metric, b)


def paired(metric: str, arm: dict[int, float | None], reference: dict[int, float | None]) -> dict[str, Any]:
    """The arm − reference difference over the seeds both have, its t-interval and wins k/n.

    For bias metrics the difference is of the distance from fair (:func:`unfairness`), so a
    negative difference is an improvement; for accuracies a positive one is."""
    seeds = sorted(s for s in arm if s in reference and arm[s] is not None and reference[s] is not None)
    if METRICS[metric] == "up":
        diffs = [arm[s] - reference[s] for s in seeds]
    else:
        diffs = [unfairness(metric, arm[s]) - unfairness(metric, reference[s]) for s in seeds]
    interval = t_interval(diffs)
    wins = sum(bool(better(metric, arm[s], reference[s])) for s in seeds)
    within = interval["low"] is None or interval["low"] <= 0 <= interval["high"]
    return interval | {"wins": wins, "seeds": len(seeds), "within_noise": within,
                       "measure": "difference" if METRICS[metric] == "up" else "difference of distance from fair"}


def summarize(rows: list[dict[str, Any]], *, reference: str, band) -> list[dict[str, Any]]:
    """One summary per (scenario, arm): each metric's interval, in-band k/n, images, oracle pass
    rate, fallbacks, seconds, and each metric's paired difference against ``reference``."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["scenario"], row["arm"]), []).append(row)
    out = []
    for (scenario, arm), group in by_key.items():
        ref = {r["seed"]: r for r in by_key.get((scenario, reference), [])}
        mine = {r["seed"]: r for r in group}
        checked = sum(int((r.get("verification") or {}).get("checked", 0)) for r in group)
        passed = sum(int((r.get("verification") or {}).get("passed", 0)) for r in group)
        summary = {
            "scenario": scenario, "arm": arm, "seeds": sorted(mine),
            "metrics": {m: t_interval([r["metrics"].get(m) for r in group]) for m in METRICS},
            "in_band": sum(band.check(r["metrics"]).inside for r in group), "n": len(group),
            "n_generated": t_interval([r.get("n_generated", 0) for r in group]),
            "n_made": t_interval([r.get("n_made", r.get("n_generated", 0)) for r in group]),
            "oracle_pass_rate": passed / checked if checked else None,
            "fallbacks": sum(fell_back(r) for r in group),
            "seconds": t_interval([r.get("seconds") for r in group]),
            "paired": {m: paired(m, {s: r["metrics"].get(m) for s, r in mine.items()},
                                 {s: r["metrics"].get(m) for s, r in ref.items()}) for m in METRICS}
            if arm != reference and ref else {},
        }
        out.append(summary)
    return out

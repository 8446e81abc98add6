"""Group-fairness metrics of a binary classifier, with bootstrap confidence intervals.

Point estimates come from AIF360's ``ClassificationMetric`` where AIF360 has the metric, so the
numbers match the reference implementation; balanced and worst-group accuracy are computed here.

Every metric is a function of the 8 counts of protected × target × prediction. The bootstrap
therefore draws those counts from a multinomial, which is exactly the distribution of resampling
rows with replacement, instead of rebuilding AIF360 datasets: 200 resamples cost milliseconds at
any number of rows.

Sign conventions (unprivileged minus privileged, unprivileged over privileged) are those of AIF360.
A metric whose denominator is zero (an empty group, a group without positives, ...) is ``None``
with a reason in :attr:`FairnessReport.undefined`; AIF360 is never asked for it, so no NaN, inf
or warning leaks out.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fairloop.errors import ConfigError

if TYPE_CHECKING:  # rich is imported lazily: computing metrics must not cost a rich import
    from rich.table import Table

# Cells of a 2×2 confusion matrix, indexed [y, ŷ], that each count sums.
_CELLS = {
    "n": [[1, 1], [1, 1]],
    "positives": [[0, 0], [1, 1]],
    "negatives": [[1, 1], [0, 0]],
    "predicted_positives": [[0, 1], [0, 1]],
    "correct": [[1, 0], [0, 1]],
    "tp": [[0, 0], [0, 1]],
    "tn": [[1, 0], [0, 0]],
    "fp": [[0, 1], [0, 0]],
    "fn": [[0, 0], [1, 0]],
    "nonzero_b": [[1, 1], [0, 1]],  # b = ŷ − y + 1 > 0: every sample but the false negatives
}
# Why a metric that needs a count is undefined when the count is zero.
_ZERO_COUNT_REASONS = {
    "n": "is empty",
    "positives": "has no samples with {positive}",
    "negatives": "has no samples with {negative}",
    "predicted_positives": "has no positive predictions",
    "nonzero_b": "has only false negatives, so b = ŷ − y + 1 is 0 for every sample",
}

_SELECTION_RATE = ("predicted_positives", "n")
_TPR = ("tp", "positives")
_TNR = ("tn", "negatives")
_FPR = ("fp", "negatives")
_FNR = ("fn", "positives")


class _Counts:
    """Sums over ``(..., protected, y, ŷ)`` counts, of one sample or of a batch of resamples."""

    def __init__(self, counts: np.ndarray, privileged_value: int) -> None:
        self.counts = counts
        self.scopes = {
            "all": counts.sum(axis=-3),
            "unprivileged": counts[..., 1 - privileged_value, :, :],
            "privileged": counts[..., privileged_value, :, :],
        }

    def count(self, scope: str, name: str) -> np.ndarray:
        return np.einsum("...yz,yz->...", self.scopes[scope], np.array(_CELLS[name]))

    def rate(self, scope: str, numerator: str, denominator: str) -> np.ndarray:
        return self.count(scope, numerator) / self.count(scope, denominator)

    def group_accuracy(self) -> np.ndarray:
        """Accuracy of each protected × target group, shape ``(..., 2, 2)``; NaN if empty."""
        correct = np.stack([self.counts[..., 0, 0], self.counts[..., 1, 1]], axis=-1)
        return correct / self.counts.sum(axis=-1)


def _gap(rate: tuple[str, str]) -> Callable[[_Counts], np.ndarray]:
    """Unprivileged minus privileged value of a rate: negative means the unprivileged get less."""
    return lambda c: c.rate("unprivileged", *rate) - c.rate("privileged", *rate)


def _both_groups(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((scope, name) for name in names for scope in ("unprivileged", "privileged"))


def _theil_index(c: _Counts) -> np.ndarray:
    """Theil index of b = ŷ − y + 1 from the counts of b = 1 and b = 2 (b = 0 adds nothing)."""
    n, ones, twos = c.count("all", "n"), c.count("all", "correct"), c.count("all", "fp")
    mean = (ones + 2 * twos) / n
    return (ones / mean * np.log(1 / mean) + twos * 2 / mean * np.log(2 / mean)) / n


def _worst_group_accuracy(c: _Counts) -> np.ndarray:
    accuracy = c.group_accuracy()
    return np.nanmin(accuracy.reshape(accuracy.shape[:-2] + (4,)), axis=-1)


@dataclass(frozen=True)
class _Metric:
    name: str
    label: str
    ideal: float
    needs: tuple[tuple[str, str], ...]  # (scope, count) pairs that must be > 0
    formula: Callable[[_Counts], np.ndarray]
    aif360: str | None = None  # the ClassificationMetric method giving the point estimate


_METRICS = (
    _Metric("accuracy", "Accuracy", 1.0, (("all", "n"),),
            lambda c: c.rate("all", "correct", "n"), aif360="accuracy"),
    _Metric("balanced_accuracy", "Balanced accuracy", 1.0,
            (("all", "positives"), ("all", "negatives")),
            lambda c: (c.rate("all", *_TPR) + c.rate("all", *_TNR)) / 2),
    _Metric("disparate_impact", "Disparate impact", 1.0,
            _both_groups("n") + (("privileged", "predicted_positives"),),
            lambda c: (c.rate("unprivileged", *_SELECTION_RATE)
                       / c.rate("privileged", *_SELECTION_RATE)),
            aif360="disparate_impact"),
    _Metric("statistical_parity_difference", "Statistical parity difference", 0.0,
            _both_groups("n"), _gap(_SELECTION_RATE), aif360="statistical_parity_difference"),
    _Metric("equal_opportunity_difference", "Equal opportunity difference", 0.0,
            _both_groups("positives"), _gap(_TPR), aif360="equal_opportunity_difference"),
    _Metric("average_odds_difference", "Average odds difference", 0.0,
            _both_groups("positives", "negatives"), lambda c: (_gap(_FPR)(c) + _gap(_TPR)(c)) / 2,
            aif360="average_odds_difference"),
    _Metric("theil_index", "Theil index", 0.0, (("all", "nonzero_b"),), _theil_index,
            aif360="theil_index"),
    _Metric("false_negative_rate_difference", "False negative rate difference", 0.0,
            _both_groups("positives"), _gap(_FNR), aif360="false_negative_rate_difference"),
    _Metric("worst_group_accuracy", "Worst-group accuracy", 1.0, (("all", "n"),),
            _worst_group_accuracy),
)
#: The metric keys of :meth:`FairnessReport.as_dict`, in report order.
METRIC_NAMES = tuple(metric.name for metric in _METRICS)
#: Human-readable metric names, as printed in tables and prompts.
METRIC_LABELS = {metric.name: metric.label for metric in _METRICS}


def _metric_values(counts: np.ndarray, privileged_value: int) -> dict[str, np.ndarray]:
    """Every metric from ``(..., 2, 2, 2)`` counts with numpy; NaN where a needed count is zero."""
    c = _Counts(counts, privileged_value)
    with np.errstate(divide="ignore", invalid="ignore"):  # the masked-out entries divide by zero
        return {
            metric.name: np.where(_defined(c, metric), metric.formula(c), np.nan)
            for metric in _METRICS
        }


def _defined(c: _Counts, metric: _Metric) -> np.ndarray:
    return np.logical_and.reduce([c.count(scope, name) > 0 for scope, name in metric.needs])


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """Counts indexed ``[protected, y, ŷ]``."""
    codes = 4 * protected.astype(np.intp) + 2 * y_true + y_pred
    return np.bincount(codes, minlength=8).reshape(2, 2, 2)


@contextmanager
def _quiet_aif360_import() -> Iterator[None]:
    """Hide the lines aif360 logs on import about optional extras (tensorflow, ...)."""
    root = logging.getLogger()
    # aif360 calls logging.warning(), which would also attach a stderr handler to a bare root
    # logger for good; a temporary NullHandler prevents that.
    handler = logging.NullHandler()

    def not_aif360(record: logging.LogRecord) -> bool:
        return "aif360" not in record.pathname

    root.addHandler(handler)
    root.addFilter(not_aif360)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(not_aif360)
        root.removeHandler(handler)


def _aif360_values(
    y_true: np.ndarray, y_pred: np.ndarray, protected: np.ndarray, privileged_value: int,
    methods: list[str],
) -> dict[str, float]:
    """Point estimates from AIF360; call only ``methods`` that are defined on this data."""
    with _quiet_aif360_import():
        import pandas as pd
        from aif360.datasets import BinaryLabelDataset
        from aif360.metrics import ClassificationMetric

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        truth = BinaryLabelDataset(
            df=pd.DataFrame({"target": y_true, "protected": protected}),
            label_names=["target"], protected_attribute_names=["protected"],
            favorable_label=1, unfavorable_label=0,
        )
        predicted = truth.copy()  # shallow: only the labels differ, and they are replaced
        predicted.labels = y_pred.reshape(-1, 1).astype(np.float64)
        metric = ClassificationMetric(
            truth, predicted,
            unprivileged_groups=[{"protected": 1 - privileged_value}],
            privileged_groups=[{"protected": privileged_value}],
        )
        return {method: float(getattr(metric, method)()) for method in methods}


def _as_binary(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    fix = f"pass {name} as a 1-D list, numpy array or pandas Series of 0/1 values"
    if array.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {array.shape}.", fix)
    if array.dtype == bool:
        return array.astype(np.int8)
    if not np.issubdtype(array.dtype, np.number):
        raise ConfigError(f"{name} must hold 0/1 numbers, got values of type {array.dtype}.", fix)
    binary = np.isin(array, (0, 1))
    if not binary.all():
        found = ", ".join(str(value) for value in np.unique(array[~binary])[:5])
        raise ConfigError(
            f"{name} must contain only 0 and 1, found {found}.",
            f"{fix}; threshold scores first, e.g. (scores >= 0.5).astype(int)",
        )
    return array.astype(np.int8)


@dataclass(frozen=True)
class BandCheck:
    """Whether a report is inside a :class:`FairBand`, and why each metric outside it is."""

    inside: bool
    outside: dict[str, str]


@dataclass(frozen=True)
class FairBand:
    """The range of DI and of |SPD|, |EOD|, |AOD| that counts as fair."""

    di_low: float = 0.8
    di_high: float = 1.25
    max_abs_diff: float = 0.05

    def __post_init__(self) -> None:
        if not (0 < self.di_low <= 1 <= self.di_high and self.max_abs_diff >= 0):
            raise ConfigError(
                f"FairBand(di_low={self.di_low}, di_high={self.di_high}, "
                f"max_abs_diff={self.max_abs_diff}) excludes perfect fairness.",
                "use 0 < di_low <= 1 <= di_high and max_abs_diff >= 0",
            )

    def shrunk(self, margin: float) -> FairBand:
        """The band with ``margin`` (a fraction) of its width taken off each side, towards perfect
        fairness: 0.2 turns DI [0.8, 1.25] into [0.84, 1.2] and |diff| ≤ 0.05 into ≤ 0.04."""
        if not 0 <= margin < 1:
            raise ConfigError(f"a band margin of {margin} is not a fraction in [0, 1)", "use e.g. 0.2")
        return FairBand(1 - (1 - self.di_low) * (1 - margin), 1 + (self.di_high - 1) * (1 - margin),
                        self.max_abs_diff * (1 - margin))

    def check(self, result: FairnessReport | Mapping[str, Any]) -> BandCheck:
        """Check a report, or its :meth:`FairnessReport.as_dict`; an undefined or missing metric
        (or one that is not a finite number) is outside."""
        values = result.as_dict() if isinstance(result, FairnessReport) else result
        undefined = values.get("undefined") or {}
        outside = {}
        for name, (low, high) in self._bounds().items():
            value = _finite(values.get(name))
            if value is None:
                outside[name] = str(undefined.get(name) or "not reported")
            elif not low <= value <= high:
                outside[name] = f"{value:.4f} is outside [{low:g}, {high:g}]"
        return BandCheck(inside=not outside, outside=outside)

    def distance(self, metrics: Mapping[str, Any]) -> float:
        """How far the metrics are outside the band, summed over DI, |SPD|, |EOD|, |AOD| (0 inside);
        an undefined metric counts as 1."""
        total = 0.0
        for name, (low, high) in self._bounds().items():
            value = _finite(metrics.get(name))
            total += 1.0 if value is None else max(0.0, low - value) + max(0.0, value - high)
        return total

    def worst_excess(self, metrics: Mapping[str, Any]) -> float:
        """How far the metric furthest outside the band is outside it (0 inside); an undefined
        metric counts as 1."""
        excess = 0.0
        for name, (low, high) in self._bounds().items():
            value = _finite(metrics.get(name))
            excess = max(excess, 1.0 if value is None else max(0.0, low - value, value - high))
        return excess

    def score(self, metrics: Mapping[str, Any]) -> float:
        """What the loop maximises on validation, in one number: worst-group accuracy less
        :meth:`worst_excess`. A point outside the band costs as much as a point of worst-group
        accuracy. The metric furthest out, not the sum: after a first repair EOD (one class's gap)
        and SPD, AOD (both classes' gaps) sit on opposite sides, and a summed distance let SPD and
        AOD outvote EOD, leaving EOD alone at the band's edge."""
        return (_finite(metrics.get("worst_group_accuracy")) or 0.0) - self.worst_excess(metrics)

    def crossed(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
        """Metrics that crossed the band to its other side (seed 000's DI 0.27 → 1.355)."""
        crossed = []
        di0, di1 = _finite(before.get("disparate_impact")), _finite(after.get("disparate_impact"))
        if di0 is not None and di1 is not None and (
                (di0 < self.di_low and di1 > self.di_high) or (di0 > self.di_high and di1 < self.di_low)):
            crossed.append(f"disparate_impact {di0:.3f} → {di1:.3f}")
        for name in ("statistical_parity_difference", "equal_opportunity_difference", "average_odds_difference"):
            v0, v1 = _finite(before.get(name)), _finite(after.get(name))
            if v0 is not None and v1 is not None and abs(v1) > self.max_abs_diff and v0 * v1 < 0:
                crossed.append(f"{name} {v0:+.3f} → {v1:+.3f}")
        return crossed

    def _bounds(self) -> dict[str, tuple[float, float]]:
        return {"disparate_impact": (self.di_low, self.di_high)} | {
            name: (-self.max_abs_diff, self.max_abs_diff)
            for name in ("statistical_parity_difference", "equal_opportunity_difference", "average_odds_difference")}


def sibling_gap(metrics: Mapping[str, Any], label: int, value: int) -> float | None:
    """How far group (``label``, protected = ``value``) trails its sibling (``label``, 1 − ``value``)
    in accuracy, from a report's ``groups``: positive when it trails; None when either is missing."""
    accuracy = {(g.get("target"), g.get("protected")): _finite(g.get("accuracy")) for g in metrics.get("groups") or []}
    mine, sibling = accuracy.get((label, value)), accuracy.get((label, 1 - value))
    return None if mine is None or sibling is None else sibling - mine


def _finite(value: Any) -> float | None:
    """A metric value as a float, or None when it is undefined, missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class FairnessReport:
    """Fairness metrics of one set of predictions, with the group definitions they depend on.

    ``values`` maps each name in :data:`METRIC_NAMES` to a float, or to None with the reason in
    ``undefined``. ``ci`` maps each name to a bootstrap percentile interval, or None when there
    is none; ``bootstrap_undefined`` counts the resamples in which a defined metric was not.
    """

    values: dict[str, float | None]
    ci: dict[str, tuple[float, float] | None]
    undefined: dict[str, str]
    groups: list[dict[str, Any]]
    target_name: str
    protected_name: str
    privileged_value: int
    n: int
    n_bootstrap: int
    confidence: float = 0.95
    bootstrap_undefined: dict[str, int] = field(default_factory=dict)
    worst_group: str | None = None

    @property
    def privileged(self) -> str:
        return f"{self.protected_name}={self.privileged_value}"

    @property
    def unprivileged(self) -> str:
        return f"{self.protected_name}={1 - self.privileged_value}"

    @property
    def positive_label(self) -> str:
        return f"{self.target_name}=1"

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no NaN): metric keys at the top level, then groups and intervals."""
        return {
            **self.values,
            "worst_group": self.worst_group,
            "groups": [dict(group) for group in self.groups],
            "ci": {name: None if ci is None else list(ci) for name, ci in self.ci.items()},
            "undefined": dict(self.undefined),
            "bootstrap_undefined": dict(self.bootstrap_undefined),
            "positive_label": self.positive_label,
            "privileged": self.privileged,
            "unprivileged": self.unprivileged,
            "n": self.n,
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
        }

    def in_band(self, band: FairBand | None = None) -> BandCheck:
        """Check against ``band`` (the default :class:`FairBand` when None)."""
        return (band or FairBand()).check(self)

    def _title(self) -> str:
        return (f"Positive label {self.positive_label}; privileged group {self.privileged}, "
                f"unprivileged group {self.unprivileged}; n = {self.n}")

    def _ci_header(self) -> str:
        return f"{self.confidence:.0%} CI"

    def table_rows(self) -> Iterator[tuple[str, str, str, str]]:
        """(metric, value, CI, ideal) cells shared by the markdown and rich tables."""
        for metric in _METRICS:
            value, ci = self.values[metric.name], self.ci[metric.name]
            ci_text = "—" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
            if metric.name in self.bootstrap_undefined:
                ci_text += (f" ({self.bootstrap_undefined[metric.name]}/{self.n_bootstrap} "
                            "resamples undefined)")
            value_text = "undefined" if value is None else f"{value:.4f}"
            yield metric.label, value_text, ci_text, f"{metric.ideal:g}"

    def _notes(self) -> list[str]:
        notes = [f"{METRIC_LABELS[name]}: {reason}" for name, reason in self.undefined.items()]
        return notes + [f"Worst group: {self.worst_group}"]

    def to_markdown(self) -> str:
        """Metric table with CIs and ideal values, the group definitions and a per-group table."""
        lines = [self._title() + ".", "", f"| Metric | Value | {self._ci_header()} | Ideal |",
                 "|---|---:|---|---:|"]
        lines += [f"| {' | '.join(row)} |" for row in self.table_rows()]
        lines += [""] + [f"- {note}" for note in self._notes()]
        lines += ["", "| Group | Role | n | Predicted positive | Accuracy | TPR | FPR |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for group in self.groups:
            rates = (_format(group[key]) for key in ("accuracy", "tpr", "fpr"))
            lines.append(f"| {group['name']} | {group['role']} | {group['n']} | "
                         f"{group['n_pred_positive']} | {' | '.join(rates)} |")
        return "\n".join(lines) + "\n"

    def as_rich_table(self) -> Table:
        """The metric table for the terminal, titled with the group definitions."""
        from rich.table import Table

        table = Table(title=self._title(), caption="\n".join(self._notes()))
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        table.add_column(self._ci_header())
        table.add_column("Ideal", justify="right")
        for row in self.table_rows():
            table.add_row(*row)
        return table


def _format(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _groups(counts: np.ndarray, target_name: str, protected_name: str,
            privileged_value: int) -> list[dict[str, Any]]:
    """One entry per target × protected group; rates of empty groups are None."""
    groups = []
    for y in (0, 1):
        for a in (0, 1):
            n, n_pred_positive = int(counts[a, y].sum()), int(counts[a, y, 1])
            selection_rate = n_pred_positive / n if n else None
            groups.append({
                "name": f"{target_name}={y}, {protected_name}={a}",
                "target": y,
                "protected": a,
                "role": "privileged" if a == privileged_value else "unprivileged",
                "n": n,
                "n_pred_positive": n_pred_positive,
                "accuracy": int(counts[a, y, y]) / n if n else None,
                "tpr": selection_rate if y == 1 else None,
                "fpr": selection_rate if y == 0 else None,
            })
    return groups


def _undefined_reasons(counts: np.ndarray, privileged_value: int, target_name: str,
                       protected_name: str) -> dict[str, str]:
    """Name the first zero count each undefined metric needs, in words."""
    c = _Counts(counts, privileged_value)
    scopes = {
        "all": "the data",
        "unprivileged": f"the unprivileged group ({protected_name}={1 - privileged_value})",
        "privileged": f"the privileged group ({protected_name}={privileged_value})",
    }
    reasons = {}
    for metric in _METRICS:
        for scope, name in metric.needs:
            if c.count(scope, name) == 0:
                why = _ZERO_COUNT_REASONS[name].format(
                    positive=f"{target_name}=1", negative=f"{target_name}=0")
                reasons[metric.name] = f"undefined: {scopes[scope]} {why}"
                break
    return reasons


def _bootstrap(counts: np.ndarray, privileged_value: int, defined: list[str], n_bootstrap: int,
               confidence: float, seed: int | None) -> tuple[dict[str, tuple[float, float] | None],
                                                             dict[str, int]]:
    """Percentile CIs of the ``defined`` metrics, and how many resamples left each undefined.

    Resampling n rows with replacement is a multinomial draw of the 8 cell counts, so all
    resamples are drawn at once without touching the rows.
    """
    n = int(counts.sum())
    draws = np.random.default_rng(seed).multinomial(n, counts.ravel() / n, size=n_bootstrap)
    resampled = _metric_values(draws.reshape(n_bootstrap, 2, 2, 2), privileged_value)
    tail = (1 - confidence) / 2 * 100
    ci: dict[str, tuple[float, float] | None] = {}
    n_undefined = {}
    for name in defined:
        values = resampled[name][~np.isnan(resampled[name])]
        if values.size < n_bootstrap:
            n_undefined[name] = n_bootstrap - values.size
        if values.size:
            low, high = np.percentile(values, [tail, 100 - tail])
            ci[name] = (float(low), float(high))
    return ci, n_undefined


def paired_score_gains(band: FairBand, *, y_true: Any, protected: Any, before: Any, after: Any,
                       privileged_value: int, n_bootstrap: int = 400, seed: int = 0) -> np.ndarray:
    """``band.score`` of the predictions ``after`` less that of ``before`` on the same rows, in each
    of ``n_bootstrap`` resamples of the rows (both predictions resampled together): how sure the
    rows are that one model beats the other. The spread grows with the rows the two disagree on,
    and where the furthest metric of the score can switch (EOD on one side of zero, SPD and AOD on
    the other). The 16 cell counts of protected × target × both predictions are drawn from a
    multinomial, as :func:`fairness_report`'s bootstrap draws 8."""
    y, a = _as_binary(y_true, "y_true"), _as_binary(protected, "protected")
    p0, p1 = _as_binary(before, "before"), _as_binary(after, "after")
    if not len(y) == len(a) == len(p0) == len(p1) or len(y) == 0:
        raise ConfigError(f"y_true, protected, before and after have lengths {len(y)}, {len(a)}, {len(p0)}, {len(p1)}",
                          "pass both models' predictions for the same, non-empty rows")
    codes = 8 * a.astype(np.intp) + 4 * y + 2 * p0 + p1
    counts = np.bincount(codes, minlength=16)
    draws = np.random.default_rng(seed).multinomial(len(y), counts / len(y), size=n_bootstrap)
    draws = draws.reshape(n_bootstrap, 2, 2, 2, 2)  # [resample, protected, y, ŷ before, ŷ after]
    scores = []
    for model_axis in (4, 3):  # sum out the other model's prediction: (before, after)
        values = _metric_values(draws.sum(axis=model_axis), privileged_value)
        scores.append(np.array([band.score({name: float(v[i]) for name, v in values.items()})
                                for i in range(n_bootstrap)]))
    return scores[1] - scores[0]


def fairness_report(
    *,
    y_true: Any,
    y_pred: Any,
    protected: Any,
    privileged_value: int = 1,
    target_name: str = "target",
    protected_name: str = "protected",
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> FairnessReport:
    """Group-fairness metrics of binary predictions with respect to a binary protected attribute.

    Parameters
    ----------
    y_true, y_pred, protected : array-like of 0/1
        One value per sample; the positive label is ``y == 1``.
    privileged_value : {0, 1}
        The protected value of the privileged group; explicit because every signed metric
        (unprivileged minus privileged) flips with it.
    target_name, protected_name : str
        Attribute names, used only to name groups in tables and reasons (e.g. ``"Male=1"``).
    n_bootstrap : int
        Bootstrap resamples for the confidence intervals; 0 disables them.
    confidence : float
        Coverage of the percentile intervals.
    seed : int or None
        Seed of the bootstrap, so that a report can be reproduced exactly.

    Returns
    -------
    FairnessReport

    Raises
    ------
    ConfigError
        If the inputs are empty, of different lengths or not 0/1, or an option is out of range.
    """
    arrays = {name: _as_binary(values, name) for name, values in
              (("y_true", y_true), ("y_pred", y_pred), ("protected", protected))}
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"y_true, y_pred and protected differ in length: {lengths}.",
                          "pass one value per sample in each, in the same order")
    if not lengths["y_true"]:
        raise ConfigError("No samples: y_true, y_pred and protected are empty.",
                          "compute the report on a non-empty split")
    if privileged_value not in (0, 1):
        raise ConfigError(f"privileged_value must be 0 or 1, got {privileged_value!r}.",
                          "pass the protected value of the privileged group")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}.",
                          "pass e.g. n_bootstrap=200, or 0 to skip confidence intervals")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence!r}.",
                          "pass e.g. confidence=0.95")

    y_true, y_pred, protected = arrays.values()
    counts = _confusion_counts(y_true, y_pred, protected)
    undefined = _undefined_reasons(counts, privileged_value, target_name, protected_name)
    defined = [name for name in METRIC_NAMES if name not in undefined]
    numpy_values = _metric_values(counts, privileged_value)
    aif360_values = _aif360_values(
        y_true, y_pred, protected, privileged_value,
        [metric.aif360 for metric in _METRICS if metric.aif360 and metric.name in defined],
    )
    values: dict[str, float | None] = {
        metric.name: None if metric.name in undefined
        else aif360_values.get(metric.aif360, float(numpy_values[metric.name]))
        for metric in _METRICS
    }

    ci: dict[str, tuple[float, float] | None] = dict.fromkeys(METRIC_NAMES)
    bootstrap_undefined: dict[str, int] = {}
    if n_bootstrap:
        intervals, bootstrap_undefined = _bootstrap(
            counts, privileged_value, defined, n_bootstrap, confidence, seed)
        ci.update(intervals)

    groups = _groups(counts, target_name, protected_name, privileged_value)
    non_empty = [group for group in groups if group["n"]]
    worst = min(non_empty, key=lambda group: group["accuracy"])
    return FairnessReport(
        values=values, ci=ci, undefined=undefined, groups=groups, target_name=target_name,
        protected_name=protected_name, privileged_value=privileged_value, n=lengths["y_true"],
        n_bootstrap=n_bootstrap, confidence=confidence, bootstrap_undefined=bootstrap_undefined,
        worst_group=worst["name"],
    )


def format_metrics_for_prompt(report: FairnessReport) -> str:
    """One ``Label = value`` line per metric (the reason when undefined), for an LLM prompt."""
    lines = []
    for name in METRIC_NAMES:
        value = report.values[name]
        text = report.undefined[name] if value is None else f"{value:.4f}"
        if name == "worst_group_accuracy":
            text += f" ({report.worst_group})"
        lines.append(f"{METRIC_LABELS[name]} = {text}")
    return "\n".join(lines)

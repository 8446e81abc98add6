"""Which image attributes drive the classifier's prediction of the target class (paper §3.2).

The classifier sees pixels, not attributes, so a surrogate regressor learns attributes → predicted
probability, its fidelity is measured, and LIME Tabular explains the surrogate row by row. The
mean signed local weight per attribute is the global importance score "S" that goes into the LLM
prompt ("Gray_Hair:0.418, Double_Chin:0.252, Attractive:-0.158"); positive pushes the prediction
towards the target class.

lime and scikit-learn are imported inside the functions so that the CLI starts fast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairloop.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

FEATURE_SELECTIONS = ("highest_weights", "auto", "forward_selection", "lasso_path", "none")
MIN_FIDELITY_R2 = 0.5
MIN_NUM_SAMPLES = 10
# Held-out fidelity needs at least two held-out rows; a quarter of the rows are held out from 8 on.
MIN_ROWS_FOR_HOLDOUT = 8
# A few tens of thousands of rows pin down a function of ~20 binary attributes; more only costs time.
MAX_SURROGATE_ROWS = 20_000


@dataclass
class AttributeExplanation:
    """Global signed attribute importances with the fidelity needed to judge them."""

    scores: dict[str, float]
    mean_abs: dict[str, float]
    fidelity: dict[str, float | None]
    n_explained: int
    num_samples: int
    feature_selection: str
    dropped_constant: list[str] = field(default_factory=list)
    protected: str | None = None
    warning: str | None = None
    explain_seconds: float = 0.0

    def as_list(self, top: int | None = None) -> list[tuple[str, float]]:
        """(attribute, signed score) pairs, largest |score| first."""
        return list(self.scores.items())[:top]

    def rank_of(self, attribute: str) -> int:
        """1-based rank of ``attribute`` by |score|."""
        for rank, name in enumerate(self.scores, start=1):
            if name == attribute:
                return rank
        if attribute in self.dropped_constant:
            raise ConfigError(
                f"Attribute {attribute!r} has the same value in every row, so it has no score.",
                "Use data where the attribute both occurs and does not occur.",
            )
        raise ConfigError(
            f"Attribute {attribute!r} is not in the explanation.",
            f"Use one of: {', '.join(self.scores)}.",
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe copy: plain floats, non-finite numbers as None."""
        return {
            "scores": {name: _json_float(v) for name, v in self.scores.items()},
            "mean_abs": {name: _json_float(v) for name, v in self.mean_abs.items()},
            "ranking": list(self.scores),
            "fidelity": {name: _json_float(v) for name, v in self.fidelity.items()},
            "n_explained": int(self.n_explained),
            "num_samples": int(self.num_samples),
            "feature_selection": self.feature_selection,
            "dropped_constant": list(self.dropped_constant),
            "protected": self.protected,
            "protected_rank": (
                self.rank_of(self.protected) if self.protected in self.scores else None
            ),
            "warning": self.warning,
            "explain_seconds": _json_float(self.explain_seconds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributeExplanation:
        """Rebuild from :meth:`as_dict` output (for reports made from saved runs)."""
        return cls(
            scores=dict(data["scores"]), mean_abs=dict(data["mean_abs"]), fidelity=dict(data["fidelity"]),
            n_explained=data["n_explained"], num_samples=data["num_samples"],
            feature_selection=data["feature_selection"], dropped_constant=list(data["dropped_constant"]),
            protected=data["protected"], warning=data["warning"], explain_seconds=data["explain_seconds"] or 0.0,
        )

    def to_prompt(self, top: int = 10) -> str:
        """The paper's "S" line for the LLM prompt: ``Gray_Hair:0.418, Attractive:-0.158``."""
        return ", ".join(f"{name}:{_sig3(v)}" for name, v in self.as_list(top))

    def to_markdown(self, top: int | None = None) -> str:
        """Markdown table for reports; the protected attribute is marked."""
        lines = ["| Rank | Attribute | Score | Mean abs. weight |", "|---:|---|---:|---:|"]
        for rank, (name, score) in enumerate(self.as_list(top), start=1):
            label = f"**{name}** (protected)" if name == self.protected else name
            lines.append(f"| {rank} | {label} | {_sig3(score)} | {_sig3(self.mean_abs[name])} |")
        return "\n".join(lines)

    def as_rich_table(self, top: int = 10) -> Table:
        """Rich table for the terminal, titled with the surrogate's held-out fidelity."""
        from rich.table import Table

        r2 = self.fidelity.get("surrogate_r2_heldout")
        title = "Attribute importance" + (f" (surrogate R² {r2:.2f})" if r2 is not None else "")
        table = Table(title=title)
        table.add_column("Rank", justify="right")
        table.add_column("Attribute")
        table.add_column("Score", justify="right")
        table.add_column("Mean |w|", justify="right")
        for rank, (name, score) in enumerate(self.as_list(top), start=1):
            style = "bold yellow" if name == self.protected else ("green" if score > 0 else "red")
            label = f"{name} (protected)" if name == self.protected else name
            table.add_row(str(rank), label, _sig3(score), _sig3(self.mean_abs[name]), style=style)
        return table

    def as_pyplot_figure(self, top: int = 15) -> Figure:
        """Horizontal bars, largest |score| on top; the protected attribute is always shown."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        items = self.as_list(top)
        if self.protected in self.scores and all(name != self.protected for name, _ in items):
            items.append((self.protected, self.scores[self.protected]))
        items.reverse()  # barh draws bottom-up
        names = [f"{n} (protected)" if n == self.protected else n for n, _ in items]
        values = [v for _, v in items]

        # A bare Figure with an Agg canvas stays out of pyplot's global state and needs no display.
        fig = Figure(figsize=(7, 0.35 * len(items) + 1.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        bars = ax.barh(names, values, color=["tab:green" if v > 0 else "tab:red" for v in values])
        for bar, (name, _) in zip(bars, items):
            if name == self.protected:
                bar.set_edgecolor("black")
                bar.set_linewidth(2)
                bar.set_hatch("//")
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("Mean signed LIME weight (effect of attribute present)")
        ax.set_title("Attribute importance for the target class")
        fig.tight_layout()
        return fig


def explain_attributes(
    *,
    attributes: pd.DataFrame,
    scores,
    protected: str | None = None,
    n_explain: int = 200,
    num_samples: int = 500,
    num_features: int | None = None,
    feature_selection: str = "highest_weights",
    seed: int = 0,
    surrogate=None,
) -> AttributeExplanation:
    """Explain the classifier's target probability through a surrogate fitted on binary attributes.

    ``surrogate`` is an unfitted regressor with ``fit``/``predict`` (fitted here, in place);
    by default a seeded GradientBoostingRegressor, which is fast and accurate on 0/1 features.
    ``num_features=None`` keeps every attribute in each local model; attributes that LIME leaves
    out of a row's explanation count as weight 0 in that row.
    """
    x, names, dropped = _validate_attributes(attributes)
    y = _validate_scores(scores, len(attributes))
    _validate_options(protected, list(map(str, attributes.columns)), n_explain, num_samples,
                      num_features, feature_selection)

    rng = np.random.default_rng(seed)
    surrogate, fidelity = _fit_surrogate(x, y, surrogate, seed, rng)
    rows = rng.choice(len(x), size=min(n_explain, len(x)), replace=False)
    weights, local_scores, seconds = _lime_weights(
        x, names, rows, surrogate.predict, num_samples,
        len(names) if num_features is None else min(num_features, len(names)),
        feature_selection, seed,
    )
    fidelity["lime_local_score_mean"] = float(np.mean(local_scores))

    # LIME's binary feature j means "x_j equals the explained row's value", so its weight is the
    # effect of the row's own value. Flip it where that value is 0 to get the effect of x_j = 1.
    signed = weights * (2.0 * x[rows] - 1.0)
    mean_signed = signed.mean(axis=0)
    mean_abs = np.abs(signed).mean(axis=0)
    order = np.argsort(-np.abs(mean_signed), kind="stable")

    r2 = fidelity["surrogate_r2_heldout"]
    r2_name = "held-out rows"
    if r2 is None:
        r2, r2_name = fidelity["surrogate_r2_all"], "all rows (too few rows to hold any out)"
    warning = None
    if r2 < MIN_FIDELITY_R2:
        warning = (
            f"The attributes explain little of the classifier's output: the surrogate reaches "
            f"R²={r2:.2f} on {r2_name} (below {MIN_FIDELITY_R2}), so these importance scores "
            "describe the surrogate more than the classifier."
        )
    return AttributeExplanation(
        scores={names[j]: float(mean_signed[j]) for j in order},
        mean_abs={names[j]: float(mean_abs[j]) for j in order},
        fidelity=fidelity,
        n_explained=len(rows),
        num_samples=num_samples,
        feature_selection=feature_selection,
        dropped_constant=dropped,
        protected=protected,
        warning=warning,
        explain_seconds=seconds,
    )


def _validate_attributes(attributes: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """Return the 0/1 matrix of the non-constant columns, their names and the constant ones."""
    if not isinstance(attributes, pd.DataFrame):
        raise ConfigError(
            f"attributes must be a pandas DataFrame, got {type(attributes).__name__}.",
            "Pass the attribute table as a DataFrame with one 0/1 column per attribute.",
        )
    if len(attributes) < 2 or attributes.shape[1] == 0:
        raise ConfigError(
            f"The attribute table has {len(attributes)} rows and {attributes.shape[1]} columns.",
            "Pass at least 2 rows and 1 attribute column.",
        )
    names = [str(c) for c in attributes.columns]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(
            f"Attribute columns appear more than once: {', '.join(duplicated)}.",
            "Give every attribute column a unique name.",
        )
    with_nan = [n for n, bad in zip(names, attributes.isna().any()) if bad]
    if with_nan:
        raise ConfigError(
            f"Attribute columns have missing values: {_some(with_nan)}.",
            "Fill or drop the rows with missing attribute values.",
        )
    try:
        x = attributes.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"Attribute columns must be numeric 0/1 or boolean ({err}).",
            "Convert the attribute table to 0/1 (CelebA's -1/1 becomes (value + 1) // 2).",
        ) from None
    not_binary = [n for n, ok in zip(names, np.isin(x, (0.0, 1.0)).all(axis=0)) if not ok]
    if not_binary:
        raise ConfigError(
            f"Attribute columns hold values other than 0 and 1: {_some(not_binary)}.",
            "Convert the attribute table to 0/1 (CelebA's -1/1 becomes (value + 1) // 2).",
        )
    varies = x.min(axis=0) != x.max(axis=0)
    if not varies.any():
        raise ConfigError(
            "Every attribute column has the same value in every row: there is nothing to explain.",
            "Use more rows, or rows in which the attributes differ.",
        )
    dropped = [n for n, v in zip(names, varies) if not v]
    return x[:, varies], [n for n, v in zip(names, varies) if v], dropped


def _validate_scores(scores, n_rows: int) -> np.ndarray:
    try:
        y = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(
            "scores must be numbers (the classifier's probability of the target class).",
            "Pass a 1-D array of floats in [0, 1], one per attribute row.",
        ) from None
    if y.ndim != 1 or len(y) != n_rows:
        raise ConfigError(
            f"scores has shape {y.shape} but the attribute table has {n_rows} rows.",
            "Pass one target-class probability per attribute row, in the same order.",
        )
    if not np.isfinite(y).all():
        raise ConfigError(
            f"scores has {int((~np.isfinite(y)).sum())} missing or infinite values.",
            "Drop those rows from both the scores and the attribute table.",
        )
    if y.min() < 0 or y.max() > 1:
        raise ConfigError(
            f"scores range over [{y.min():.3g}, {y.max():.3g}], outside [0, 1].",
            "Pass probabilities (apply softmax or sigmoid to the logits first).",
        )
    return y


def _validate_options(protected: str | None, names: list[str], n_explain: int, num_samples: int,
                      num_features: int | None, feature_selection: str) -> None:
    if protected is not None and protected not in names:
        raise ConfigError(
            f"Protected attribute {protected!r} is not a column of the attribute table.",
            f"Use one of: {_some(names, 20)}.",
        )
    if n_explain < 1:
        raise ConfigError(f"n_explain is {n_explain}.", "Explain at least 1 row.")
    if num_samples < MIN_NUM_SAMPLES:
        raise ConfigError(
            f"num_samples is {num_samples}: too few perturbed samples for a local linear model.",
            f"Use num_samples of at least {MIN_NUM_SAMPLES} (500 is a good default).",
        )
    if num_features is not None and num_features < 1:
        raise ConfigError(f"num_features is {num_features}.", "Use None (all) or at least 1.")
    if feature_selection not in FEATURE_SELECTIONS:
        raise ConfigError(
            f"Unknown feature_selection {feature_selection!r}.",
            f"Use one of: {', '.join(FEATURE_SELECTIONS)}.",
        )


def _fit_surrogate(x, y, surrogate, seed, rng) -> tuple[Any, dict[str, float | None]]:
    """Fit on the train rows and score R² on held-out rows, then on all rows."""
    from sklearn.metrics import r2_score

    if surrogate is None:
        from sklearn.ensemble import GradientBoostingRegressor

        surrogate = GradientBoostingRegressor(random_state=seed)
    n_test = min(len(x) // 4, MAX_SURROGATE_ROWS // 4) if len(x) >= MIN_ROWS_FOR_HOLDOUT else 0
    perm = rng.permutation(len(x))
    test, train = perm[:n_test], perm[n_test:n_test + MAX_SURROGATE_ROWS]
    surrogate.fit(x[train], y[train])
    heldout = float(r2_score(y[test], surrogate.predict(x[test]))) if n_test else None
    return surrogate, {
        "surrogate_r2_heldout": heldout,
        "surrogate_r2_all": float(r2_score(y, surrogate.predict(x))),
    }


def _lime_weights(x, names, rows, predict, num_samples, num_features, feature_selection,
                  seed) -> tuple[np.ndarray, list[float], float]:
    """LIME weights (rows × attributes, meaning "equals this row's value") and local R²."""
    from lime.lime_tabular import LimeTabularExplainer

    explainer = LimeTabularExplainer(
        x,
        mode="regression",
        feature_names=names,
        categorical_features=list(range(len(names))),
        discretize_continuous=False,
        feature_selection=feature_selection,
        random_state=seed,
    )
    weights = np.zeros((len(rows), len(names)))
    local_scores = []
    start = time.perf_counter()
    for i, row in enumerate(rows):
        # lime passes all num_samples perturbed rows to predict in one call.
        exp = explainer.explain_instance(
            x[row], predict, num_features=num_features, num_samples=num_samples
        )
        for j, w in exp.local_exp[1]:  # label 1 holds the regression weights (0 holds -w)
            weights[i, j] = w
        local_scores.append(float(exp.score))
    return weights, local_scores, time.perf_counter() - start


def _sig3(value: float) -> str:
    """Three significant digits, as in the paper's prompt; adding 0.0 turns -0.0 into 0."""
    return f"{value + 0.0:.3g}"


def _json_float(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"

"""Surrogate + LIME attribute importance: signs, ranking, fidelity, validation and exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fairloop.errors import ConfigError
from fairloop.tools.explain import AttributeExplanation, explain_attributes

FAST = {"n_explain": 40, "num_samples": 300}
NAMES = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]


def _table(n: int = 1200, seed: int = 0, p: float = 0.4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame((rng.random((n, len(NAMES))) < p).astype(int), columns=NAMES)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class LinearSurrogate:
    """Known attribute effects: A raises the score, B lowers it, everything else is irrelevant."""

    def fit(self, x, y):
        return self

    def predict(self, x):
        return 0.5 + 0.3 * x[:, 0] - 0.2 * x[:, 1]


@pytest.fixture(scope="module")
def synthetic() -> AttributeExplanation:
    x = _table()
    noise = np.random.default_rng(1).normal(scale=0.3, size=len(x))
    scores = _sigmoid(3 * x["A"] - 2 * x["B"] + noise)
    return explain_attributes(attributes=x, scores=scores, protected="C", **FAST)


def test_ranks_known_effects_with_their_signs(synthetic):
    assert synthetic.rank_of("A") == 1 and synthetic.scores["A"] > 0.2
    assert synthetic.rank_of("B") == 2 and synthetic.scores["B"] < -0.1
    assert all(abs(synthetic.scores[n]) < 0.03 for n in NAMES[2:])
    magnitudes = [abs(v) for v in synthetic.scores.values()]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert synthetic.fidelity["surrogate_r2_heldout"] > 0.8
    assert synthetic.fidelity["surrogate_r2_all"] > 0.8
    assert synthetic.fidelity["lime_local_score_mean"] > 0.8
    assert synthetic.warning is None
    assert synthetic.n_explained == 40 and synthetic.feature_selection == "highest_weights"


def test_lime_weights_refer_to_the_explained_rows_value():
    """Raw lime: for a row with A=0, its feature "A=0" gets a negative weight when A raises y."""
    from lime.lime_tabular import LimeTabularExplainer

    x = _table(200).to_numpy(dtype=float)
    explainer = LimeTabularExplainer(
        x, mode="regression", categorical_features=list(range(x.shape[1])),
        discretize_continuous=False, random_state=0,
    )
    row = x[np.flatnonzero(x[:, 0] == 0)[0]]
    weights = dict(explainer.explain_instance(row, LinearSurrogate().predict, num_samples=300)
                   .local_exp[1])
    assert weights[0] < -0.2


@pytest.mark.parametrize("p_present", [0.05, 0.5, 0.95])
def test_sign_means_effect_of_attribute_present(p_present):
    """Explaining every row, whether A is mostly absent or mostly present, A stays positive."""
    x = _table(60, seed=2, p=p_present)
    x.loc[0, ["A", "B"]] = 1 - x.loc[0, ["A", "B"]]  # ensure both values occur
    out = explain_attributes(attributes=x, scores=np.full(len(x), 0.5), n_explain=len(x),
                             num_samples=300, surrogate=LinearSurrogate())
    assert out.n_explained == len(x)
    assert out.scores["A"] == pytest.approx(0.3, abs=0.05)
    assert out.scores["B"] == pytest.approx(-0.2, abs=0.05)
    # Same sign in every row: the mean signed weight equals the mean absolute weight.
    assert out.mean_abs["A"] == pytest.approx(out.scores["A"])
    assert out.mean_abs["B"] == pytest.approx(-out.scores["B"])
    assert all(abs(out.scores[n]) < 0.02 for n in NAMES[2:])


def test_noise_scores_give_low_fidelity_and_a_warning():
    x = _table(600)
    out = explain_attributes(attributes=x, scores=np.random.default_rng(3).random(len(x)), **FAST)
    assert out.fidelity["surrogate_r2_heldout"] < 0.5
    assert "explain little" in out.warning


def test_same_seed_same_result_other_seed_differs():
    x = _table(300)
    scores = _sigmoid(2 * x["A"] - x["D"])
    a, b = (explain_attributes(attributes=x, scores=scores, seed=5, **FAST) for _ in range(2))
    c = explain_attributes(attributes=x, scores=scores, seed=6, **FAST)
    drop = lambda d: {k: v for k, v in d.items() if k != "explain_seconds"}  # noqa: E731
    assert drop(a.as_dict()) == drop(b.as_dict())
    assert a.scores != c.scores


def test_constant_columns_are_dropped_and_reported():
    x = _table(200)
    x["Always"], x["Never"] = 1, 0
    out = explain_attributes(attributes=x, scores=_sigmoid(x["A"]), protected="Never", **FAST)
    assert out.dropped_constant == ["Always", "Never"]
    assert set(out.scores) == set(NAMES)
    with pytest.raises(ConfigError, match="same value in every row"):
        out.rank_of("Never")
    assert out.as_dict()["protected_rank"] is None


def test_boolean_columns_and_few_rows_are_accepted():
    x = pd.DataFrame({"A": [True, False, True, False], "B": [False, False, True, True]})
    out = explain_attributes(attributes=x, scores=[0.9, 0.1, 0.8, 0.2], n_explain=4,
                             num_samples=50)
    assert out.fidelity["surrogate_r2_heldout"] is None  # too few rows to hold any out
    assert out.rank_of("A") == 1 and out.scores["A"] > 0


@pytest.mark.parametrize(
    ("attributes", "scores", "kwargs", "match"),
    [
        ([[0, 1], [1, 0]], [0.1, 0.2], {}, "must be a pandas DataFrame"),
        (pd.DataFrame({"A": [1]}), [0.5], {}, "1 rows"),
        (pd.DataFrame({"A": [0, 1, 2]}), [0.1, 0.2, 0.3], {}, "other than 0 and 1"),
        (pd.DataFrame({"A": [-1, 1, 1]}), [0.1, 0.2, 0.3], {}, "other than 0 and 1"),
        (pd.DataFrame({"A": [0, 1, None]}), [0.1, 0.2, 0.3], {}, "missing values: A"),
        (pd.DataFrame({"A": ["y", "n", "y"]}), [0.1, 0.2, 0.3], {}, "numeric 0/1"),
        (pd.DataFrame({"A": [1, 1, 1]}), [0.1, 0.2, 0.3], {}, "nothing to explain"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 0.2], {}, "3 rows"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, np.nan, 0.3], {}, "missing or infinite"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 1.5, 0.3], {}, r"outside \[0, 1\]"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 0.2, 0.3], {"protected": "Male"}, "not a column"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 0.2, 0.3], {"n_explain": 0}, "n_explain"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 0.2, 0.3], {"num_samples": 5}, "num_samples"),
        (pd.DataFrame({"A": [0, 1, 1]}), [0.1, 0.2, 0.3], {"feature_selection": "x"}, "Unknown"),
    ],
)
def test_invalid_input_raises_config_error(attributes, scores, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        explain_attributes(attributes=attributes, scores=scores, **kwargs)
    assert err.value.fix


def test_to_prompt_uses_the_papers_format():
    out = AttributeExplanation(
        scores={"Gray_Hair": 0.41812, "Double_Chin": 0.25249, "Attractive": -0.15849, "X": -0.0},
        mean_abs={"Gray_Hair": 0.5, "Double_Chin": 0.3, "Attractive": 0.2, "X": 0.0},
        fidelity={}, n_explained=1, num_samples=10, feature_selection="highest_weights",
    )
    assert out.to_prompt() == "Gray_Hair:0.418, Double_Chin:0.252, Attractive:-0.158, X:0"
    assert out.to_prompt(top=2) == "Gray_Hair:0.418, Double_Chin:0.252"
    assert out.as_list(1) == [("Gray_Hair", 0.41812)]


def test_exports(synthetic):
    data = synthetic.as_dict()
    json.dumps(data, allow_nan=False)
    assert data["ranking"][:2] == ["A", "B"] and data["protected"] == "C"
    assert data["protected_rank"] == synthetic.rank_of("C")
    assert set(data["fidelity"]) == {"surrogate_r2_heldout", "surrogate_r2_all",
                                     "lime_local_score_mean"}

    markdown = synthetic.to_markdown(top=3).splitlines()
    assert markdown[2].startswith("| 1 | A | 0.") and len(markdown) == 5
    assert "**C** (protected)" in synthetic.to_markdown()

    assert synthetic.as_rich_table(top=4).row_count == 4

    fig = synthetic.as_pyplot_figure(top=3)  # C is outside the top 3, so it is appended
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "A" and labels[0] == "C (protected)"
    fig.savefig(__import__("io").BytesIO(), format="png")

"""Tests of fairloop.tools.metrics: hand-computed values, agreement with AIF360, fairlearn and
scikit-learn, undefined cases, input validation, the bootstrap and the fair band."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from fairloop.errors import ConfigError
from fairloop.tools.metrics import (
    _METRICS,
    METRIC_NAMES,
    FairBand,
    _confusion_counts,
    _metric_values,
    fairness_report,
    format_metrics_for_prompt,
)

NAMES = {"target_name": "Male", "protected_name": "Gray_Hair"}

# Counts per (protected, y, ŷ) of the hand-computed example; privileged = Gray_Hair=1.
HAND_COUNTS = {
    (1, 1, 1): 40, (1, 1, 0): 10, (1, 0, 1): 20, (1, 0, 0): 30,  # privileged: n = 100
    (0, 1, 1): 12, (0, 1, 0): 18, (0, 0, 1): 6, (0, 0, 0): 14,   # unprivileged: n = 50
}


def rows(counts: dict[tuple[int, int, int], int], seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffled per-sample arrays with the given (protected, y, ŷ) counts."""
    cells = np.repeat(np.array(list(counts), dtype=int), list(counts.values()), axis=0)
    cells = np.random.default_rng(seed).permutation(cells)
    return {"protected": cells[:, 0], "y_true": cells[:, 1], "y_pred": cells[:, 2]}


def random_predictions(n: int, seed: int) -> dict[str, np.ndarray]:
    """Predictions that depend on the label and, unfairly, on the protected attribute."""
    rng = np.random.default_rng(seed)
    protected = rng.integers(0, 2, n)
    y_true = (rng.random(n) < 0.3 + 0.2 * protected).astype(int)
    y_pred = (rng.random(n) < 0.2 + 0.5 * y_true + 0.15 * protected).astype(int)
    return {"protected": protected, "y_true": y_true, "y_pred": y_pred}


def assert_json_safe(report) -> dict:
    return json.loads(json.dumps(report.as_dict(), allow_nan=False))


def test_hand_computed_confusion_matrix():
    report = fairness_report(**rows(HAND_COUNTS), **NAMES, n_bootstrap=0)
    v = report.values
    # selection rates: unprivileged 18/50 = 0.36, privileged 60/100 = 0.6
    assert v["disparate_impact"] == pytest.approx(0.6)  # 0.36 / 0.6
    assert v["statistical_parity_difference"] == pytest.approx(-0.24)  # 0.36 - 0.6
    # TPR: unprivileged 12/30 = 0.4, privileged 40/50 = 0.8
    assert v["equal_opportunity_difference"] == pytest.approx(-0.4)  # 0.4 - 0.8
    # FPR: unprivileged 6/20 = 0.3, privileged 20/50 = 0.4; AOD = ((0.3-0.4) + (0.4-0.8)) / 2
    assert v["average_odds_difference"] == pytest.approx(-0.25)
    # FNR: unprivileged 18/30 = 0.6, privileged 10/50 = 0.2
    assert v["false_negative_rate_difference"] == pytest.approx(0.4)  # 0.6 - 0.2
    # overall TP 52, FN 28, FP 26, TN 44 of 150: accuracy 96/150, BCA (52/80 + 44/70) / 2
    assert v["accuracy"] == pytest.approx(0.64)
    assert v["balanced_accuracy"] == pytest.approx(0.6392857142857143)
    # b = ŷ − y + 1 is 1 for 96 samples, 2 for 26 (FP), 0 for 28 (FN); mean 148/150
    mean_b = 148 / 150
    theil = (96 / mean_b * math.log(1 / mean_b) + 26 * 2 / mean_b * math.log(2 / mean_b)) / 150
    assert v["theil_index"] == pytest.approx(theil)
    # group accuracies: Male=0: 14/20 = 0.7 (Gray_Hair=0), 30/50 = 0.6 (Gray_Hair=1);
    # Male=1: 12/30 = 0.4 (Gray_Hair=0), 40/50 = 0.8 (Gray_Hair=1)
    assert v["worst_group_accuracy"] == pytest.approx(0.4)
    assert report.worst_group == "Male=1, Gray_Hair=0"
    assert report.undefined == {}

    groups = {group["name"]: group for group in report.groups}
    assert groups["Male=1, Gray_Hair=0"] == {
        "name": "Male=1, Gray_Hair=0", "target": 1, "protected": 0, "role": "unprivileged",
        "n": 30, "n_pred_positive": 12, "accuracy": 0.4, "tpr": 0.4, "fpr": None,
    }
    assert groups["Male=0, Gray_Hair=1"]["fpr"] == pytest.approx(0.4)
    assert [group["n"] for group in report.groups] == [20, 50, 30, 50]


def test_privileged_value_zero_flips_the_signs():
    data = rows(HAND_COUNTS)
    flipped = fairness_report(**data, **NAMES, privileged_value=0, n_bootstrap=0)
    assert flipped.values["disparate_impact"] == pytest.approx(0.6 / 0.36)
    assert flipped.values["statistical_parity_difference"] == pytest.approx(0.24)
    assert flipped.values["average_odds_difference"] == pytest.approx(0.25)
    assert flipped.as_dict()["privileged"] == "Gray_Hair=0"
    assert flipped.as_dict()["unprivileged"] == "Gray_Hair=1"


@pytest.mark.parametrize("privileged_value", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_formulas_match_aif360(seed, privileged_value):
    data = random_predictions(3000, seed)
    report = fairness_report(**data, privileged_value=privileged_value, n_bootstrap=0)
    counts = _confusion_counts(*(data[key].astype(np.int8)
                                 for key in ("y_true", "y_pred", "protected")))
    numpy_values = _metric_values(counts, privileged_value)
    for name in (metric.name for metric in _METRICS if metric.aif360):  # point estimates by AIF360
        assert float(numpy_values[name]) == pytest.approx(report.values[name], abs=1e-12), name


@pytest.mark.parametrize("privileged_value", [0, 1])
def test_agrees_with_fairlearn_and_sklearn(privileged_value):
    data = random_predictions(5000, seed=3)
    y_true, y_pred, protected = data["y_true"], data["y_pred"], data["protected"]
    report = fairness_report(**data, privileged_value=privileged_value, n_bootstrap=0)
    frame = MetricFrame(
        metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                 "fnr": false_negative_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=protected,
    ).by_group
    u, p = frame.loc[1 - privileged_value], frame.loc[privileged_value]
    expected = {
        "disparate_impact": u["sr"] / p["sr"],
        "statistical_parity_difference": u["sr"] - p["sr"],
        "equal_opportunity_difference": u["tpr"] - p["tpr"],
        "average_odds_difference": ((u["fpr"] - p["fpr"]) + (u["tpr"] - p["tpr"])) / 2,
        "false_negative_rate_difference": u["fnr"] - p["fnr"],
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "worst_group_accuracy": MetricFrame(
            metrics=accuracy_score, y_true=y_true, y_pred=y_pred,
            sensitive_features=pd.DataFrame({"y": y_true, "a": protected}),
        ).group_min(),
    }
    for name, value in expected.items():
        assert report.values[name] == pytest.approx(value, abs=1e-12), name


def test_accepts_lists_series_and_bools():
    data = rows(HAND_COUNTS)
    expected = fairness_report(**data, n_bootstrap=0).values
    as_lists = {key: values.tolist() for key, values in data.items()}
    as_series = {key: pd.Series(values, index=np.arange(len(values)) + 7)
                 for key, values in data.items()}
    as_bools = {key: values.astype(bool) for key, values in data.items()}
    for variant in (as_lists, as_series, as_bools):
        assert fairness_report(**variant, n_bootstrap=0).values == expected


@pytest.mark.filterwarnings("error")
def test_privileged_group_without_positive_predictions():
    counts = {**HAND_COUNTS, (1, 1, 1): 0, (1, 0, 1): 0}
    report = fairness_report(**rows(counts), **NAMES)
    assert report.values["disparate_impact"] is None
    assert report.ci["disparate_impact"] is None
    assert report.undefined == {
        "disparate_impact":
            "undefined: the privileged group (Gray_Hair=1) has no positive predictions"
    }
    assert report.values["statistical_parity_difference"] == pytest.approx(0.36)  # 0.36 - 0
    loaded = assert_json_safe(report)
    assert loaded["disparate_impact"] is None
    assert "undefined" in format_metrics_for_prompt(report)
    assert report.in_band().outside["disparate_impact"] == report.undefined["disparate_impact"]


@pytest.mark.filterwarnings("error")
def test_group_without_true_positives():
    counts = {**HAND_COUNTS, (0, 1, 1): 0, (0, 1, 0): 0}
    report = fairness_report(**rows(counts), **NAMES)
    reason = "undefined: the unprivileged group (Gray_Hair=0) has no samples with Male=1"
    assert report.undefined == dict.fromkeys(
        ["equal_opportunity_difference", "average_odds_difference",
         "false_negative_rate_difference"], reason)
    assert all(report.values[name] is None and report.ci[name] is None
               for name in report.undefined)
    assert report.values["disparate_impact"] is not None
    assert_json_safe(report)


@pytest.mark.filterwarnings("error")
def test_protected_attribute_with_one_value():
    counts = {key: value for key, value in HAND_COUNTS.items() if key[0] == 1}
    report = fairness_report(**rows(counts), **NAMES, n_bootstrap=50)
    group_metrics = ["disparate_impact", "statistical_parity_difference",
                     "equal_opportunity_difference", "average_odds_difference",
                     "false_negative_rate_difference"]
    assert sorted(report.undefined) == sorted(group_metrics)
    assert report.undefined["statistical_parity_difference"] == (
        "undefined: the unprivileged group (Gray_Hair=0) is empty")
    assert report.values["accuracy"] == pytest.approx(0.7)  # (40 + 30) / 100
    assert report.values["worst_group_accuracy"] == pytest.approx(0.6)  # 30 / 50
    assert report.ci["accuracy"] is not None
    assert [group["accuracy"] for group in report.groups if group["n"] == 0] == [None, None]
    assert_json_safe(report)
    report.to_markdown()


@pytest.mark.filterwarnings("error")
def test_only_false_negatives():
    data = {"y_true": [1, 1, 1], "y_pred": [0, 0, 0], "protected": [0, 1, 1]}
    report = fairness_report(**data, **NAMES, n_bootstrap=20)
    assert report.undefined["theil_index"] == (
        "undefined: the data has only false negatives, so b = ŷ − y + 1 is 0 for every sample")
    assert report.undefined["balanced_accuracy"] == "undefined: the data has no samples with Male=0"
    assert report.values["accuracy"] == 0.0
    assert_json_safe(report)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"y_true": [], "y_pred": [], "protected": []}, "No samples"),
        ({"y_true": [0, 1, 2], "y_pred": [0, 1, 1], "protected": [0, 1, 1]},
         "only 0 and 1, found 2"),
        ({"y_true": [0, 1, 1], "y_pred": [0.2, 0.9, 0.6], "protected": [0, 1, 1]},
         "y_pred must contain only 0 and 1"),
        ({"y_true": [0, 1, np.nan], "y_pred": [0, 1, 1], "protected": [0, 1, 1]}, "found nan"),
        ({"y_true": ["0", "1"], "y_pred": [0, 1], "protected": [0, 1]}, "0/1 numbers"),
        ({"y_true": [0, 1, 1], "y_pred": [0, 1], "protected": [0, 1, 1]}, "differ in length"),
        ({"y_true": [[0, 1]], "y_pred": [[0, 1]], "protected": [[0, 1]]}, "one-dimensional"),
    ],
)
def test_invalid_inputs(data, message):
    with pytest.raises(ConfigError, match=message) as error:
        fairness_report(**data)
    assert error.value.fix


@pytest.mark.parametrize(
    "option",
    [{"privileged_value": 2}, {"n_bootstrap": -1}, {"n_bootstrap": 2.5}, {"confidence": 1.0}],
)
def test_invalid_options(option):
    with pytest.raises(ConfigError):
        fairness_report(**rows(HAND_COUNTS), **option)


def test_bootstrap_intervals():
    data = random_predictions(4000, seed=5)
    report = fairness_report(**data, n_bootstrap=300, seed=1)
    for name in METRIC_NAMES:
        low, high = report.ci[name]
        assert low < report.values[name] < high, name
    # the standard error of the accuracy is about sqrt(p (1 - p) / n) = 0.0075 here
    low, high = report.ci["accuracy"]
    assert 2 * 1.96 * 0.006 < high - low < 2 * 1.96 * 0.009

    assert fairness_report(**data, n_bootstrap=300, seed=1).ci == report.ci
    assert fairness_report(**data, n_bootstrap=300, seed=2).ci != report.ci
    narrow = fairness_report(**data, n_bootstrap=300, seed=1, confidence=0.5)
    assert narrow.ci["accuracy"][1] - narrow.ci["accuracy"][0] < high - low

    none = fairness_report(**data, n_bootstrap=0)
    assert none.ci == dict.fromkeys(METRIC_NAMES) and none.bootstrap_undefined == {}
    assert none.values == report.values


def test_bootstrap_counts_undefined_resamples():
    # one unprivileged sample with Male=1: resamples often lose it, leaving TPR_u undefined
    counts = {**HAND_COUNTS, (0, 1, 1): 1, (0, 1, 0): 0}
    report = fairness_report(**rows(counts), **NAMES, n_bootstrap=200)
    lost = report.bootstrap_undefined["equal_opportunity_difference"]
    assert 20 < lost < 140  # P(lost) = (1 - 1/121) ** 121 ≈ 0.37
    assert report.ci["equal_opportunity_difference"] is not None
    assert f"{lost}/200 resamples undefined" in report.to_markdown()


def test_as_dict_and_renderings():
    report = fairness_report(**rows(HAND_COUNTS), **NAMES, n_bootstrap=20)
    loaded = assert_json_safe(report)
    assert list(loaded)[: len(METRIC_NAMES)] == list(METRIC_NAMES)
    assert {"groups", "ci", "undefined", "privileged", "unprivileged", "n"} <= set(loaded)
    assert loaded["privileged"] == "Gray_Hair=1" and loaded["n"] == 150
    assert len(loaded["ci"]["accuracy"]) == 2

    markdown = report.to_markdown()
    assert "privileged group Gray_Hair=1, unprivileged group Gray_Hair=0" in markdown
    assert "| Disparate impact | 0.6000 |" in markdown
    assert "| Male=1, Gray_Hair=0 | unprivileged | 30 | 12 |" in markdown

    table = report.as_rich_table()
    assert "Gray_Hair=1" in table.title and table.row_count == len(METRIC_NAMES)

    prompt = format_metrics_for_prompt(report).splitlines()
    assert len(prompt) == len(METRIC_NAMES)
    assert "Disparate impact = 0.6000" in prompt


def test_fair_band():
    fair = {(a, y, yhat): 10 for a in (0, 1) for y in (0, 1) for yhat in (0, 1)}
    report = fairness_report(**rows(fair), n_bootstrap=0)
    assert report.in_band().inside and report.in_band().outside == {}

    unfair = fairness_report(**rows(HAND_COUNTS), n_bootstrap=0)
    check = unfair.in_band()
    assert not check.inside
    assert sorted(check.outside) == sorted(["disparate_impact", "statistical_parity_difference",
                                            "equal_opportunity_difference",
                                            "average_odds_difference"])
    assert check.outside["disparate_impact"] == "0.6000 is outside [0.8, 1.25]"

    loose = FairBand(di_low=0.5, max_abs_diff=0.5)
    assert loose.check(unfair).inside
    assert loose.check(json.loads(json.dumps(unfair.as_dict()))).inside
    with pytest.raises(ConfigError):
        FairBand(di_low=1.1)


def test_shrunk_band_moves_every_edge_towards_perfect_fairness():
    target = FairBand().shrunk(0.2)
    assert (target.di_low, target.di_high, target.max_abs_diff) == pytest.approx((0.84, 1.2, 0.04))
    assert FairBand().shrunk(0) == FairBand()
    edge = {"disparate_impact": 0.82, "statistical_parity_difference": -0.045, "equal_opportunity_difference": 0.0,
            "average_odds_difference": 0.0}
    assert FairBand().check(edge).inside and not target.check(edge).inside
    with pytest.raises(ConfigError):
        FairBand().shrunk(1.0)


def test_aif360_import_prints_nothing():
    code = ("from fairloop.tools.metrics import fairness_report; "
            "fairness_report(y_true=[0, 1, 1, 0], y_pred=[0, 1, 0, 0], protected=[0, 0, 1, 1], "
            "n_bootstrap=0); import logging; assert not logging.getLogger().handlers")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_paired_score_gains_are_zero_for_the_same_model_and_spread_with_how_much_two_models_differ():
    from fairloop.tools.metrics import paired_score_gains

    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, 1000), rng.integers(0, 2, 1000)
    worst = (y == 1) & (a == 0)  # a model that misses 40 % of this group and 10 % of the others
    before = np.where(rng.random(1000) < np.where(worst, 0.6, 0.9), y, 1 - y)
    band = FairBand().shrunk(0.7)
    args = dict(y_true=y, protected=a, privileged_value=1, n_bootstrap=300)
    assert not paired_score_gains(band, before=before, after=before, **args).any()
    fixed = np.where(worst, y, before)  # every error of that group fixed
    assert (paired_score_gains(band, before=before, after=fixed, **args) > 0).all()
    few = before.copy()
    few[np.flatnonzero(worst)[:6]] = 1 - few[np.flatnonzero(worst)[:6]]  # six rows of that group flipped
    spread = paired_score_gains(band, before=before, after=few, **args)
    assert 0 < spread.std() < paired_score_gains(band, before=before, after=fixed, **args).std()
    with pytest.raises(ConfigError, match="lengths"):
        paired_score_gains(band, before=before, after=before[:10], **args)

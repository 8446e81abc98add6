"""audit(): metrics, explanation and manifest of a classifier, the files it writes, its errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairloop.data.datasets import FaceDataset
from fairloop.errors import ConfigError
from fairloop.report.audit_html import write_audit
from fairloop.tools.audit import AuditResult, audit
from fairloop.tools.metrics import METRIC_NAMES
from fairloop.vision.models import load_checkpoint

TARGET, PROTECTED = "Male", "Gray_Hair"
FAST = {"n_bootstrap": 20, "explain_rows": 30, "lime_samples": 100}
METRIC_KEYS = ("accuracy", "balanced_accuracy", "disparate_impact", "statistical_parity_difference",
               "equal_opportunity_difference", "average_odds_difference", "theil_index",
               "false_negative_rate_difference", "worst_group_accuracy")


class LookupShortcut(nn.Module):
    """A user model that has learnt the shortcut perfectly: it predicts Male from Gray_Hair.

    It recognises each image of a split by its exact pixels and answers a large positive logit
    for gray-haired faces, a large negative one otherwise. It has no parameters at all.
    """

    def __init__(self, part: FaceDataset, attribute: str = PROTECTED) -> None:
        super().__init__()
        images, labels = part.images(), part.labels(attribute)
        self.answers = {images[i].numpy().tobytes(): 8.0 if labels[i] else -8.0 for i in range(len(part))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.answers[image.contiguous().numpy().tobytes()] for image in x.cpu()])


class TinyUserNet(nn.Module):
    """An ordinary user network (not a FaceClassifier) with (N, 1) logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def checkpoint_model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def result(checkpoint_model, synth_data) -> AuditResult:
    model, meta = checkpoint_model
    return audit(model, synth_data, target=TARGET, protected=PROTECTED, **FAST,
                 model_info={"arch": meta["arch"], "train_data_hash": meta["data_hash"]})


@pytest.fixture(scope="module")
def shortcut(synth_data) -> AuditResult:
    model = LookupShortcut(synth_data.split("test"))
    return audit(model, synth_data, target=TARGET, protected=PROTECTED, n_bootstrap=50, explain_rows=24,
                 lime_samples=200)


# -------------------------------------------------------------------------------------- content


def test_as_dict_has_the_metric_keys_at_top_level(result):
    d = result.as_dict()
    assert tuple(METRIC_NAMES) == METRIC_KEYS
    for key in METRIC_KEYS:
        assert key in d
        assert d[key] is None or isinstance(d[key], float)
        if d[key] is None:  # undefined metrics say why
            assert key in d["undefined"]
    assert 0.0 <= d["accuracy"] <= 1.0
    assert (d["target"], d["protected"], d["split"]) == (TARGET, PROTECTED, "test")


def test_groups_cover_the_test_split(result, synth_data):
    d = result.as_dict()
    n_test = len(synth_data.split("test"))
    assert d["n"] == n_test == 24
    assert len(d["groups"]) == 4
    assert sum(group["n"] for group in d["groups"]) == n_test
    assert {group["name"] for group in d["groups"]} == {
        f"{TARGET}={y}, {PROTECTED}={a}" for y in (0, 1) for a in (0, 1)}


def test_importances_score_every_attribute_but_the_target(result, synth_data):
    importances = result.as_dict()["importances"]
    explained = set(importances["scores"]) | set(importances["dropped_constant"])
    assert explained == set(synth_data.attributes) - {TARGET}
    assert TARGET not in importances["scores"]
    assert importances["ranking"] == list(importances["scores"])
    assert importances["protected"] == PROTECTED
    assert PROTECTED in importances["scores"]  # balanced test split: never constant
    assert importances["n_explained"] == min(FAST["explain_rows"], 24)


def test_manifest_records_hashes_packages_and_seeds(result, synth_data):
    manifest = result.as_dict()["manifest"]
    assert isinstance(manifest["config_hash"], str) and len(manifest["config_hash"]) == 16
    assert manifest["data_hash"] == synth_data.fingerprint()
    assert manifest["packages"]["torch"] == torch.__version__.split("+")[0]
    assert manifest["seeds"] == {"audit": 0}
    assert manifest["config"]["target"] == TARGET and manifest["config"]["protected"] == PROTECTED
    assert manifest["model"]["arch"] == "smallcnn"
    assert manifest["model"]["train_data_hash"] == synth_data.fingerprint()


def test_as_dict_is_strict_json(result, shortcut):
    for r in (result, shortcut):
        text = json.dumps(r.as_dict(), allow_nan=False)
        assert json.loads(text)["accuracy"] == r.metrics.values["accuracy"]


def test_predictions_have_one_row_per_test_image(result, synth_data):
    test = synth_data.split("test")
    p = result.predictions
    assert list(p.columns) == ["path", "y_true", "protected", "prob"]
    assert list(p.index) == list(test.table.index)
    np.testing.assert_array_equal(p["y_true"], test.labels(TARGET))
    np.testing.assert_array_equal(p["protected"], test.labels(PROTECTED))
    assert p["prob"].between(0, 1).all()


def _recompute(predictions: pd.DataFrame, privileged: int = 1) -> dict[str, float]:
    y, a, yhat = predictions["y_true"].to_numpy(), predictions["protected"].to_numpy(), \
        (predictions["prob"] >= 0.5).to_numpy().astype(int)
    un, pr = a == 1 - privileged, a == privileged
    tpr = lambda g: yhat[g & (y == 1)].mean()  # noqa: E731
    return {
        "accuracy": float((yhat == y).mean()),
        "statistical_parity_difference": float(yhat[un].mean() - yhat[pr].mean()),
        "equal_opportunity_difference": float(tpr(un) - tpr(pr)),
        "worst_group_accuracy": float(min((yhat[(y == t) & (a == g)] == t).mean() for t in (0, 1) for g in (0, 1))),
    }


@pytest.mark.parametrize("which", ["result", "shortcut"])
def test_metrics_agree_with_the_predictions(which, request):
    r = request.getfixturevalue(which)
    for name, value in _recompute(r.predictions).items():
        assert r.metrics.values[name] == pytest.approx(value, abs=1e-9), name
    counts = {g["name"]: (g["n"], g["n_pred_positive"]) for g in r.metrics.groups}
    p = r.predictions
    for (y, a), rows in p.groupby(["y_true", "protected"]):
        assert counts[f"{TARGET}={y}, {PROTECTED}={a}"] == (len(rows), int((rows["prob"] >= 0.5).sum()))


# ------------------------------------------------------------------------------------ shortcut


def test_shortcut_model_is_caught(shortcut):
    """Predicting Male from Gray_Hair on the balanced test split: chance accuracy, maximal bias."""
    v = shortcut.metrics.values
    np.testing.assert_array_equal((shortcut.predictions["prob"] >= 0.5).astype(int), shortcut.predictions["protected"])
    assert v["accuracy"] == pytest.approx(0.5)
    assert v["statistical_parity_difference"] == pytest.approx(-1.0)
    assert v["equal_opportunity_difference"] == pytest.approx(-1.0)
    assert v["disparate_impact"] == pytest.approx(0.0)
    assert v["worst_group_accuracy"] == pytest.approx(0.0)
    assert not shortcut.metrics.in_band().inside
    explanation = shortcut.explanation
    assert explanation.as_list(1)[0][0] == PROTECTED  # the explanation names the shortcut
    assert explanation.scores[PROTECTED] > 0.3
    assert shortcut.as_dict()["importances"]["protected_rank"] == 1


def test_privileged_value_flips_the_signed_metrics(synth_data):
    model = LookupShortcut(synth_data.split("test"))
    flipped = audit(model, synth_data, target=TARGET, protected=PROTECTED, privileged_value=0,
                    n_bootstrap=0, explain_rows=10, lime_samples=50)
    assert flipped.metrics.values["statistical_parity_difference"] == pytest.approx(1.0)
    assert flipped.metrics.values["disparate_impact"] is None  # privileged group has no positive predictions
    assert "disparate_impact" in flipped.metrics.undefined
    assert flipped.as_dict()["privileged"] == f"{PROTECTED}=0"


def test_misclassified_lists_confident_errors_per_group(shortcut):
    wrong = shortcut.misclassified(per_group=3)
    # the shortcut is wrong exactly on Male=1 without gray hair and Male=0 with gray hair
    assert set(wrong) == {f"{TARGET}=1, {PROTECTED}=0", f"{TARGET}=0, {PROTECTED}=1"}
    assert all(0 < len(rows) <= 3 for rows in wrong.values())


# --------------------------------------------------------------------------------------- writing


def test_write_creates_json_html_and_csv(shortcut, tmp_path):
    out = tmp_path / "audit"
    paths = write_audit(shortcut, out)
    assert sorted(os.listdir(out)) == ["audit.html", "audit.json", "predictions.csv"]  # no temp files left
    assert paths == {"json": out / "audit.json", "html": out / "audit.html", "predictions": out / "predictions.csv"}

    saved = json.loads((out / "audit.json").read_text())
    assert saved == json.loads(json.dumps(shortcut.as_dict()))
    for key in METRIC_KEYS:
        assert key in saved

    html = (out / "audit.html").read_text()
    for group in shortcut.metrics.groups:
        assert group["name"] in html
    assert "data:image/png;base64," in html
    wrong_ids = [i for rows in shortcut.misclassified().values() for i in rows.index]
    assert wrong_ids and all(i in html for i in wrong_ids)  # the misclassified faces are shown
    assert html.count("data:image/png;base64,") >= 1 + len(wrong_ids)  # importance chart + faces

    csv = pd.read_csv(out / "predictions.csv", index_col=0)
    assert len(csv) == 24
    assert list(csv.columns) == ["path", "y_true", "protected", "prob"]
    np.testing.assert_allclose(csv["prob"], shortcut.predictions["prob"])


def test_write_with_json_path_puts_the_json_there(result, tmp_path):
    paths = write_audit(result, tmp_path / "out", json_path=tmp_path / "elsewhere" / "summary.json")
    assert paths["json"] == tmp_path / "elsewhere" / "summary.json"
    assert json.loads(paths["json"].read_text())["protected"] == PROTECTED
    assert sorted(os.listdir(tmp_path / "out")) == ["audit.html", "predictions.csv"]
    assert os.listdir(tmp_path / "elsewhere") == ["summary.json"]


def test_write_replaces_an_earlier_audit(result, tmp_path):
    write_audit(result, tmp_path)
    (tmp_path / "audit.json").write_text("old")
    write_audit(result, tmp_path)
    assert json.loads((tmp_path / "audit.json").read_text())["target"] == TARGET
    assert sorted(os.listdir(tmp_path)) == ["audit.html", "audit.json", "predictions.csv"]


# ----------------------------------------------------------------------------------- user models


def test_audit_of_a_plain_user_module(synth_data):
    r = audit(TinyUserNet(), synth_data, target=TARGET, protected=PROTECTED, n_bootstrap=0, explain_rows=10,
              lime_samples=50)
    assert r.as_dict()["manifest"]["model"] == {"class": "TinyUserNet"}
    assert len(r.predictions) == 24 and r.predictions["prob"].between(0, 1).all()
    json.dumps(r.as_dict(), allow_nan=False)


def test_audit_other_split(checkpoint_model, synth_data):
    model, _ = checkpoint_model
    r = audit(model, synth_data, target=TARGET, protected=PROTECTED, split="val", n_bootstrap=0, explain_rows=10,
              lime_samples=50)
    assert r.split == "val" and r.metrics.n == len(synth_data.split("val"))


# ---------------------------------------------------------------------------------------- errors


def test_protected_equal_to_target_is_a_config_error(checkpoint_model, synth_data):
    with pytest.raises(ConfigError, match="is the target itself"):
        audit(checkpoint_model[0], synth_data, target=TARGET, protected=TARGET, **FAST)


def test_protected_with_one_value_in_the_split_is_a_config_error(checkpoint_model, synth_data):
    table = synth_data.table.copy()
    table.loc[table["split"] == "test", "Eyeglasses"] = 0
    data = FaceDataset(synth_data.name, synth_data.root, table)
    with pytest.raises(ConfigError, match="single value 0"):
        audit(checkpoint_model[0], data, target=TARGET, protected="Eyeglasses", **FAST)


def test_unknown_protected_attribute_is_a_config_error(checkpoint_model, synth_data):
    with pytest.raises(ConfigError, match="Gray_Hair"):
        audit(checkpoint_model[0], synth_data, target=TARGET, protected="Grey_Hair", **FAST)


def test_unknown_split_is_a_config_error(checkpoint_model, synth_data):
    with pytest.raises(ConfigError, match="unknown split"):
        audit(checkpoint_model[0], synth_data, target=TARGET, protected=PROTECTED, split="holdout", **FAST)

"""`fairloop experiment`: statistics, equal budgets, the baselines' objectives, and a whole
experiment on tiny data with resume (nothing redone, added seeds add jobs)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from fairloop.errors import ConfigError
from fairloop.experiments import ExperimentConfig, ScenarioSpec, open_experiment, run_experiment
from fairloop.experiments.stats import paired, t_interval, unfairness
from fairloop.strategies.base import scale_plans
from fairloop.tools.finetune import reweighing_weights
from fairloop.vision.train import GroupDRO


def test_t_interval_matches_the_textbook():
    interval = t_interval([0.80, 0.84, 0.88])
    # mean 0.84, sd 0.04, t(0.975, 2) = 4.3027
    assert interval["mean"] == pytest.approx(0.84)
    assert interval["half_width"] == pytest.approx(4.302653 * 0.04 / math.sqrt(3), rel=1e-5)
    assert t_interval([0.5])["half_width"] is None and t_interval([])["mean"] is None


def test_paired_differences_count_wins_and_say_when_they_are_noise():
    reference = {0: 0.50, 1: 0.60, 2: 0.55}
    clear = paired("worst_group_accuracy", {0: 0.80, 1: 0.88, 2: 0.84}, reference)
    assert clear["mean"] == pytest.approx(0.29) and clear["wins"] == 3 and not clear["within_noise"]
    noisy = paired("worst_group_accuracy", {0: 0.52, 1: 0.58, 2: 0.56}, reference)
    assert noisy["within_noise"] and noisy["wins"] == 2
    # bias metrics: the distance from fair, so DI 0.9 beats DI 0.5 and EOD +0.01 beats EOD -0.3
    di = paired("disparate_impact", {0: 0.9, 1: 1.1, 2: 0.95}, {0: 0.5, 1: 0.4, 2: 0.45})
    assert di["mean"] < 0 and di["wins"] == 3
    assert unfairness("disparate_impact", 0.5) == pytest.approx(unfairness("disparate_impact", 2.0))
    eod = paired("equal_opportunity_difference", {0: 0.01}, {0: -0.3, 1: 0.2})
    assert eod["seeds"] == 1 and eod["wins"] == 1 and eod["within_noise"]  # one pair gives no interval


def test_every_image_arm_gets_exactly_the_budget():
    plans = [{"label": 1, "description": "a", "n_images": 700}, {"label": 0, "description": "b", "n_images": 300}]
    for n in (1, 7, 2000, 2001):
        scaled = scale_plans(plans, n)
        assert sum(p["n_images"] for p in scaled) == n
    assert [p["n_images"] for p in scale_plans(plans, 2000)] == [1400, 600]
    assert scale_plans([], 100) == [] and scale_plans([{**plans[0], "n_images": 0}], 100) == []


def test_reweighing_weights_are_aif360s():
    import pandas as pd
    from aif360.algorithms.preprocessing import Reweighing
    from aif360.datasets import BinaryLabelDataset

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    a = np.where(rng.random(500) < 0.9, y, 1 - y)
    frame = pd.DataFrame({"y": y, "a": a})
    data = BinaryLabelDataset(df=frame, label_names=["y"], protected_attribute_names=["a"])
    expected = Reweighing([{"a": 0}], [{"a": 1}]).fit_transform(data).instance_weights
    assert np.allclose(reweighing_weights(y * 2 + a), expected)


def test_group_dro_leans_on_the_worst_group():
    dro = GroupDRO(4, step=1.0)
    losses = torch.tensor([0.1, 0.1, 2.0, 0.1])
    groups = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        loss = dro(losses, groups)
    assert int(dro.q.argmax()) == 2 and float(dro.q.sum()) == pytest.approx(1.0)
    assert float(loss) > float(losses.mean())
    # a group absent from a batch keeps its weight relative to the others
    before = dro.q.clone()
    dro(torch.tensor([0.1, 0.1]), torch.tensor([0, 1]))
    assert float(dro.q[2] / dro.q[3]) == pytest.approx(float(before[2] / before[3]), rel=1e-5)


def test_experiment_options_are_checked():
    with pytest.raises(ConfigError, match="one seed"):
        ExperimentConfig(seeds=(0,)).validate()
    with pytest.raises(ConfigError, match="unknown arm"):
        ExperimentConfig(arms=("erm", "magic")).validate()
    with pytest.raises(ConfigError, match="reference arm"):
        ExperimentConfig(arms=("rules",)).validate()
    with pytest.raises(ConfigError, match="needs a language model"):
        ExperimentConfig(arms=("erm", "llm")).validate()
    with pytest.raises(ConfigError, match="TARGET:PROTECTED"):
        ScenarioSpec.parse("Male", synthetic=True)
    assert ScenarioSpec.parse("Young:Pale_Skin:0.9", synthetic=True).key == "Young-Pale_Skin-0.9"


ARMS = ("erm", "realft", "resampling", "reweighing", "groupdro", "dfr", "random", "manual-min", "rules", "scm-true",
        "lance", "aip")


def tiny_experiment(root, **changes) -> ExperimentConfig:
    values = dict(arms=ARMS, seeds=(0, 1), root=str(root), scenarios=(ScenarioSpec("Male", "Gray_Hair", None),),
                  generator="render", images=12, baseline_epochs=1, finetune_epochs=1, threads=1, device="cpu")
    return ExperimentConfig(**(values | changes))


def test_a_whole_experiment_on_tiny_data_and_its_resume(synth_root, synth_data, tmp_path, monkeypatch):
    import fairloop.experiments.jobs as jobs

    out = tmp_path / "exp"
    config = open_experiment(out, tiny_experiment(synth_root), resume=False)
    summary = run_experiment(config, out, log=lambda line: None)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ARMS) * 2 == summary["jobs"]
    assert {"arm", "seed", "scenario", "accuracy", "worst_group_accuracy", "disparate_impact",
            "equal_opportunity_difference", "n_generated"} <= set(rows[0])
    by_arm = {(r["arm"], r["seed"]): r for r in rows}
    for arm in ("random", "manual-min", "rules", "scm-true"):  # every image arm makes exactly the budget (render keeps all)
        assert {by_arm[(arm, s)]["n_generated"] for s in ("0", "1")} == {"12"}, arm
    assert by_arm[("erm", "0")]["n_generated"] == "0"
    results = {r["arm"]: r for r in (json.loads(p.read_text()) for p in out.glob("jobs/*/*/s0/result.json"))}
    assert results["groupdro"]["finetune"]["objective"] == "groupdro"
    assert results["dfr"]["finetune"]["mode"] == "head" and results["dfr"]["finetune"]["real_sampling"] == "balanced"
    assert results["rules"]["proposal"]["strategy"] == "rules" and results["rules"]["plans"]
    # scm-true fills the rules' groups, each image its source's counterfactual under the true model
    assert results["scm-true"]["plans"] == results["rules"]["plans"]
    manifest = json.loads((out / "jobs" / "Male-Gray_Hair" / "scm-true" / "s0" / "manifests" / "fixed.json").read_text())
    assert {m["matching"] for m in manifest["proxies"]} == {"scm"}
    # lance found the ERM model's weaknesses on validation images it drew itself, never told the protected attribute
    assert results["lance"]["discovery_images"] > 0 and results["lance"]["proposal"]["strategy"] == "lance"
    assert results["lance"]["proposal"]["diagnosis"].startswith(("Weakest edits on validation", "No edit costs"))
    # aip searched as many training images as the other arms drew, against the ERM model, and kept those that
    # flipped it while the oracle reads the true class, each labelled with its source's class
    assert results["aip"]["n_made"] == 12 and results["aip"]["proposal"]["strategy"] == "aip"
    aip = json.loads((out / "jobs" / "Male-Gray_Hair" / "aip" / "s0" / "manifests" / "fixed.json").read_text())
    assert aip["generator"] == "aip" and aip["verification"]["checked"] == 12
    assert len(aip["images"]) == aip["verification"]["passed"] == results["aip"]["n_generated"]
    sources = synth_data.table
    for row in aip["images"]:
        assert row["label"] == sources.at[row["source_id"], "Male"] == row["attributes"]["Male"] and row["moved"]
    # one ERM model per seed, shared by every arm: each arm's starting model is the same file
    erm = json.loads((out / "erm" / "Male-Gray_Hair" / "s0" / "result.json").read_text())["model"]
    assert all((out / "jobs" / "Male-Gray_Hair" / arm / "s0" / erm).is_file() for arm in ARMS)
    assert results["erm"]["metrics"] == json.loads((out / "erm" / "Male-Gray_Hair" / "s0" / "result.json")
                                                   .read_text())["metrics"]
    table = (out / "table.md").read_text()
    assert "| rules | 2 |" in table and "Paired differences against `erm`" in table
    html = (out / "report.html").read_text()
    assert "forest plot" in html and "data:image/png;base64" in html
    stored = json.loads((out / "experiment.json").read_text())
    assert stored["digest"] == config.digest() and stored["packages"]["torch"]

    # resume: nothing is redone; a third seed adds exactly its jobs
    ran = []
    original = jobs.run_job
    monkeypatch.setattr("fairloop.experiments.runner.run_job", lambda *a, **k: ran.append(a[1].key) or original(*a, **k))
    run_experiment(open_experiment(out, None, resume=True), out, log=lambda line: None)
    assert ran == []
    more = open_experiment(out, tiny_experiment(synth_root, seeds=(0, 1, 2), arms=("erm", "rules")), resume=True)
    run_experiment(more, out, log=lambda line: None)
    assert sorted(ran) == ["Male-Gray_Hair/ERM/s2", "Male-Gray_Hair/erm/s2", "Male-Gray_Hair/rules/s2"]
    with pytest.raises(ConfigError, match="other settings"):
        open_experiment(out, tiny_experiment(synth_root, images=99), resume=True)
    with pytest.raises(ConfigError, match="already holds"):
        open_experiment(out, tiny_experiment(synth_root), resume=False)


def test_a_damaged_result_is_redone_not_trusted(synth_root, tmp_path):
    out = tmp_path / "exp"
    config = open_experiment(out, tiny_experiment(synth_root, arms=("erm", "rules")), resume=False)
    run_experiment(config, out, log=lambda line: None)
    result = out / "jobs" / "Male-Gray_Hair" / "rules" / "s1" / "result.json"
    before = json.loads(result.read_text())
    result.write_text('{"job": "Male-Gray_Hair/rules/s1", "metrics": ')  # a torn write
    summary = run_experiment(config, out, log=lambda line: None)
    after = json.loads(result.read_text())
    assert summary["jobs"] == 4 and after["metrics"] == before["metrics"]  # redone, and deterministic


def test_ray_gives_the_same_results_as_in_process(synth_root, tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional [ray] extra")
    config = tiny_experiment(synth_root, arms=("erm", "groupdro", "rules"))
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_experiment(open_experiment(local, config, resume=False), local, log=lambda line: None)
    lines: list[str] = []
    run_experiment(open_experiment(remote, config, resume=False), remote, executor="ray", log=lines.append)
    assert any(line.startswith("Ray: 8 tasks") for line in lines)

    def numbers(folder):
        with open(folder / "results.csv") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert numbers(local) == numbers(remote) and len(numbers(local)) == 6
    assert json.loads((remote / "experiment.json").read_text())["executor"] == "ray"


def test_loop_protocol_runs_the_whole_loop_per_arm(synth_root, tmp_path):
    out = tmp_path / "exp"
    config = tiny_experiment(synth_root, arms=("erm", "rules"), protocol="loop", images=20, max_iterations=1)
    summary = run_experiment(open_experiment(out, config, resume=False), out, log=lambda line: None)
    rules = json.loads((out / "jobs" / "Male-Gray_Hair" / "rules" / "s0" / "result.json").read_text())
    run = out / "jobs" / "Male-Gray_Hair" / "rules" / "s0"
    assert (run / "summary.json").is_file() and (run / "report.html").is_file()  # a whole fairloop run
    assert rules["iterations"] == 1 and rules["status"] and rules["n_made"] <= 20
    assert rules["metrics"] == json.loads((run / "summary.json").read_text())["final"]
    assert {s["arm"] for s in summary["arms"]} == {"erm", "rules"}

"""The mitigation loop end to end on tiny data: summary, report, memory, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from fairloop.errors import ConfigError
from fairloop.graphs.loop import MIN_BATCH, plan_needs, run_loop, size_batch
from fairloop.runs import RunConfig, RunFolder, RunServices
from fairloop.runs.steps import MAX_MIX, second_mix
from fairloop.tools.metrics import FairBand

METRIC_KEYS = ("accuracy", "balanced_accuracy", "disparate_impact", "statistical_parity_difference",
               "equal_opportunity_difference", "average_odds_difference", "theil_index",
               "false_negative_rate_difference", "worst_group_accuracy")


@pytest.fixture(scope="module")
def tiny_checkpoint(synth_data, tmp_path_factory):
    """A tiny baseline whose predictions are not constant (a constant predictor sits inside every
    fair band, and the loop would stop at once)."""
    from fairloop.vision.models import save_checkpoint
    from fairloop.vision.train import TrainConfig, predict_proba, train_classifier

    model, _ = train_classifier(synth_data, "Male", TrainConfig(epochs=3, batch_size=16, lr=3e-3, device="cpu"))
    predictions = predict_proba(model, synth_data.split("val").images()) >= 0.5
    assert 0 < predictions.mean() < 1, "the tiny baseline predicts one class only"
    stem = tmp_path_factory.mktemp("loop-baseline") / "baseline"
    save_checkpoint(model, stem, {"arch": "smallcnn", "target": "Male", "image_size": 64})
    return stem


def tiny_config(synth_root, tiny_checkpoint, memory, **overrides) -> RunConfig:
    values = dict(root=str(synth_root), baseline=str(tiny_checkpoint), generator="render", max_iterations=2,
                  images_per_iteration=40,
                  max_images=200, finetune_epochs=1, memory=str(memory), explain_rows=30, device="cpu",
                  di_low=0.999, di_high=1.001, max_abs_diff=0.0001)  # a tiny model is never this fair
    return RunConfig(**(values | overrides)).validate()


def test_overshoot_and_band_distance():
    band = FairBand()
    before = {"disparate_impact": 0.27, "statistical_parity_difference": -0.45, "equal_opportunity_difference": -0.01,
              "average_odds_difference": -0.02}
    seed000_after = {"disparate_impact": 1.355, "statistical_parity_difference": 0.1999,
                     "equal_opportunity_difference": 0.0063, "average_odds_difference": 0.031}
    crossed = band.crossed(before, seed000_after)
    assert any("disparate_impact" in c for c in crossed) and any("statistical_parity" in c for c in crossed)
    inside = {"disparate_impact": 1.0, "statistical_parity_difference": 0.0, "equal_opportunity_difference": 0.01,
              "average_odds_difference": -0.01}
    assert not band.crossed(before, inside) and band.distance(inside) == 0
    assert band.distance(before) == pytest.approx(0.8 - 0.27 + 0.45 - 0.05)
    assert band.distance({**inside, "disparate_impact": None}) == 1.0
    # the score counts the metric furthest out: DI 0.53 below the band, not DI and SPD summed
    assert band.worst_excess(inside) == 0 and band.worst_excess(before) == pytest.approx(0.8 - 0.27)
    assert band.worst_excess({**inside, "equal_opportunity_difference": None}) == 1.0
    assert band.score({**before, "worst_group_accuracy": 0.6}) == pytest.approx(0.6 - (0.8 - 0.27))


def test_the_score_balances_eod_against_spd_and_aod():
    """The demo's seed 0 after its first repair: EOD −0.040 (the men's gap), SPD and AOD +0.019 (the
    men's and women's gaps together). A push that moves EOD 0.010 towards the band moves SPD and
    AOD 0.010 out; summed, that is a loss, by the metric furthest out a gain."""
    band = FairBand().shrunk(0.7)
    now = {"disparate_impact": 1.04, "statistical_parity_difference": 0.019, "equal_opportunity_difference": -0.040,
           "average_odds_difference": 0.019, "worst_group_accuracy": 0.85}
    pushed = {**now, "statistical_parity_difference": 0.029, "equal_opportunity_difference": -0.030,
              "average_odds_difference": 0.029}
    assert band.distance(pushed) > band.distance(now)
    assert band.score(pushed) > band.score(now)


def _sized(iteration: int, n_asked: int, before: float, after: float, *, accepted: bool = True,
           crossed: bool = False) -> dict:
    """An iteration entry as decide writes it, with DI alone outside the band (distance = 0.8 − DI)."""
    def metrics(distance: float) -> dict:
        return {"disparate_impact": 0.8 - distance, "statistical_parity_difference": 0.0,
                "equal_opportunity_difference": 0.0, "average_odds_difference": 0.0}
    return {"iteration": iteration, "n_generated": n_asked - 10, "accepted": accepted, "crossed": crossed,
            "val_before": metrics(before), "val_metrics": metrics(after),
            "analysis": {"decision": {"plans": [{"n_images": n_asked // 2}, {"n_images": n_asked - n_asked // 2}]}}}


def test_batches_are_sized_from_what_the_runs_images_bought():
    band = FairBand()
    assert size_batch([], band, 1000) == (1000, "first batch")
    n, why = size_batch([_sized(1, 1000, 0.4, 0.1)], band, 1000)  # 0.3 closed per 1,000: 0.1 left takes 334, doubled
    assert n == 667 and "0.100 is left" in why
    assert size_batch([_sized(1, 1000, 0.4, 0.38)], band, 1000)[0] == 38000  # the caller caps it by the budgets
    # the run's rate, not the last batch's: 200 more that closed 0.005 do not ask for 2 × 200 × 0.095 / 0.005
    run = [_sized(1, 1000, 0.4, 0.1), _sized(2, 200, 0.1, 0.095)]
    assert size_batch(run, band, 1000)[0] == int(np.ceil(2 * 1200 * 0.095 / 0.305))
    assert size_batch(run + [_sized(3, 400, 0.095, 0.0, crossed=True, accepted=False)], band, 1000)[0] == MIN_BATCH
    assert size_batch(run + [_sized(3, 600, 0.095, 0.0, crossed=True, accepted=False)], band, 1000)[0] == 300
    assert size_batch(run + [_sized(3, 400, 0.095, 0.09, accepted=False)], band, 1000)[0] == 800  # rolled back: twice
    assert size_batch([_sized(1, 1000, 0.4, 0.3995)], band, 1000)[0] == 2000  # too little to extrapolate from
    assert size_batch([_sized(1, 1000, 0.4, 0.01)], band, 1000)[0] == MIN_BATCH
    # an iteration that drew nothing (or an older run's entry, without val_before) is skipped
    assert size_batch([_sized(1, 1000, 0.4, 0.1), {"iteration": 2, "n_generated": 0, "accepted": False}],
                      band, 1000)[0] == 667


def test_each_plan_gets_images_for_what_its_group_lacks_on_validation():
    """The demo's seed 0 after its first repair: the men without gray hair trail the men with it by
    0.064; the women with gray hair lead the women without by 0.031, so they get no more images."""
    def group(target, protected, accuracy):
        return {"target": target, "protected": protected, "accuracy": accuracy}
    val = {"groups": [group(0, 0, 0.853), group(0, 1, 0.884), group(1, 0, 0.858), group(1, 1, 0.922)]}
    plans = [{"label": 1, "description": "a man without gray hair", "n_images": 100},
             {"label": 0, "description": "a woman with gray hair", "n_images": 100}]
    vocabulary = ["Gray_Hair", "Eyeglasses"]
    needs, why = plan_needs(plans, val, "Male", "Gray_Hair", vocabulary)
    assert needs == pytest.approx([0.064, 0.0]) and "+0.064" in why and "-0.031" in why
    # before the repair both lag (the initial model): both get images, in proportion to their gaps
    biased = {"groups": [group(0, 0, 0.996), group(0, 1, 0.609), group(1, 0, 0.553), group(1, 1, 0.989)]}
    assert plan_needs(plans, biased, "Male", "Gray_Hair", vocabulary)[0] == pytest.approx([0.436, 0.387])
    # a plan that does not name the protected attribute, or no lagging group: the strategy's proportions
    other = [plans[0], {"label": 0, "description": "a woman wearing eyeglasses", "n_images": 100}]
    assert plan_needs(other, val, "Male", "Gray_Hair", vocabulary)[0] is None
    fair = {"groups": [group(0, 0, 0.9), group(0, 1, 0.9), group(1, 0, 0.9), group(1, 1, 0.9)]}
    assert plan_needs(plans, fair, "Male", "Gray_Hair", vocabulary) == (
        None, "kept the strategy's proportions: no plan's group lags its sibling "
              "('a man without gray hair' +0.000, 'a woman with gray hair' +0.000)")


@pytest.mark.parametrize(("first_batch", "counterfactuals", "extra"), [
    (1000, ["manifests/it1.json", "manifests/it2.json"], []),   # sized batches: every accepted one mixed in again
    (0, ["manifests/it2.json"], ["manifests/it1.json"]),        # the analyzer's counts: kept ones join the real images
])
def test_finetune_reuses_accepted_counterfactuals_when_batches_are_sized(monkeypatch, first_batch, counterfactuals,
                                                                          extra):
    from types import SimpleNamespace

    from fairloop.graphs import loop

    calls = []

    def fake_finetune(services, model, manifests, kept_manifests, **kwargs):
        calls.append((manifests, kept_manifests))
        return "models/candidate", SimpleNamespace(alpha=0.5, as_dict=dict, config={"mix_ratio": kwargs["mix_ratio"]})

    monkeypatch.setattr(loop, "finetune_model", fake_finetune)
    services = SimpleNamespace(config=RunConfig(first_batch=first_batch))
    state = {"model": "models/current", "iteration": 2, "kept_manifests": ["manifests/it1.json"],
             "generated": {"manifest": "manifests/it2.json"}, "analysis": {"decision": {"mix_ratio": 0.5}}}
    loop.MitigationLoop.finetune.__wrapped__(loop.MitigationLoop(services), state)  # the node, untraced
    assert calls == [(counterfactuals, extra)]


def test_first_batch_is_checked_and_older_runs_keep_the_analyzers_counts():
    assert RunConfig().first_batch == 1000
    assert RunConfig.from_dict({"llm": "rules"}).first_batch == 0  # saved before the loop sized batches
    assert RunConfig.from_dict({"first_batch": 300}).first_batch == 300
    with pytest.raises(ConfigError, match="--first-batch -1"):
        RunConfig(first_batch=-1).validate()


def test_run_end_to_end_writes_summary_report_trace_and_memory(synth_root, tiny_checkpoint, tmp_path, monkeypatch):
    from fairloop.tools import sources

    monkeypatch.setattr(sources, "MIN_GROUP", 5)  # the tiny split has 6 gray-haired women: match their age
    config = tiny_config(synth_root, tiny_checkpoint, tmp_path / "memory")
    folder = RunFolder(tmp_path / "run")
    folder.save_config(config)
    messages: list[str] = []
    state = run_loop(RunServices(config, folder, log=messages.append))

    summary = json.loads((folder.path / "summary.json").read_text())
    assert set(METRIC_KEYS) <= set(summary["initial"]) and set(METRIC_KEYS) <= set(summary["final"])
    assert 1 <= len(summary["iterations"]) <= 2
    for it in summary["iterations"]:
        assert {"metrics", "n_generated", "mix_ratio", "accepted"} <= set(it)
        assert set(METRIC_KEYS) <= set(it["metrics"])
    assert summary["generator"]["exact_oracle"] is True
    assert summary["iterations"][0]["real_sampling"] == "uniform"  # exact renders: no rebalancing, no bolder mix
    assert summary["iterations"][0]["mix_ratio"] == summary["iterations"][0]["asked_mix_ratio"]
    # the loop, not the analyzer, sets how many: the first batch, capped here by --images-per-iteration
    analysis = summary["iterations"][0]["analysis"]
    assert analysis["budget"] == 40 and sum(p["n_images"] for p in analysis["decision"]["plans"]) == 40
    assert analysis["sizing"].startswith("first batch")
    assert summary["status"] == state["status"] != "running"
    # the final model is the last accepted candidate, or the baseline when none was accepted
    accepted = [it["model"] for it in summary["iterations"] if it["accepted"]]
    assert summary["final_model"] == (accepted[-1] if accepted else summary["initial_model"])

    report = (folder.path / "report.html").read_text()
    assert "fair band" in report and "exact oracle" in report
    assert summary["iterations"][0]["analysis"]["decision"]["diagnosis"][:60] in report
    nodes = [t["node"] for t in folder.read_trace()]
    assert nodes[:5] == ["setup", "measure", "explain", "recall", "analyze"] and nodes[-1] == "report"
    # where the time went: the steps' seconds sum to the total, in the summary and in the report
    stages = summary["stage_seconds"]
    assert list(stages)[:3] == ["setup", "measure", "explain"] and stages["generate"] > 0
    assert stages["total"] == pytest.approx(sum(v for k, v in stages.items() if k != "total"), abs=0.2)
    assert "Time per step" in report

    manifest = json.loads((folder.path / summary["iterations"][0]["manifest"]).read_text())
    assert len(manifest["images"]) == summary["iterations"][0]["n_generated"] > 0
    for row in manifest["images"]:  # every image lives inside the run folder
        assert (folder.path / row["path"]).resolve().is_relative_to(folder.path.resolve())
    # the images that fill the gray-haired women's group were matched to it on a proxy, and the report says so
    assert [m["description"] for m in manifest["proxies"]] == [p["description"] for p in
                                                              summary["iterations"][0]["analysis"]["decision"]["plans"]
                                                              if p["label"] == 0]
    assert "Matched to the groups they fill" in report

    from fairloop.memory import MemoryStore

    records = MemoryStore(tmp_path / "memory").records(run_id="run")
    assert [r.iteration for r in records] == [it["iteration"] for it in summary["iterations"]]

    # running a finished run again redoes nothing
    before = len(folder.read_trace())
    run_loop(RunServices(config, folder, log=messages.append))
    assert len(folder.read_trace()) == before


@pytest.fixture(scope="module")
def tiny_oracle_folder(tmp_path_factory):
    from fairloop.tools.quality import train_oracle

    folder = tmp_path_factory.mktemp("oracle")
    train_oracle(n=300, epochs=2, width=8, seed=0, device="cpu").save(folder)
    return folder


def test_generated_images_are_verified_and_rejects_are_not_trained_on(synth_root, tiny_checkpoint, tmp_path,
                                                                         tiny_oracle_folder, monkeypatch):
    """The embedded generator (untrained weights here) on SynthFaces: the attribute oracle checks
    every image; the manifest keeps the rejects apart, and only passing images reach fine-tuning."""
    import torch

    import fairloop.tools.quality as quality
    from fairloop.diffusion.embedded import build_unet, build_vae
    from fairloop.diffusion.training import save_generator

    torch.manual_seed(0)
    weights = tmp_path / "generator"
    save_generator(build_vae(), build_unet(), {"scaling_factor": 1.0}, weights)
    monkeypatch.setattr(quality, "PACKAGED_ORACLE", tiny_oracle_folder)
    config = tiny_config(synth_root, tiny_checkpoint, tmp_path / "memory", generator="embedded",
                         generator_model=str(weights), max_iterations=1, images_per_iteration=12)
    folder = RunFolder(tmp_path / "run")
    folder.save_config(config)
    state = run_loop(RunServices(config, folder, log=lambda m: None))

    manifest = json.loads((folder.path / "manifests" / "it1.json").read_text())
    check = manifest["verification"]
    assert manifest["generator"] == "embedded" and manifest["exact_oracle"] is False
    assert check["checked"] == len(manifest["images"]) + len(manifest["rejected"]) > 0
    assert check["passed"] == len(manifest["images"])
    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["iterations"][0]["verification"] == check
    assert summary["iterations"][0]["n_generated"] == check["passed"]
    if check["passed"] == 0:  # noise from untrained weights: nothing to fine-tune on
        assert state["status"] == "stopped: no generated image passed verification"
    assert "Attribute-oracle check" in (folder.path / "report.html").read_text()


def test_the_second_mix_is_bolder_below_the_cap_and_gentler_at_it():
    assert second_mix(0.4) == 0.6 and second_mix(0.7) == MAX_MIX == 0.9
    assert second_mix(MAX_MIX) == 0.6


def test_a_non_exact_generator_gets_group_balanced_real_images_and_a_bolder_mix(synth_root, tiny_checkpoint,
                                                                                tmp_path, monkeypatch):
    """Renders passed off as a non-exact generator's images: they are verified by the shipped oracle,
    fine-tuning draws each (target, protected) group's real images equally often, and it runs at the
    analyzer's mix ratio and at a bolder one."""
    from fairloop.generators import RenderGenerator
    from fairloop.tools import finetune as finetune_module

    monkeypatch.setattr(RenderGenerator, "exact", False)
    mixes, finetune = [], finetune_module.finetune
    monkeypatch.setattr(finetune_module, "finetune",
                        lambda *args, **kwargs: mixes.append(kwargs["config"].mix_ratio) or finetune(*args, **kwargs))
    config = tiny_config(synth_root, tiny_checkpoint, tmp_path / "memory", max_iterations=1)
    folder = RunFolder(tmp_path / "run")
    folder.save_config(config)
    run_loop(RunServices(config, folder, log=lambda m: None))

    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["iterations"][0]["verification"]["passed"] > 0
    first = summary["iterations"][0]
    assert first["real_sampling"] == "balanced"
    assert "real images drawn equally from each group" in (folder.path / "report.html").read_text()
    # it was also fine-tuned at the bolder mix, and kept whichever validation ranked higher
    assert mixes == [first["asked_mix_ratio"], second_mix(first["asked_mix_ratio"])] and first["mix_ratio"] in mixes


def test_a_second_run_takes_the_baseline_from_the_cache_only_for_the_same_data_and_settings(synth_root, tmp_path,
                                                                                           monkeypatch):
    from fairloop.runs import steps
    from fairloop.vision import train

    monkeypatch.setenv("FAIRLOOP_HOME", str(tmp_path / "home"))
    config = RunConfig(root=str(synth_root), baseline_epochs=1, device="cpu", reuse_baseline=True)
    messages: list[str] = []

    def baseline(name, **changes):
        return steps.train_baseline(RunServices(replace(config, **changes), RunFolder(tmp_path / name),
                                                log=messages.append))

    first = baseline("a")
    assert len(list(steps.baseline_cache().glob("*.safetensors"))) == 1
    trained = train.train_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(train, "train_classifier", no_training)
    assert steps.model_key(baseline("b")) == steps.model_key(first)  # the same weights, untrained
    assert any("an earlier run trained on this data" in m for m in messages)
    with pytest.raises(AssertionError, match="trained again"):  # other settings: another baseline
        baseline("c", baseline_epochs=2)
    with pytest.raises(AssertionError, match="trained again"):  # asked not to reuse
        baseline("d", reuse_baseline=False)

    monkeypatch.setattr(train, "train_classifier", trained)
    for cached in steps.baseline_cache().glob("*.safetensors"):
        cached.write_bytes(b"not a checkpoint")
    messages.clear()
    # a damaged cache is reported and trained over; training again gives the very same weights
    assert steps.model_key(baseline("e")) == steps.model_key(first)
    assert any("ignoring a cached baseline" in m for m in messages)
    assert steps.model_key(baseline("f")) == steps.model_key(first) and "earlier run" in messages[-1]


def test_second_run_recalls_the_first(synth_root, tiny_checkpoint, tmp_path):
    config = tiny_config(synth_root, tiny_checkpoint, tmp_path / "memory", max_iterations=1)
    for name in ("first", "second"):
        folder = RunFolder(tmp_path / name)
        folder.save_config(config)
        state = run_loop(RunServices(config, folder, log=lambda m: None))
    assert state["recalled"] and "first" in state["recalled"][0]
    assert "Similar past iterations" in state["iterations"][0]["analysis"]["prompt"] or \
        state["iterations"][0]["analysis"]["backend"] == "rules"


def test_run_killed_in_its_second_iteration_resumes_without_redoing_the_first(synth_root, biased_checkpoint, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "FAIRLOOP_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    base = [sys.executable, "-m", "fairloop.cli", "run"]
    args = ["--root", str(synth_root), "--baseline", str(biased_checkpoint), "--max-iterations", "2",
            "--max-images", "400", "--out", str(run), "--device", "cpu", "--fair-band", "0.999,1.001,0.0001", "--llm", "rules",
            "--generator", "render", "--first-batch", "100"]  # what is tested is the resume, not the drawing: the embedded default took ~140 s
    errors = tmp_path / "stderr.txt"  # a file, not a pipe: progress lines must never fill a buffer and block the run
    with open(errors, "wb") as sink:
        proc = subprocess.Popen(base + args, env=env, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    trace = run / "trace.jsonl"
    deadline = time.time() + 240
    killed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if trace.exists() and any(json.loads(line)["iteration"] == 2 for line in trace.read_text().splitlines()):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and not killed:  # a run too slow for the deadline must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if not killed:
        pytest.fail("the run ended before its second iteration: " + errors.read_text()[-2000:])

    done_before = [(t["node"], t["iteration"]) for t in RunFolder(run).read_trace()]
    assert ("finetune", 1) in done_before and not (run / "summary.json").exists()

    resumed = subprocess.run(base + ["--resume", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trace_after = [(t["node"], t["iteration"]) for t in RunFolder(run).read_trace()]
    assert trace_after.count(("finetune", 1)) == 1 and trace_after.count(("setup", 0)) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]][0] == 1
    assert summary["status"] != "running"


def test_run_with_an_openai_compatible_endpoint_reports_the_answer_verbatim(synth_root, tiny_checkpoint, tmp_path,
                                                                              monkeypatch):
    from chat_stub import Stub

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    key = "sk-test-" + "k" * 32
    monkeypatch.setenv("OPENAI_API_KEY", key)
    answer = json.dumps({
        "diagnosis": "Gray hair stands in for Male (stub analysis 7731).", "counterfactuals_needed": True,
        "shortcut_attributes": ["Gray_Hair"], "change_attributes": ["Gray_Hair"],
        "plans": [{"label": 1, "description": "a man without gray hair", "n_images": 12},
                  {"label": 0, "description": "a woman with gray hair", "n_images": 12}],
        "negative_prompt": "blurry", "mix_ratio": 0.3})
    with Stub([answer]) as stub:
        config = tiny_config(synth_root, tiny_checkpoint, tmp_path / "memory", max_iterations=1, llm="openai",
                             llm_model="stub-model", llm_base_url=stub.url, first_batch=0)  # its counts, as asked
        folder = RunFolder(tmp_path / "run")
        folder.save_config(config)
        run_loop(RunServices(config, folder, log=lambda m: None))
    assert stub.requests and stub.requests[0]["headers"]["authorization"] == f"Bearer {key}"
    summary = json.loads((folder.path / "summary.json").read_text())
    analysis = summary["iterations"][0]["analysis"]
    assert analysis["backend"] == "openai" and not analysis["fell_back"] and analysis["raw"] == [answer]
    assert summary["iterations"][0]["n_generated"] == 24
    report = (folder.path / "report.html").read_text()
    assert "stub analysis 7731" in report and "a woman with gray hair" in report
    for path in folder.path.rglob("*"):  # the key reaches no file of the run: state, trace, report, summary
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------ decide: gains beyond the noise


class _Split:
    """A validation split of 450 rows per (Male, Gray_Hair) group, as the demo's."""

    def __init__(self) -> None:
        self.y = np.repeat([0, 0, 1, 1], 450)
        self.a = np.tile(np.repeat([0, 1], 450), 2)

    def __len__(self) -> int:
        return len(self.y)

    def labels(self, name: str) -> np.ndarray:
        return {"Male": self.y, "Gray_Hair": self.a}[name]


def _predictions(split: _Split, correct: dict[tuple[int, int], range]) -> np.ndarray:
    """Predictions right on the rows ``correct`` names in each (y, a) group (by position in it), wrong elsewhere."""
    pred = 1 - split.y
    for (y, a), rows in correct.items():
        where = np.flatnonzero((split.y == y) & (split.a == a))
        pred[where[list(rows)]] = y
    return pred


def _decide(tmp_path, monkeypatch, current: np.ndarray, candidate: np.ndarray, *, on_disk: bool = True) -> dict:
    """One decide of iteration 2 between two models' validation predictions."""
    from types import SimpleNamespace

    from fairloop.graphs.loop import MitigationLoop
    from fairloop.tools.metrics import fairness_report

    split = _Split()
    folder = RunFolder(tmp_path / "run")
    config = RunConfig(root=str(tmp_path), memory=str(tmp_path / "memory"), max_iterations=3)
    services = SimpleNamespace(config=config, folder=folder, log=lambda line: None,
                               dataset=SimpleNamespace(split=lambda name: split))
    monkeypatch.setattr(MitigationLoop, "_remember", lambda *args: None)
    metrics = {}
    for name, pred in (("cur", current), ("cand", candidate)):
        metrics[name] = fairness_report(y_true=split.y, y_pred=pred, protected=split.a, privileged_value=1,
                                        target_name="Male", protected_name="Gray_Hair", n_bootstrap=0).as_dict()
        if on_disk:
            np.save(folder.path / "evals" / f"{name}.val.npy", pred.astype(np.float32))
    state = {"iteration": 2, "model": "models/cur.safetensors", "images_used": 1200, "no_gain": 0, "iterations": [],
             "kept_manifests": ["manifests/it1.json"], "analysis": {"decision": {"mix_ratio": 0.6, "diagnosis": "d"}},
             "initial": {"val": metrics["cur"]}, "current": {"val": metrics["cur"], "test": metrics["cur"]},
             "generated": {"n": 200, "manifest": "manifests/it2.json", "verification": None, "iteration": 2},
             "candidate": {"iteration": 2, "model": "models/cand.safetensors", "alpha": 0.3, "finetune": {"config": {}},
                           "eval": {"val": metrics["cand"], "test": metrics["cand"]}}}
    return MitigationLoop(services).decide(state)


# the demo's seed 0 after its first repair: inside the fair band (EOD −0.040, SPD and AOD +0.019), not its target
REPAIRED = {(0, 0): range(391), (0, 1): range(426), (1, 0): range(381), (1, 1): range(399)}


def test_a_gain_validation_cannot_tell_from_noise_is_rolled_back_and_the_run_stops(tmp_path, monkeypatch):
    split = _Split()
    current = _predictions(split, REPAIRED)
    # the trailing group (men without gray hair): 6 rows fixed, 4 others broken; +0.009 of score
    noisy = _predictions(split, REPAIRED | {(1, 0): range(4, 387)})
    update = _decide(tmp_path, monkeypatch, current, noisy)
    entry = update["iterations"][-1]
    assert not entry["accepted"] and entry["gain_confidence"] < 0.9
    assert entry["reason"].startswith("rolled back: a gain within validation's noise")
    assert update["status"].startswith("fair within the noise") and update["no_gain"] == 1


def test_a_clear_gain_is_accepted_and_without_predictions_on_disk_the_point_gain_decides(tmp_path, monkeypatch):
    split = _Split()
    current = _predictions(split, REPAIRED)
    # 18 more men and 30 more women without gray hair right: every metric inside the target band
    clear = _predictions(split, REPAIRED | {(1, 0): range(399), (0, 0): range(421)})
    update = _decide(tmp_path / "a", monkeypatch, current, clear)
    assert update["iterations"][-1]["accepted"] and update["iterations"][-1]["gain_confidence"] >= 0.95
    assert update["status"].startswith("fair:") and update["model"] == "models/cand.safetensors"
    # the men's 18 alone: EOD in, SPD and AOD out as far, so the score's furthest metric changes and
    # its gain (+0.023) is one validation cannot tell from noise
    men_only = _predictions(split, REPAIRED | {(1, 0): range(399)})
    assert not _decide(tmp_path / "c", monkeypatch, current, men_only)["iterations"][-1]["accepted"]
    noisy = _predictions(split, REPAIRED | {(1, 0): range(4, 387)})
    update = _decide(tmp_path / "b", monkeypatch, current, noisy, on_disk=False)  # an older run folder
    assert update["iterations"][-1]["accepted"] and update["iterations"][-1]["gain_confidence"] is None


def test_validation_predictions_of_the_wrong_length_are_refused_with_a_fix(tmp_path):
    from types import SimpleNamespace

    from fairloop.errors import DataError
    from fairloop.runs.steps import eval_file, explain_model, val_predictions

    split = _Split()
    services = SimpleNamespace(folder=RunFolder(tmp_path / "run"), config=RunConfig(root=str(tmp_path)),
                               dataset=SimpleNamespace(split=lambda name: split))
    eval_file(services, "models/m.safetensors", "metrics.json").write_text("{}")
    np.save(eval_file(services, "models/m.safetensors", "val.npy"), np.zeros(10, np.float32))  # not 1,800 rows
    assert val_predictions(services, "models/m.safetensors") is None
    with pytest.raises(DataError, match="one prediction per validation row") as error:
        explain_model(services, "models/m.safetensors")
    assert "m.val.npy" in error.value.fix

"""The ``fairloop`` command line: help, the data → train → audit path, and readable errors.

Happy paths run in-process with typer's CliRunner. Error paths run the real entry point in a
subprocess, because what matters there is what a user sees: exit code 2, an "error:" line and a
"fix:" line, and no traceback. The error runs are started together (each pays a torch import).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairloop.cli import app

METRIC_KEYS = ("accuracy", "balanced_accuracy", "disparate_impact", "statistical_parity_difference",
               "equal_opportunity_difference", "average_odds_difference", "theil_index",
               "false_negative_rate_difference", "worst_group_accuracy")
ENV = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def run_fairloop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairloop.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=120)


# ------------------------------------------------------------------------------------------- help


def test_help_lists_the_commands():
    result = invoke("--help")
    for command in ("data", "train", "audit"):
        assert command in result.output
    assert "synth" in invoke("data", "--help").output


def test_importing_the_cli_stays_light():
    code = ("import sys, fairloop.cli; "
            "print(','.join(m for m in ('torch', 'torchvision', 'aif360', 'lime', 'pandas', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------ data, train, audit


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """``data synth`` → ``train`` → ``audit`` with tiny settings, run once for the module."""
    base = tmp_path_factory.mktemp("cli")
    data, model, out = base / "D", base / "M", base / "O"
    invoke("data", "synth", "--out", data, "--n", "120")
    invoke("train", "--root", data, "--target", "Male", "--out", model, "--epochs", "1", "--device", "cpu")
    audited = invoke("audit", "--root", data, "--target", "Male", "--protected", "Gray_Hair", "--model", model,
                     "--out", out, "--bootstrap", "20", "--explain-rows", "30", "--device", "cpu")
    return {"data": data, "model": model, "out": out, "audit_output": audited.output}


def test_data_synth_writes_the_celeba_layout(pipeline):
    data = pipeline["data"]
    images = sorted(os.listdir(data / "img_align_celeba"))
    assert len(images) == 120 and images[0] == "000001.jpg"
    lines = (data / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "120"
    assert "Male" in lines[1].split() and "Gray_Hair" in lines[1].split()
    assert len(lines) == 122
    partition = (data / "list_eval_partition.txt").read_text().split()
    assert set(partition[1::2]) == {"0", "1", "2"}
    assert json.loads((data / "synthfaces.json").read_text())["n"] == 120
    assert not [name for name in os.listdir(data.parent) if name.startswith(".")]  # no temp folder left


def test_data_synth_picks_the_cue_style_that_makes_the_target_subtle(tmp_path):
    young = invoke("data", "synth", "--out", tmp_path / "y", "--n", "40", "--target", "Young", "--spurious", "Pale_Skin")
    assert json.loads((tmp_path / "y" / "synthfaces.json").read_text())["cues"] == "subtle"
    assert "subtle cues" in young.output
    invoke("data", "synth", "--out", tmp_path / "s", "--n", "40", "--target", "Young", "--cues", "salient")
    assert json.loads((tmp_path / "s" / "synthfaces.json").read_text())["cues"] == "salient"


def test_data_synth_extra_val_grows_only_the_validation_split(tmp_path):
    invoke("data", "synth", "--out", tmp_path / "big", "--n", "40", "--extra-val", "8")
    from fairloop.data.datasets import load_dataset

    data = load_dataset("celeba", tmp_path / "big")
    assert {s: len(data.split(s)) for s in ("train", "val", "test")} == {"train": 28, "val": 14, "test": 6}
    assert json.loads((tmp_path / "big" / "synthfaces.json").read_text())["extra_val"] == 8


def test_train_writes_weights_and_sidecar(pipeline):
    model = pipeline["model"]
    weights, sidecar = model.with_name("M.safetensors"), model.with_name("M.json")
    assert weights.is_file() and sidecar.is_file()
    meta = json.loads(sidecar.read_text())
    assert meta["arch"] == "smallcnn" and meta["target"] == "Male"
    assert len(meta["history"]["epochs"]) == 1


def test_audit_writes_report_with_metric_keys(pipeline):
    out = pipeline["out"]
    assert sorted(os.listdir(out)) == ["audit.html", "audit.json", "predictions.csv"]
    summary = json.loads((out / "audit.json").read_text())
    for key in METRIC_KEYS:
        assert key in summary
    assert summary["target"] == "Male" and summary["protected"] == "Gray_Hair"
    assert summary["importances"]["n_explained"] == min(30, summary["n"])
    assert summary["manifest"]["model"]["arch"] == "smallcnn"
    assert "fair band" in pipeline["audit_output"]


def test_audit_json_option_writes_there(pipeline, tmp_path):
    target = tmp_path / "summary" / "P.json"
    invoke("audit", "--root", pipeline["data"], "--target", "Male", "--protected", "Gray_Hair",
           "--model", pipeline["model"], "--out", tmp_path / "O2", "--json", target, "--bootstrap", "0",
           "--explain-rows", "10", "--device", "cpu")
    summary = json.loads(target.read_text())
    assert all(key in summary for key in METRIC_KEYS)
    assert sorted(os.listdir(tmp_path / "O2")) == ["audit.html", "predictions.csv"]


def test_audit_without_model_trains_a_baseline_first(pipeline, tmp_path):
    out = tmp_path / "O3"
    invoke("audit", "--root", pipeline["data"], "--target", "Male", "--protected", "Gray_Hair", "--out", out,
           "--epochs", "1", "--bootstrap", "0", "--explain-rows", "10", "--device", "cpu")
    assert json.loads((out / "model.json").read_text())["target"] == "Male"
    assert (out / "model.safetensors").is_file() and (out / "audit.json").is_file()


def test_experiment_command_prints_the_table_and_resumes(synth_root, tmp_path):
    out = tmp_path / "exp"
    common = ["--root", synth_root, "--llm", "rules", "--seeds", "0,1", "--images", "8", "--baseline-epochs", "1",
              "--finetune-epochs", "1", "--threads", "1", "--device", "cpu"]
    first = invoke("experiment", "--out", out, "--arms", "erm,manual-min", *common)
    assert "| manual-min | 2 |" in first.output and "Paired differences against `erm`" in first.output
    assert (out / "report.html").is_file() and (out / "results.csv").read_text().count("\n") == 5
    again = invoke("experiment", "--resume", out, "--arms", "erm,manual-min,dfr")
    assert "8 jobs (2 shared ERM models, 6 arm jobs), 6 already done" in again.output and "| dfr | 2 |" in again.output


# ------------------------------------------------------------------------------------------ errors


def _csv_dataset(folder: Path, source: Path, columns: dict[str, list[int]]) -> Path:
    """A --dataset csv folder: 20 SynthFaces images and a table with the given 0/1 columns."""
    folder.mkdir()
    names = sorted(os.listdir(source / "img_align_celeba"))[:20]
    for name in names:
        shutil.copy(source / "img_align_celeba" / name, folder / name)
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    header = ["image", "split", *columns]
    rows = [",".join([name, split, *(str(values[i]) for values in columns.values())])
            for i, (name, split) in enumerate(zip(names, splits))]
    (folder / "attributes.csv").write_text("\n".join([",".join(header), *rows]) + "\n")
    return folder


@pytest.fixture(scope="module")
def bad_cases(synth_root, tiny_checkpoint, tmp_path_factory) -> dict[str, list]:
    """Command lines for every bad-input case; each writes to its own --out."""
    base = tmp_path_factory.mktemp("bad")
    alternating = [i % 2 for i in range(20)]
    constant = _csv_dataset(base / "constant", synth_root, {"Male": alternating, "Gray_Hair": [0] * 20})
    no_target = _csv_dataset(base / "no_target", synth_root, {"Young": alternating, "Gray_Hair": alternating[::-1]})
    (base / "empty").mkdir()
    images_only = base / "images_only"
    images_only.mkdir()
    for name in sorted(os.listdir(synth_root / "img_align_celeba"))[:5]:
        shutil.copy(synth_root / "img_align_celeba" / name, images_only / name)
    corrupt = base / "corrupt"
    shutil.copytree(synth_root, corrupt)
    partition = (corrupt / "list_eval_partition.txt").read_text().split()
    first_test = next(name for name, code in zip(partition[::2], partition[1::2]) if code == "2")
    (corrupt / "img_align_celeba" / first_test).write_bytes(b"\x00 this is not a JPEG " * 10)

    a_file = base / "a_file"
    a_file.write_text("not a folder")
    audit = ["audit", "--target", "Male", "--protected", "Gray_Hair", "--model", tiny_checkpoint,
             "--bootstrap", "0", "--explain-rows", "10", "--device", "cpu"]
    return {
        "unknown_target": ["audit", "--root", synth_root, "--target", "Mal", "--protected", "Gray_Hair",
                           "--model", tiny_checkpoint, "--out", base / "o1"],
        "constant_protected": [*audit, "--root", constant, "--dataset", "csv", "--out", base / "o2"],
        "missing_folder": [*audit, "--root", base / "does_not_exist", "--out", base / "o3"],
        "empty_folder": [*audit, "--root", base / "empty", "--out", base / "o4"],
        "wrong_format": [*audit, "--root", images_only, "--dataset", "celeba", "--out", base / "o5"],
        "corrupt_image": [*audit, "--root", corrupt, "--out", base / "o6"],
        "csv_without_target": [*audit, "--root", no_target, "--dataset", "csv", "--out", base / "o7"],
        "privileged_3": [*audit, "--root", synth_root, "--privileged", "3", "--out", base / "o8"],
        "other_target": ["audit", "--root", synth_root, "--target", "Young", "--protected", "Gray_Hair",
                         "--model", tiny_checkpoint, "--device", "cpu", "--out", base / "o9"],
        "train_unknown_target": ["train", "--root", synth_root, "--target", "Mal", "--out", base / "m",
                                 "--device", "cpu"],
        "experiment_one_seed": ["experiment", "--out", base / "e1", "--seeds", "0", "--llm", "rules"],
        "experiment_unknown_arm": ["experiment", "--out", base / "e2", "--arms", "erm,oracle", "--llm", "rules"],
        "experiment_no_folder": ["experiment", "--llm", "rules"],
        "experiment_resume_nothing": ["experiment", "--resume", base / "e3"],
        "experiment_llm_without_model": ["experiment", "--out", base / "e4", "--arms", "erm,llm", "--llm", "rules"],
        "run_manual_without_prompts": ["run", "--root", synth_root, "--strategy", "manual", "--llm", "rules",
                                       "--out", base / "r1"],
        "train_image_size_3": ["train", "--root", synth_root, "--target", "Male", "--out", base / "m3",
                               "--image-size", "3", "--device", "cpu"],
        "train_workers_negative": ["train", "--root", synth_root, "--target", "Male", "--out", base / "m4",
                                   "--workers", "-1", "--device", "cpu"],
        "generate_too_many": ["generate", "a woman with gray hair", "-n", "100000", "--generator", "render",
                              "--out", base / "g1"],
        "audit_out_is_a_file": [*audit, "--root", synth_root, "--out", a_file],
        "train_out_under_a_file": ["train", "--root", synth_root, "--target", "Male", "--out", a_file / "model",
                                   "--device", "cpu"],
        "synth_out_is_a_file": ["data", "synth", "--out", a_file, "--n", "200"],
        "synth_unknown_cues": ["data", "synth", "--out", base / "s2", "--n", "40", "--cues", "faint"],
        "synth_negative_extra_val": ["data", "synth", "--out", base / "s3", "--n", "40", "--extra-val", "-3"],
        "generate_out_under_a_file": ["generate", "a woman", "-n", "2", "--generator", "render",
                                      "--out", a_file / "g"],
        "run_out_is_a_file": ["run", "--root", synth_root, "--llm", "rules", "--out", a_file],
        "experiment_out_is_a_file": ["experiment", "--out", a_file, "--llm", "rules"],
        "chat_export_to_a_folder": ["chat", "--thread", "no-such-thread", "--export", base],
        "generator_work_is_a_file": ["generator", "train", "--work", a_file, "--out", base / "gen"],
        "generator_out_is_a_file": ["generator", "train", "--work", base / "work", "--out", a_file],
        "oracle_out_is_a_file": ["generator", "train-oracle", "--out", a_file, "--n", "100"],
        "aip_unknown_method": ["aip", "--root", synth_root, "--target", "Male", "--model", tiny_checkpoint,
                               "--methods", "aip,cadex", "--out", base / "a1"],
        "aip_exact_in_flip_mode": ["aip", "--root", synth_root, "--target", "Male", "--model", tiny_checkpoint,
                                   "--methods", "aip,exact", "--out", base / "a2"],
        "aip_generator_missing": ["aip", "--root", synth_root, "--target", "Male", "--model", tiny_checkpoint,
                                  "--generator", base / "no_generator", "--out", base / "a3"],
        "aip_work_is_a_file": ["generator", "train-aip", "--work", a_file],
        "distil_no_steps": ["generator", "distil", "--work", base / "dw", "--out", base / "dg", "--steps", "0"],
        "distil_out_is_a_file": ["generator", "distil", "--work", base / "dw", "--out", a_file],
        "_corrupt_image": first_test,
    }


EXPECTED = {
    "unknown_target": ["unknown target attribute 'Mal'", "did you mean Male"],
    "constant_protected": ["protected attribute 'Gray_Hair' has the single value 0"],
    "missing_folder": ["does_not_exist does not exist", "fairloop data synth"],
    "empty_folder": ["list_attr_celeba.txt is missing"],
    "wrong_format": ["is not a CelebA folder", "--dataset csv"],
    "corrupt_image": ["is corrupt or not an image"],
    "csv_without_target": ["unknown target attribute 'Male'"],
    "privileged_3": ["--privileged 3", "use 0 or 1"],
    "other_target": ["was trained for 'Male'", "--target Male"],
    "train_unknown_target": ["unknown target attribute 'Mal'", "did you mean Male"],
    "experiment_one_seed": ["one seed gives no confidence interval", "--seeds 0,1,2"],
    "experiment_unknown_arm": ["unknown arm 'oracle'", "groupdro"],
    "experiment_no_folder": ["say where the experiment goes", "--out EXP"],
    "experiment_resume_nothing": ["not a fairloop experiment folder"],
    "experiment_llm_without_model": ["the llm strategy needs a language model", "--llm local"],
    "run_manual_without_prompts": ["the manual strategy needs the descriptions", "--prompts FILE"],
    "train_image_size_3": ["--image-size 3 leaves the network nothing to see", "--image-size 8 or more"],
    "train_workers_negative": ["--workers -1 is not a number of processes"],
    "generate_too_many": ["-n 100000 is not a number of images", "another --seed"],
    "audit_out_is_a_file": ["a_file is a file, not a folder"],
    "train_out_under_a_file": ["lies under", "a_file, which is a file"],
    "synth_out_is_a_file": ["a_file is a file, not a folder"],
    "synth_unknown_cues": ["unknown SynthFaces cue style 'faint'", "salient, subtle"],
    "synth_negative_extra_val": ["--extra-val -3 is not a number of images", "--extra-val 7200"],
    "generate_out_under_a_file": ["lies under"],
    "run_out_is_a_file": ["a_file is a file, not a folder"],
    "experiment_out_is_a_file": ["a_file is a file, not a folder"],
    "chat_export_to_a_folder": ["is a folder, not a file", "--export a file path"],
    "generator_work_is_a_file": ["--work", "a_file is a file, not a folder"],
    "generator_out_is_a_file": ["--out", "a_file is a file, not a folder"],
    "oracle_out_is_a_file": ["a_file is a file, not a folder"],
    "aip_unknown_method": ["unknown method cadex", "xgems"],
    "aip_exact_in_flip_mode": ["keep-label baseline", "--mode keep-label"],
    "aip_generator_missing": ["no AIP generator in", "fairloop generator train-aip"],
    "aip_work_is_a_file": ["--work", "a_file is a file, not a folder"],
    "distil_no_steps": ["--steps 0 leave nothing to distil on", "--steps 1 or more"],
    "distil_out_is_a_file": ["a_file is a file, not a folder"],
}
#: Run through a real ``python -m fairloop.cli`` process as well; each costs a torch import, so the
#: other cases run through the same ``main()`` in this process.
SUBPROCESS_CASES = ("unknown_target", "corrupt_image", "other_target")


def _assert_clear_error(case: str, code, stdout: str, stderr: str) -> None:
    output = stdout + stderr
    assert code == 2, output
    assert "Traceback" not in output
    lines = stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines), output
    assert any(line.startswith("fix: ") for line in lines), output
    flat = " ".join(stderr.split())
    for fragment in EXPECTED[case]:
        assert fragment in flat, f"{fragment!r} not in:\n{stderr}"


def run_main(monkeypatch, capsys, args) -> tuple[object, str, str]:
    """``fairloop ARGS`` through the console-script entry point, in this process."""
    from fairloop.cli import main

    monkeypatch.setattr(sys, "argv", ["fairloop", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("case", EXPECTED)
def test_bad_input_gets_a_clear_error(bad_cases, case, monkeypatch, capsys):
    _assert_clear_error(case, *run_main(monkeypatch, capsys, bad_cases[case]))


@pytest.fixture(scope="module")
def subprocess_runs(bad_cases) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = pool.map(lambda case: run_fairloop(*bad_cases[case]), SUBPROCESS_CASES)
        return dict(zip(SUBPROCESS_CASES, runs))


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_gets_a_clear_error_from_the_real_command(subprocess_runs, case):
    run = subprocess_runs[case]
    _assert_clear_error(case, run.returncode, run.stdout, run.stderr)


def test_corrupt_image_error_names_the_file(bad_cases, monkeypatch, capsys):
    _, _, err = run_main(monkeypatch, capsys, bad_cases["corrupt_image"])
    assert bad_cases["_corrupt_image"] in err


def test_failed_audits_leave_no_report(bad_cases, monkeypatch, capsys):
    for case, args in bad_cases.items():
        if case.startswith("_") or args[0] != "audit":
            continue
        run_main(monkeypatch, capsys, args)
        out = Path(args[args.index("--out") + 1])
        assert not (out / "audit.json").exists(), case


def test_cuda_without_a_gpu_is_a_clear_error(synth_root, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_main(monkeypatch, capsys, ["train", "--root", synth_root, "--target", "Male",
                                                    "--out", tmp_path / "m", "--epochs", "1", "--device", "cuda"])
    assert code == 2 and "Traceback" not in out + err
    assert "error:" in err and "no CUDA GPU" in " ".join(err.split())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "expected"),
    [(["--generator", "dalle"], "unknown --generator"), (["--generator", "sd"], "needs a Stable Diffusion checkpoint"),
     (["--generator", "sd", "--generator-model", "/no/such/sd"], "neither an existing folder"),
     (["--generator", "embedded", "--generator-model", "/no/such/weights"], "no embedded generator"),
     (["--protected", "Gray_hair"], "did you mean Gray_Hair"),
     (["--llm", "openai"], "needs a model name"), (["--fair-band", "0.9,0.95,0.05"], "perfect fairness"),
     (["--finetune-epochs", "0"], "trains nothing")],
)
def test_bad_run_options_fail_before_a_run_folder_exists(synth_root, tmp_path, monkeypatch, capsys, option, expected):
    out = tmp_path / "run"
    code, stdout, stderr = run_main(monkeypatch, capsys, ["run", "--root", synth_root, "--out", out, *option])
    assert code == 2 and expected in stderr and "fix:" in stderr and "Traceback" not in stdout + stderr
    assert not out.exists()


def test_the_default_generator_warns_on_photos_that_are_not_synthfaces(synth_root, tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(synth_root, photos)
    (photos / "list_identity_synthfaces.txt").unlink()  # a CelebA-layout folder of other faces
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # stops the command right after its checks
    code, _, stderr = run_main(monkeypatch, capsys, ["run", "--root", photos, "--out", out, "--llm", "rules"])
    assert code == 2 and "already holds a run" in stderr
    assert "embedded generator draws 64×64 SynthFaces-like faces" in stderr and "--generator sd" in stderr


def test_resume_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_main(monkeypatch, capsys, ["run", "--resume", tmp_path])
    assert code == 2 and "not a fairloop run folder" in stderr


@pytest.mark.parametrize("strategy", ["random", "scm-true", "lance", "aip"])
def test_run_with_a_strategy_prints_it_and_its_progress_lines_whole(strategy, synth_root, biased_checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    checkpoint = biased_checkpoint
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)   # --discover writes its report under runs/
    code, stdout, stderr = run_main(monkeypatch, capsys, [
        "run", "--root", synth_root, "--baseline", checkpoint, "--generator", "render", "--strategy", strategy,
        "--llm", "rules", "--max-iterations", "1", "--max-images", "20", "--finetune-epochs", "1", "--out", out,
        "--fair-band", "0.999,1.001,0.0001", "--memory", tmp_path / "memory", "--device", "cpu",
        *(["--discover"] if strategy == "lance" else [])])
    assert code is None or code == 0, stderr
    if strategy == "lance":  # no --protected: the baseline's worst weakness is what the run repairs
        protected = json.loads((out / "config.json").read_text())["protected"]
        assert f"--discover: {protected} is the worst weakness" in stderr
        assert list((tmp_path / "runs").glob("weaknesses-*/weaknesses.html"))
    assert f"strategy: {strategy}" in stderr and "[iteration 1] analyze …" in stderr  # "[…]" is text, not markup
    # not a terminal: progress comes as lines with an ETA, and the run keeps them in run.log
    progress = [line for line in stderr.splitlines() if " elapsed, eta " in line]
    assert progress and progress[-1].endswith("eta 0:00")
    log = (out / "run.log").read_text()
    assert "[iteration 1] analyze …" in log and " elapsed, eta " in log
    summary = json.loads((out / "summary.json").read_text())
    assert all(it["analysis"]["strategy"] == strategy for it in summary["iterations"])
    if strategy == "scm-true":  # every image its source's counterfactual, said in the log and the report
        assert summary["iterations"][0]["analysis"]["scm"] == {"graph": "true"}
        assert "by abduction–action–prediction" in stderr
        report = (out / "report.html").read_text()
        assert "counterfactual under do(Gray_Hair=" in report and "SynthFaces&#39; true causal graph" in report
    if strategy == "aip":  # searched against the run's model, whatever --generator says
        manifest = json.loads((out / "manifests" / "it1.json").read_text())
        assert manifest["generator"] == "aip" and manifest["verification"]["checked"] == 20
        assert "searches flipped the model" in stderr and "aip search" in stderr

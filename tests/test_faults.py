"""Real faults on a real ``fairloop run`` in a subprocess: SIGKILL after each node of the loop, Ctrl-C,
and a second process on the same folder. A resumed run must end with the summary an uninterrupted
run writes (timings aside), and must not redo a node whose checkpoint was written.

Killing after every node is the slow tier (two tiny runs per node); the fast tier keeps Ctrl-C and
the concurrent process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairloop.runs import RunFolder

#: Every node of a one-iteration run, in order.
NODES = ("setup", "measure", "explain", "recall", "analyze", "generate", "finetune", "evaluate", "decide", "report")
VOLATILE = ("seconds", "time", "created", "started", "finished", "wall")


def command(synth_root, checkpoint, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fairloop.cli", "run", "--root", str(synth_root), "--baseline", str(checkpoint),
            "--max-iterations", "1", "--max-images", "40", "--generator", "render", "--out", str(out), "--device", "cpu",
            "--fair-band", "0.999,1.001,0.0001", "--llm", "rules", *extra]


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "FAIRLOOP_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def comparable(value, run: Path):
    """A summary without timings and with the run's own path replaced, for comparing two runs."""
    if isinstance(value, dict):
        return {k: comparable(v, run) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [comparable(v, run) for v in value]
    return value.replace(str(run), "RUN") if isinstance(value, str) else value


def start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=environment(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # pytest's Ray tests leave SIGINT ignored, and children inherit that


def wait_for_node(proc: subprocess.Popen, run: Path, node: str, timeout: float = 240) -> None:
    """Return as soon as ``node``'s trace line is written (its checkpoint may or may not be)."""
    trace, deadline = run / "trace.jsonl", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if trace.exists() and any(json.loads(line)["node"] == node for line in trace.read_text().splitlines()):
            return
        time.sleep(0.02)
    if proc.poll() is None:  # a stalled run must not outlive the test
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the run ended or stalled before {node}: " + (proc.stderr.read() or "")[-2000:])


def redone(run: Path, before: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Steps finished before the resume that the resumed run ran again (the trace keeps every line)."""
    lines = [(t["node"], t["iteration"]) for t in (json.loads(x) for x in (run / "trace.jsonl").read_text().splitlines())]
    return [step for step in before if lines.count(step) > 1]


@pytest.fixture(scope="module")
def reference(synth_root, biased_checkpoint, tmp_path_factory):
    """The summary of an uninterrupted run."""
    base = tmp_path_factory.mktemp("reference")
    run = base / "run"
    done = subprocess.run(command(synth_root, biased_checkpoint, run), env=environment(base / "home"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return comparable(json.loads((run / "summary.json").read_text()), run)


def resume_and_compare(run: Path, home: Path, reference) -> list[tuple[str, int]]:
    """Resume ``run``; check its summary against the reference; the trace before the resume."""
    before = [(t["node"], t["iteration"]) for t in RunFolder(run).read_trace()]
    resumed = subprocess.run([sys.executable, "-m", "fairloop.cli", "run", "--resume", str(run)], env=environment(home),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(json.loads((run / "summary.json").read_text()), run) == reference
    return before


@pytest.mark.slow
@pytest.mark.parametrize("node", NODES[:-1])
def test_a_run_killed_after_any_node_resumes_to_the_same_summary(synth_root, biased_checkpoint, tmp_path, reference,
                                                                   node):
    run = tmp_path / "run"
    proc = start(command(synth_root, biased_checkpoint, run), tmp_path / "home")
    wait_for_node(proc, run, node)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = resume_and_compare(run, tmp_path / "home", reference)
    assert len(redone(run, before)) <= 1, f"more than the killed node was run again: {redone(run, before)}"


def test_ctrl_c_says_how_to_resume_and_the_resumed_run_matches(synth_root, biased_checkpoint, tmp_path, reference):
    run = tmp_path / "run"
    proc = start(command(synth_root, biased_checkpoint, run), tmp_path / "home")
    wait_for_node(proc, run, "explain")
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "interrupted: finished steps are kept" in stderr and "--resume" in stderr
    resume_and_compare(run, tmp_path / "home", reference)


def test_a_second_process_on_a_running_folder_is_refused_with_the_holders_pid(synth_root, biased_checkpoint, tmp_path):
    run = tmp_path / "run"
    proc = start(command(synth_root, biased_checkpoint, run), tmp_path / "home")
    try:
        wait_for_node(proc, run, "setup")
        second = subprocess.run([sys.executable, "-m", "fairloop.cli", "run", "--resume", str(run)],
                                env=environment(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"is in use by another fairloop process (PID {proc.pid})" in " ".join(second.stderr.split())


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs folder to fill or make read-only; needs root (mount), else the test is skipped."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs (a container without CAP_SYS_ADMIN)")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)

    try:
        yield folder, remount
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def assert_disk_error(done_stderr: str, returncode: int, words: str) -> None:
    flat = " ".join(done_stderr.split())
    assert returncode == 2 and "Traceback" not in done_stderr, done_stderr[-2000:]
    assert "error: cannot write" in flat and words in flat and "fix: free space or make the folder writable" in flat


#: tmpfs sizes that fill up in setup (the baseline's weights), generate (images) and fine-tune (the
#: candidate's weights) of the reference run, whose folder takes ~1.7 MB.
FULL_AT = {"setup": "300k", "generate": "600k", "finetune": "1000k"}


@pytest.mark.parametrize("node", [pytest.param(n, marks=[] if n == "generate" else [pytest.mark.slow]) for n in FULL_AT])
def test_a_full_disk_stops_the_run_cleanly_and_it_resumes_once_space_is_freed(synth_root, biased_checkpoint, tmp_path,
                                                                             reference, small_disk, node):
    disk, remount = small_disk
    remount(f"size={FULL_AT[node]}")
    run, home = disk / "run", tmp_path / "home"
    full = subprocess.run(command(synth_root, biased_checkpoint, run), env=environment(home), capture_output=True,
                          text=True, timeout=600)
    assert_disk_error(full.stderr, full.returncode, "No space left on device")
    assert f"[iteration 1] {node} …" in full.stderr or node == "setup"
    before = [(t["node"], t["iteration"]) for t in RunFolder(run).read_trace()]
    remount("size=20m")
    resume_and_compare(run, home, reference)
    assert redone(run, before) == []


@pytest.mark.slow
def test_a_resume_on_a_read_only_folder_stops_cleanly_and_resumes_once_writable(synth_root, biased_checkpoint, tmp_path,
                                                                               reference, small_disk):
    disk, remount = small_disk
    remount("size=20m")
    run, home = disk / "run", tmp_path / "home"
    proc = start(command(synth_root, biased_checkpoint, run), home)
    wait_for_node(proc, run, "explain")
    os.killpg(proc.pid, signal.SIGKILL)  # a folder open for writing cannot be remounted read-only
    proc.wait(timeout=30)
    remount("ro")
    refused = subprocess.run([sys.executable, "-m", "fairloop.cli", "run", "--resume", str(run)], env=environment(home),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "read-only" in refused.stderr.lower() and "fix:" in refused.stderr
    before = [(t["node"], t["iteration"]) for t in RunFolder(run).read_trace()]
    remount("rw")
    resume_and_compare(run, home, reference)
    assert len(redone(run, before)) <= 1


def test_a_full_state_database_is_the_same_clear_error(monkeypatch, capsys):
    import sqlite3

    from fairloop import cli

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "error: cannot write the state database: database or disk is full" in err
    assert "fix: free space" in err


KEY = "sk-fault-" + "q" * 32
ANSWER = {"diagnosis": "Gray hair stands in for Male.", "counterfactuals_needed": True,
          "shortcut_attributes": ["Gray_Hair"], "change_attributes": ["Gray_Hair"],
          "plans": [{"label": 1, "description": "a man without gray hair", "n_images": 20},
                    {"label": 0, "description": "a woman with gray hair", "n_images": 20}],
          "negative_prompt": "blurry", "mix_ratio": 0.3}
#: What the endpoint does to every request: hang past the timeout, answer with a body that is no chat
#: completion, or answer in the right form with the caller's key in the text.
ENDPOINTS = {"hangs": ("sleep", 30, json.dumps(ANSWER)), "garbage": b"<html>502 Bad Gateway</html>\x00\xff",
             "echoes_the_key": json.dumps(ANSWER | {"diagnosis": f"Gray hair stands in for Male; your key is {KEY}."})}


@pytest.mark.parametrize("behaviour", [pytest.param(b, marks=[] if b == "echoes_the_key" else [pytest.mark.slow])
                                       for b in ENDPOINTS])
def test_a_run_survives_a_bad_endpoint_and_no_file_or_line_holds_the_key(synth_root, biased_checkpoint, tmp_path,
                                                                         reference, behaviour):
    from chat_stub import Stub

    run, home = tmp_path / "run", tmp_path / "home"
    with Stub([ENDPOINTS[behaviour]]) as stub:
        env = {name: value for name, value in environment(home).items() if "proxy" not in name.lower()}
        env |= {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": stub.url, "NO_PROXY": "127.0.0.1", "FAIRLOOP_LLM_TIMEOUT": "1"}
        done = subprocess.run(command(synth_root, biased_checkpoint, run, "--llm", "openai", "--llm-model", "stub"),
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert stub.requests and all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in stub.requests)
    assert KEY not in done.stdout + done.stderr
    for path in [*run.rglob("*"), *home.rglob("*")]:  # run folder, state, trace, report, memory
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    summary = json.loads((run / "summary.json").read_text())
    analysis = summary["iterations"][0]["analysis"]
    if behaviour == "echoes_the_key":
        assert not analysis["fell_back"] and "[redacted]" in analysis["raw"][0]
    else:  # the rules decide instead, so the run ends where the rules' run ends
        assert analysis["fell_back"] and analysis["errors"]
        assert comparable(summary["final"], run) == reference["final"]

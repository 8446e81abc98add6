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
                            text=True, start_new_session=True)


def wait_for_node(proc: subprocess.Popen, run: Path, node: str, timeout: float = 240) -> None:
    """Return as soon as ``node``'s trace line is written (its checkpoint may or may not be)."""
    trace, deadline = run / "trace.jsonl", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if trace.exists() and any(json.loads(line)["node"] == node for line in trace.read_text().splitlines()):
            return
        time.sleep(0.02)
    pytest.fail(f"the run ended or stalled before {node}: " + (proc.stderr.read() or "")[-2000:])


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
    lines = [(t["node"], t["iteration"]) for t in (json.loads(x) for x in (run / "trace.jsonl").read_text().splitlines())]
    redone = [step for step in before if lines.count(step) > 1]
    assert len(redone) <= 1, f"more than the killed node was run again: {redone}"  # its checkpoint may be lost


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

"""Where does a mitigation run spend its time? Seconds per node of the loop, per iteration.

Usage: python bench/bench_run_stages.py [RUN] [-- FAIRLOOP RUN OPTIONS…]

Without RUN, runs ``fairloop run --out <tmp>/run --memory <tmp>/memory`` as a subprocess from the
repository root on the embedded defaults (it synthesizes data/synthfaces first if that folder is
absent) and times the whole command; options after ``--`` go to ``fairloop run`` (e.g.
``-- --max-iterations 1``). The memory folder is a fresh one, so recalls of earlier runs do not
change what the analyzer sees. With RUN, reads that existing run folder instead.

From RUN/trace.jsonl prints the seconds of each node kind (setup = baseline training or loading,
measure, explain, recall, analyze, generate, finetune, evaluate, decide, report) summed over the
run and per iteration, with the total; from RUN/summary.json the images generated per iteration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

NODES = ("setup", "measure", "explain", "recall", "analyze", "generate", "finetune", "evaluate", "decide", "report")
LOOP_NODES = NODES[1:-1]  # the nodes of an iteration; setup comes before the first, report after the last
REPO = Path(__file__).resolve().parent.parent


def run_fairloop(extra: list[str]) -> tuple[Path, float, int]:
    """Run ``fairloop run`` into a fresh temporary folder; (run folder, wall seconds, exit status)."""
    tmp = Path(tempfile.mkdtemp(prefix="fairloop-stages-"))
    script = Path(sys.executable).with_name("fairloop")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from fairloop.cli import main; main()"]
    command += ["run", "--out", str(tmp / "run"), "--memory", str(tmp / "memory"), *extra]
    print("$ " + " ".join(command), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(command, cwd=REPO).returncode
    return tmp / "run", time.perf_counter() - t0, rc


def read_trace(run: Path) -> list[dict[str, Any]]:
    path = run / "trace.jsonl"
    if not path.is_file():
        sys.exit(f"{run} has no trace.jsonl: pass the folder that 'fairloop run --out' created")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_table(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds and calls per node, and per node and iteration (loop nodes only)."""
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    per_iteration: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for entry in trace:
        node, s = entry["node"], float(entry["seconds"])
        seconds[node] += s
        calls[node] += 1
        if node in LOOP_NODES:
            per_iteration[node][int(entry["iteration"])] += s
    iterations = sorted({i for by_it in per_iteration.values() for i in by_it})
    nodes = list(NODES) + sorted(set(seconds) - set(NODES))  # every kind, also those that never ran; unknown last
    return {"nodes": nodes, "seconds": dict(seconds), "calls": dict(calls),
            "per_iteration": {n: dict(v) for n, v in per_iteration.items()}, "iterations": iterations,
            "total": sum(seconds.values())}


def print_report(run: Path, table: dict[str, Any], summary: dict[str, Any] | None, wall: float | None) -> None:
    its, total = table["iterations"], table["total"]
    header = f"{'node':<10} {'total s':>9} {'share':>6} {'calls':>5}" + "".join(f" {f'it {i} s':>8}" for i in its)
    print(f"run {run}")
    print(header)
    print("-" * len(header))
    for node in table["nodes"]:
        s = table["seconds"].get(node, 0.0)
        by_it = table["per_iteration"].get(node, {})
        cells = "".join(f" {by_it[i]:>8.1f}" if i in by_it else f" {'—':>8}" for i in its)
        print(f"{node:<10} {s:>9.1f} {s / total if total else 0:>6.1%} {table['calls'].get(node, 0):>5}{cells}")
    print("-" * len(header))
    per_it = [sum(table["per_iteration"].get(n, {}).get(i, 0.0) for n in LOOP_NODES) for i in its]
    print(f"{'iteration':<10} {sum(per_it):>9.1f} {sum(per_it) / total if total else 0:>6.1%} {'':>5}"
          + "".join(f" {s:>8.1f}" for s in per_it))
    print(f"{'total':<10} {total:>9.1f} {1 if total else 0:>6.1%} {sum(table['calls'].values()):>5}")
    if summary is not None:
        generated = {int(it["iteration"]): int(it.get("n_generated", 0)) for it in summary.get("iterations", [])}
        print(f"{'images':<10} {summary.get('images_used', 0):>9} {'':>6} {'':>5}"
              + "".join(f" {generated.get(i, 0):>8}" for i in its))
        accepted = {int(it["iteration"]): it.get("accepted") for it in summary.get("iterations", [])}
        print(f"{'accepted':<10} {'':>9} {'':>6} {'':>5}"
              + "".join(f" {('yes' if accepted[i] else 'no') if i in accepted else '—':>8}" for i in its))
        print(f"status: {summary.get('status')}")
    else:
        print("no summary.json: the run did not finish (images generated unknown)")
    if wall is not None:
        print(f"whole command: {wall:.1f} s ({wall - total:.1f} s outside the nodes: start-up, imports, "
              "data synthesis, checkpoints)")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s [RUN] [-- FAIRLOOP RUN OPTIONS…]")
    parser.add_argument("run", nargs="?", type=Path, help="an existing run folder (default: run one now)")
    args = parser.parse_args(argv)
    if args.run is not None and extra:
        parser.error("options after -- are for a new run; leave them out when reading RUN")

    wall, rc = None, 0
    if args.run is None:
        run, wall, rc = run_fairloop(extra)
        if rc != 0:
            if not (run / "trace.jsonl").is_file():
                sys.exit(rc)  # it failed before any node ran; fairloop said why
            print(f"fairloop run exited with status {rc}; its trace so far:", file=sys.stderr)
    else:
        run = args.run
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    print()
    print_report(run, stage_table(read_trace(run)), summary, wall)
    sys.exit(rc)


if __name__ == "__main__":
    main()

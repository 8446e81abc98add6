"""Where does a mitigation run spend its time, and does it land in the band? Seconds per node of
the loop, per iteration; over several seeds, the seed table.

Usage: python bench/bench_run_stages.py [RUN] [--seeds 0,1,2] [--json OUT] [-- FAIRLOOP RUN OPTIONS…]

Without RUN, runs ``fairloop run --out <tmp>/run --memory <tmp>/memory`` as a subprocess from the
repository root on the embedded defaults (it synthesizes data/synthfaces first if that folder is
absent) and times the whole command; options after ``--`` go to ``fairloop run`` (e.g.
``-- --max-iterations 1``). The memory folder is a fresh one, so recalls of earlier runs do not
change what the analyzer sees, and the baseline is trained (``--fresh-baseline``), not taken from
an earlier run. With RUN, reads that existing run folder instead.

From RUN/trace.jsonl prints the seconds of each node kind (setup = baseline training or loading,
measure, explain, recall, analyze, generate, finetune, evaluate, decide, report) summed over the
run and per iteration, with the total; from RUN/summary.json the images generated per iteration.

With ``--seeds``, one run per seed (``fairloop run --seed S``, each with a fresh memory), then the
seed table: wall time, iterations, images, whether the final model is inside the fair band on
test, its worst-group accuracy, accuracy and EOD, and each column's mean ± half-width of the 95 %
t-interval. ``make demo`` is the run on the defaults, seed 0.
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
    tmp = Path(tempfile.mkdtemp(prefix="fairloop-stages-", dir=REPO / "runs" if (REPO / "runs").is_dir() else None))
    script = Path(sys.executable).with_name("fairloop")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from fairloop.cli import main; main()"]
    command += ["run", "--out", str(tmp / "run"), "--memory", str(tmp / "memory"), "--fresh-baseline", *extra]
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


def seed_row(seed: int, run: Path, wall: float | None, summary: dict[str, Any] | None) -> dict[str, Any]:
    """One line of the seed table: what a user of ``make demo`` with this seed would have seen."""
    from fairloop.tools.metrics import FairBand

    if summary is None:
        return {"seed": seed, "run": str(run), "wall_s": wall, "finished": False}
    final, initial = summary["final"], summary["initial"]
    return {"seed": seed, "run": str(run), "wall_s": wall, "finished": True, "status": summary["status"],
            "iterations": len(summary["iterations"]), "images": summary.get("images_used", 0),
            "in_band": FairBand(**_band(summary)).check(final).inside,
            "initial_worst_group_accuracy": initial["worst_group_accuracy"],
            "worst_group_accuracy": final["worst_group_accuracy"], "accuracy": final["accuracy"],
            "disparate_impact": final["disparate_impact"],
            "equal_opportunity_difference": final["equal_opportunity_difference"],
            "stage_seconds": summary.get("stage_seconds", {})}


def _band(summary: dict[str, Any]) -> dict[str, float]:
    config = summary["manifest"]["config"]
    return {k: config[k] for k in ("di_low", "di_high", "max_abs_diff")}


def print_seed_table(rows: list[dict[str, Any]]) -> None:
    from fairloop.experiments.stats import t_interval

    columns = ("wall_s", "iterations", "images", "worst_group_accuracy", "accuracy", "disparate_impact",
               "equal_opportunity_difference")
    print(f"\n{'seed':<6} {'wall s':>8} {'its':>4} {'images':>7} {'in band':>7} {'WGA':>7} {'acc':>7} {'DI':>7} "
          f"{'EOD':>7}  status")
    for r in rows:
        if not r["finished"]:
            print(f"{r['seed']:<6} did not finish ({r['run']})")
            continue
        print(f"{r['seed']:<6} {r['wall_s'] or 0:>8.0f} {r['iterations']:>4} {r['images']:>7} "
              f"{'yes' if r['in_band'] else 'no':>7} {r['worst_group_accuracy']:>7.3f} {r['accuracy']:>7.3f} "
              f"{r['disparate_impact']:>7.3f} {r['equal_opportunity_difference']:>+7.3f}  {r['status']}")
    done = [r for r in rows if r["finished"]]
    cells = []
    for column in columns:
        ci = t_interval([r[column] for r in done if r.get(column) is not None])
        cells.append("—" if ci["mean"] is None else f"{ci['mean']:.3f}" + (
            f" ± {ci['half_width']:.3f}" if ci["half_width"] is not None else ""))
    print(f"in band on test: {sum(r['in_band'] for r in done)}/{len(rows)}")
    for column, cell in zip(columns, cells):
        print(f"  {column:<30} {cell}")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s [RUN] [--seeds 0,1,2] [--json OUT] [-- FAIRLOOP RUN OPTIONS…]")
    parser.add_argument("run", nargs="?", type=Path, help="an existing run folder (default: run one now)")
    parser.add_argument("--seeds", help="comma-separated seeds: one fresh run each, then the seed table")
    parser.add_argument("--json", type=Path, help="write the seed table (and each run's stage seconds) here")
    args = parser.parse_args(argv)
    if args.run is not None and (extra or args.seeds):
        parser.error("--seeds and options after -- are for new runs; leave them out when reading RUN")
    if "--seed" in extra and args.seeds:
        parser.error("give the seeds with --seeds, not after --")

    rows, rc = [], 0
    for seed in [int(s) for s in args.seeds.split(",")] if args.seeds else [None]:
        wall = None
        if args.run is None:
            run, wall, rc = run_fairloop(extra + ([] if seed is None else ["--seed", str(seed)]))
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
        rows.append(seed_row(0 if seed is None else seed, run, wall, summary))
    if args.seeds:
        print_seed_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    sys.exit(rc)


if __name__ == "__main__":
    main()

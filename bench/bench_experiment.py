"""How long does a prompt-strategy experiment take, and what does it find? One timed run.

Usage: python bench/bench_experiment.py [--out EXP] [--vs-ray] [-- FAIRLOOP EXPERIMENT OPTIONS…]

Runs ``fairloop experiment --out EXP`` (default: a fresh temporary folder; the defaults are the
issue's first check: the default scenario, the ``render`` generator, every arm that needs no extra
input plus llm and llm-raw when a language model is installed, 3 seeds, protocol ``fixed``) as a
subprocess, and prints its wall time, the seconds per job kind summed from each ``result.json``,
and the experiment's ``table.md``. Options after ``--`` go to ``fairloop experiment`` (e.g.
``-- --threads 1 --arms erm,rules``).

``--vs-ray`` runs the same experiment twice, in-process into EXP/local and with ``--executor ray``
into EXP/ray, and prints both wall times, their ratio and whether every number of ``results.csv``
(all columns but the seconds) is identical.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def run(out: Path, extra: list[str]) -> float:
    """``fairloop experiment --out OUT EXTRA…`` as a subprocess; its wall seconds."""
    command = [str(Path(sys.executable).with_name("fairloop")), "experiment", "--out", str(out), *extra]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(command).returncode
    wall = time.perf_counter() - start
    print(f"exit status {rc}; wall {wall:.0f} s ({wall / 60:.1f} min)", flush=True)
    return wall


def seconds_per_kind(out: Path) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for path in sorted(out.glob("erm/*/s*/result.json")) + sorted(out.glob("jobs/*/*/s*/result.json")):
        result = json.loads(path.read_text())
        kind = "ERM (shared)" if path.parts[-4] == "erm" else result["arm"]
        seconds[kind] += float(result["seconds"]) - float(result.get("erm_seconds") or 0)
    return seconds


def numbers(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vs-ray", action="store_true", help="also run it on a local Ray and compare")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix="fairloop-experiment-")) / "exp"
    if args.vs_ray:
        local = run(out / "local", extra)
        ray = run(out / "ray", [*extra, "--executor", "ray"])
        same = numbers(out / "local") == numbers(out / "ray")
        print(f"\nin-process {local:.0f} s, Ray {ray:.0f} s: Ray / in-process = {ray / local:.3f}; "
              f"results.csv identical (all but seconds): {'yes' if same else 'NO'}")
        out = out / "local"
    else:
        run(out, extra)
    print("seconds per job kind, summed over seeds and scenarios:")
    for kind, s in seconds_per_kind(out).items():
        print(f"  {kind:<14} {s:8.0f}")
    if (out / "table.md").exists():
        print()
        print((out / "table.md").read_text())


if __name__ == "__main__":
    main()

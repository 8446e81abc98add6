"""How long does a prompt-strategy experiment take, and what does it find? One timed run.

Usage: python bench/bench_experiment.py [--out EXP] [-- FAIRLOOP EXPERIMENT OPTIONS…]

Runs ``fairloop experiment --out EXP`` (default: a fresh temporary folder; the defaults are the
issue's first check: the default scenario, the ``render`` generator, every arm that needs no extra
input plus llm and llm-raw when a language model is installed, 3 seeds, protocol ``fixed``) as a
subprocess, and prints its wall time, the seconds per job kind summed from each ``result.json``,
and the experiment's ``table.md``. Options after ``--`` go to ``fairloop experiment`` (e.g.
``-- --threads 1 --arms erm,rules``).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix="fairloop-experiment-")) / "exp"
    script = Path(sys.executable).with_name("fairloop")
    command = [str(script), "experiment", "--out", str(out), *extra]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(command).returncode
    wall = time.perf_counter() - start
    seconds: dict[str, float] = defaultdict(float)
    for path in sorted(out.glob("*/*/s*/result.json")) + sorted(out.glob("jobs/*/*/s*/result.json")):
        result = json.loads(path.read_text())
        kind = "ERM (shared)" if path.parts[-4] == "erm" else result["arm"]
        seconds[kind] += float(result["seconds"]) - (result.get("erm_seconds") or 0)
    print(f"\nexit status {rc}; wall {wall:.0f} s ({wall / 60:.1f} min)")
    print("seconds per job kind, summed over seeds and scenarios:")
    for kind, s in seconds.items():
        print(f"  {kind:<14} {s:8.0f}")
    if (out / "table.md").exists():
        print()
        print((out / "table.md").read_text())


if __name__ == "__main__":
    main()

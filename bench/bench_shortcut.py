"""Does a SynthFaces shortcut really bite? Biased vs unbiased training split of the same size, per target.

Usage: python bench/bench_shortcut.py [--pairs Male:Gray_Hair,Young:Pale_Skin,...] [--cues salient|subtle]
       [--seeds 0,1,2] [--n 12000] [--arch smallcnn] [--epochs 8] [--threads N] [--workdir DIR] [--json PATH]

For every target:shortcut pair and seed it synthesizes SynthFaces twice — training split with
P(shortcut == target) = 0.95 (ERM's data), and an unbiased one (0.5, the "oracle" split) — with identical
balanced validation/test splits, trains the same classifier on each and audits both on the test
split. Prints accuracy, worst-group accuracy, DI, EOD and the shortcut's LIME rank, then per pair
what the shortcut costs ERM in worst-group accuracy (oracle − ERM; mean ± 95 % CI over seeds).
Datasets are kept in --workdir and reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fairloop.data.datasets import load_dataset
from fairloop.data.synthfaces import CUES, Scenario, write_synthfaces
from fairloop.experiments.stats import t_interval
from fairloop.tools.audit import audit
from fairloop.vision.train import TrainConfig, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="Male:Gray_Hair", help="target:shortcut pairs, comma-separated")
    parser.add_argument("--cues", default="salient", choices=CUES)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (data, training and audit)")
    parser.add_argument("--correlation", type=float, default=0.95)
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fairloop-bench-shortcut"))
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = []
    for target, shortcut in pairs:
        for seed in seeds:
            for split_name, correlation in (("erm", args.correlation), ("oracle", 0.5)):
                rows.append(run_one(args, target, shortcut, correlation, seed) | {"training": split_name})
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))

    print(f"SynthFaces cues={args.cues}, n={args.n} (train {int(args.n * 0.7)}), {args.arch}, {args.epochs} epochs; "
          f"ERM trains at P(shortcut == target) = {args.correlation}, the oracle at 0.5; balanced test split")
    header = (f"{'target':<17} {'shortcut':<17} {'seed':>4} {'training':<8} {'acc':>6} {'WGA':>6} {'worst group':<30} "
              f"{'DI':>6} {'EOD':>7} {'LIME rank':>9} {'train s':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        acc, wga, di, eod = (_num(r[key]) for key in ("accuracy", "wga", "di", "eod"))
        print(f"{r['target']:<17} {r['shortcut']:<17} {r['seed']:>4} {r['training']:<8} {acc:>6} {wga:>6} "
              f"{r['worst_group']!s:<30} {di:>6} {eod:>7} {r['rank']!s:>9} {r['seconds']:>8.0f}")
    print("\nWhat the shortcut costs ERM (oracle − ERM worst-group accuracy), mean ± 95 % CI over seeds")
    for target, shortcut in pairs:
        erm, oracle = (_wga(rows, target, shortcut, training) for training in ("erm", "oracle"))
        cost = t_interval(np.subtract(oracle, erm))
        print(f"{target:<17} {shortcut:<17} ERM WGA {_fmt(t_interval(erm))}  oracle WGA {_fmt(t_interval(oracle))}  "
              f"cost {_fmt(cost)}")


def run_one(args, target: str, shortcut: str, correlation: float, seed: int) -> dict:
    folder = args.workdir / f"{args.cues}-{target}-{shortcut}-{correlation}-{args.n}-{seed}"
    if not (folder / "synthfaces.json").exists():
        write_synthfaces(folder, n=args.n, scenario=Scenario(target, shortcut, correlation), seed=seed,
                         cues=args.cues, force=True)
    data = load_dataset("celeba", folder)
    started = time.perf_counter()
    model, _ = train_classifier(data, target, TrainConfig(arch=args.arch, epochs=args.epochs, seed=seed))
    seconds = time.perf_counter() - started
    result = audit(model, data, target=target, protected=shortcut, seed=seed)
    m = result.metrics.values
    return {"target": target, "shortcut": shortcut, "correlation": correlation, "seed": seed, "cues": args.cues,
            "accuracy": m["accuracy"], "wga": m["worst_group_accuracy"], "worst_group": result.metrics.worst_group,
            "di": m["disparate_impact"], "eod": m["equal_opportunity_difference"],
            "rank": result.explanation.rank_of(shortcut), "seconds": seconds}


def _wga(rows: list[dict], target: str, shortcut: str, training: str) -> list[float]:
    """Worst-group accuracies of one pair and training split, in seed order."""
    return [r["wga"] for r in rows if (r["target"], r["shortcut"], r["training"]) == (target, shortcut, training)]


def _num(value) -> str:
    """A metric to 3 decimals; an undefined one (e.g. DI with no positive prediction) as "—"."""
    return "—" if value is None else f"{value:.3f}"


def _fmt(stat: dict) -> str:
    if stat["half_width"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['half_width']:.3f}"


if __name__ == "__main__":
    main()

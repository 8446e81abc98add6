"""Does the SynthFaces shortcut really bite? Biased vs unbiased training split of the same size.

Usage: python bench/bench_shortcut.py [--n 12000] [--arch smallcnn] [--epochs 8] [--workdir DIR]

Synthesizes the default scenario twice — training split with P(Gray_Hair == Male) = 0.95, and an
unbiased one (0.5) — with identical balanced validation/test splits, trains the same classifier on
each and audits both on the test split. Prints accuracy, worst-group accuracy, DI, EOD, AOD and the
rank of Gray_Hair in the LIME explanation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fairloop.data.datasets import load_dataset
from fairloop.data.synthfaces import Scenario, write_synthfaces
from fairloop.tools.audit import audit
from fairloop.vision.train import TrainConfig, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fairloop-bench-shortcut"))
    args = parser.parse_args()

    rows = []
    for label, correlation in (("biased (0.95)", 0.95), ("unbiased (0.5)", 0.5)):
        folder = args.workdir / f"synthfaces-{args.n}-{correlation}-{args.seed}"
        if not (folder / "list_attr_celeba.txt").exists():
            write_synthfaces(folder, n=args.n, scenario=Scenario(correlation=correlation), seed=args.seed, force=True)
        data = load_dataset("celeba", folder)
        t0 = time.perf_counter()
        model, _ = train_classifier(data, "Male", TrainConfig(arch=args.arch, epochs=args.epochs, seed=args.seed))
        seconds = time.perf_counter() - t0
        result = audit(model, data, target="Male", protected="Gray_Hair", seed=args.seed)
        m = result.metrics.values
        rows.append((label, m["accuracy"], m["worst_group_accuracy"], result.metrics.worst_group, m["disparate_impact"],
                     m["equal_opportunity_difference"], m["average_odds_difference"],
                     result.explanation.rank_of("Gray_Hair"), seconds))

    print(f"SynthFaces n={args.n} (train {int(args.n * 0.7)}), {args.arch}, {args.epochs} epochs, seed {args.seed}; "
          "balanced test split")
    header = f"{'training split':<16} {'acc':>6} {'WGA':>6} {'worst group':<22} {'DI':>6} {'EOD':>7} {'AOD':>7} {'Gray_Hair rank':>14} {'train s':>8}"
    print(header)
    print("-" * len(header))
    for label, acc, wga, worst, di, eod, aod, rank, seconds in rows:
        print(f"{label:<16} {acc:>6.3f} {wga:>6.3f} {worst:<22} {di:>6.3f} {eod:>7.3f} {aod:>7.3f} {rank:>14} {seconds:>8.0f}")


if __name__ == "__main__":
    main()

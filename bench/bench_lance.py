"""Seed 001's Table 2 on SynthFaces, over paired seeds: ERM / standard augmentation / reinforcement
with the seed's recipe (head-only, α = 0.3) / reinforcement with fairloop's fine-tune (α on validation).

Usage: python bench/bench_lance.py --root DATA --models CKPT0,CKPT1,CKPT2 --out DIR [--protected Gray_Hair]
       [--generator render] [--images 1000] [--test-per-edit 100] [--per-edit 40]

Each seed's ERM model gets its own weakness report (validation sources, every single-attribute
edit: ``DIR/s<k>/weaknesses.json``), then :func:`fairloop.weakness.reinforce.reinforce` (training
sources for the fine-tunes, test sources for the counterfactual test set: ``DIR/s<k>/reinforce.json``).
Both files are reused when present, so a killed run resumes. Prints the table (mean ± 95 % t-interval
over seeds) and the paired differences against ERM; everything is also in ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METRICS = ("accuracy", "worst_group_accuracy", "equal_opportunity_difference", "counterfactual_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated ERM checkpoint stems, one per seed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", default="Male")
    parser.add_argument("--protected", default="Gray_Hair", help="where worst-group accuracy and fairloop's α look")
    parser.add_argument("--generator", default="render")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--test-per-edit", type=int, default=100)
    parser.add_argument("--per-edit", type=int, default=40)
    args = parser.parse_args()

    from fairloop.data.datasets import load_dataset
    from fairloop.data.synthfaces import is_synthfaces
    from fairloop.experiments.stats import t_interval
    from fairloop.generators import make_generator
    from fairloop.io import atomic_write_json
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness import discover
    from fairloop.weakness.reinforce import ARMS, reinforce

    data = load_dataset("celeba", args.root)
    generator = make_generator(args.generator)
    oracle = None
    if not generator.exact and is_synthfaces(data.root):
        from fairloop.tools.quality import AttributeOracle

        oracle = AttributeOracle.packaged()
    results, ranks = [], []
    for seed, model in enumerate(args.models.split(",")):
        folder = args.out / f"s{seed}"
        net, _ = load_checkpoint(Path(model), "cpu")
        found = folder / "weaknesses.json"
        if not found.exists():
            start = time.perf_counter()
            report = discover(net, data, generator, target=args.target, out_dir=folder, oracle=oracle,
                              per_edit=args.per_edit, seed=seed)
            atomic_write_json(found, report.as_dict(pairs=0))
            print(f"seed {seed}: weaknesses in {time.perf_counter() - start:.0f} s", flush=True)
        weaknesses = json.loads(found.read_text())
        ranks.append(next((k for k, a in enumerate(weaknesses["attributes"], 1) if a["attribute"] == args.protected), None))
        done = folder / "reinforce.json"
        if not done.exists():
            start = time.perf_counter()
            result = reinforce(net, data, generator, weaknesses["weaknesses"], target=args.target,
                               protected=args.protected, out_dir=folder / "reinforce", n_images=args.images,
                               n_test=args.test_per_edit, oracle=oracle, seed=seed)
            atomic_write_json(done, result | {"seconds": time.perf_counter() - start})
            print(f"seed {seed}: reinforcement in {time.perf_counter() - start:.0f} s", flush=True)
        results.append(json.loads(done.read_text()))

    def cell(values):
        ci = t_interval(values)
        return "—" if ci["mean"] is None else (f"{ci['mean']:+.3f}" if ci["half_width"] is None
                                               else f"{ci['mean']:.3f} ± {ci['half_width']:.3f}")

    table = {arm: {m: [r["arms"][arm][m] for r in results if arm in r["arms"]] for m in METRICS} for arm in ARMS}
    print(f"\n{len(results)} seeds; {args.protected} rank among attributes (WeaknessReport.attributes: both ways first): {ranks}")
    print("| model | accuracy | worst-group acc. | EOD | counterfactual acc. |")
    print("|---|---:|---:|---:|---:|")
    for arm in ARMS:
        print(f"| {arm} | " + " | ".join(cell(table[arm][m]) for m in METRICS) + " |")
    print("\npaired differences against erm (mean ± 95 % CI, wins):")
    for arm in ARMS[1:]:
        parts = []
        for m in ("worst_group_accuracy", "counterfactual_accuracy", "accuracy"):
            diffs = [a - b for a, b in zip(table[arm][m], table["erm"][m])]
            ci = t_interval(diffs)
            if ci["half_width"] is not None:
                wins = sum(d > 0 for d in diffs)
                noise = " (noise)" if ci["low"] <= 0 <= ci["high"] else ""
                parts.append(f"{m} {ci['mean']:+.3f} ± {ci['half_width']:.3f} ({wins}/{len(diffs)}){noise}")
        print(f"  {arm}: " + "; ".join(parts))
    atomic_write_json(args.out / "summary.json", {"seeds": len(results), "protected_rank": ranks, "table": table,
                                                  "edits": [r["edits"] for r in results]})


if __name__ == "__main__":
    main()

"""Seed 002's Table 5 on SynthFaces, over paired seeds: AIP counterfactuals as training data.

Usage: python bench/bench_aip_augment.py --root DATA --models CKPT0,CKPT1,CKPT2 --out DIR [-n 1000]
       [--protected Gray_Hair] [--scale 1.0]

Per seed's ERM model: AIP in keep-label mode on ``-n`` training images (the same step scale for every
seed, e.g. the one ``bench_aip.py`` chose on validation); the flips the oracle confirms (class
unchanged) are labelled with their true class (:func:`fairloop.aip.augment.training_counterfactuals`).
Three models, each fine-tuned the same way (fairloop's fine-tune, 2 epochs, α on validation): ERM
as it is, ``reconstructions`` (the same sources decoded unchanged: the decoder's images alone) and
``aip`` (the counterfactuals). Scored on the real test split: accuracy, worst-group accuracy and EOD
for ``--protected``. Prints the table (mean ± 95 % t-interval) and the paired differences; writes
``DIR/summary.json`` (per-seed results in ``DIR/s<k>.json``, reused on a rerun).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

METRICS = ("accuracy", "worst_group_accuracy", "equal_opportunity_difference")
ARMS = ("erm", "reconstructions", "aip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated ERM checkpoint stems, one per seed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", default="Male")
    parser.add_argument("--protected", default="Gray_Hair")
    parser.add_argument("-n", type=int, default=1000, help="training images AIP searches from")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies seed 002's step sizes μ and γ")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from fairloop.agent.analyzer import default_mix
    from fairloop.aip.augment import training_counterfactuals
    from fairloop.aip.search import SearchConfig
    from fairloop.data.datasets import load_dataset
    from fairloop.experiments.stats import t_interval
    from fairloop.io import atomic_write_json
    from fairloop.tools.finetune import FinetuneConfig, finetune
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness.reinforce import score

    torch.set_num_threads(1)
    data = load_dataset("celeba", args.root)
    base = SearchConfig()
    search = replace(base, mu=base.mu * args.scale, gamma=base.gamma * args.scale)
    empty = pd.DataFrame(columns=["path", "label"])
    results = []
    for seed, model in enumerate(args.models.split(",")):
        path = args.out / f"s{seed}.json"
        if not path.exists():
            start = time.perf_counter()
            net, _ = load_checkpoint(Path(model))
            counterfactuals, reconstructions = training_counterfactuals(
                net, data, args.target, protected=args.protected, n=args.n, out_dir=args.out / f"s{seed}",
                config=search, seed=seed)
            made = time.perf_counter() - start
            arms = {"erm": score(net, data, empty, target=args.target, protected=args.protected)}
            mix = default_mix(len(counterfactuals), len(data.split("train")))
            for name, table in (("reconstructions", reconstructions), ("aip", counterfactuals)):
                tuned = finetune(net, data, table[["path", "label", "protected"]], target=args.target,
                                 protected=args.protected,
                                 config=FinetuneConfig(epochs=2, mix_ratio=mix, seed=seed, device="cpu"))
                arms[name] = score(tuned.model, data, empty, target=args.target, protected=args.protected) | {
                    "alpha": tuned.alpha}
            result = {"n_sources": args.n, "n_counterfactuals": len(counterfactuals), "mix_ratio": mix,
                      "seconds_search": round(made, 1), "seconds": round(time.perf_counter() - start, 1), "arms": arms}
            atomic_write_json(path, result)
            print(f"seed {seed}: {len(counterfactuals)} counterfactuals from {args.n} training images "
                  f"({made:.0f} s), done in {result['seconds']:.0f} s", flush=True)
        results.append(json.loads(path.read_text()))

    def cell(values):
        ci = t_interval(values)
        return "—" if ci["mean"] is None else (f"{ci['mean']:.3f}" if ci["half_width"] is None
                                               else f"{ci['mean']:.3f} ± {ci['half_width']:.3f}")

    table = {arm: {m: [r["arms"][arm][m] for r in results] for m in METRICS} for arm in ARMS}
    print(f"\n{len(results)} seeds; counterfactuals per seed: {[r['n_counterfactuals'] for r in results]}")
    print("| model | accuracy | worst-group acc. | EOD |")
    print("|---|---:|---:|---:|")
    for arm in ARMS:
        print(f"| {arm} | " + " | ".join(cell(table[arm][m]) for m in METRICS) + " |")
    print("\npaired differences (mean ± 95 % CI, wins):")
    for arm, against in (("reconstructions", "erm"), ("aip", "erm"), ("aip", "reconstructions")):
        parts = []
        for m in METRICS:
            diffs = [a - b for a, b in zip(table[arm][m], table[against][m])]
            ci = t_interval(diffs)
            if ci["half_width"] is not None:
                noise = " (noise)" if ci["low"] <= 0 <= ci["high"] else ""
                parts.append(f"{m} {ci['mean']:+.3f} ± {ci['half_width']:.3f} ({sum(d > 0 for d in diffs)}/"
                             f"{len(diffs)}){noise}")
        print(f"  {arm} − {against}: " + "; ".join(parts))
    atomic_write_json(args.out / "summary.json", {"seeds": len(results), "table": table,
                                                  "n_counterfactuals": [r["n_counterfactuals"] for r in results]})


if __name__ == "__main__":
    main()

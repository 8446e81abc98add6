"""Does a smaller set of counterfactuals need a different fine-tune? The same images, several fine-tunes.

Usage: python bench/bench_finetune_budget.py --root DATA --model CKPT --manifests M1,M2,... \
           [--per-group 890] [--seed 0] VARIANT [VARIANT ...]

The images are the kept rows of the manifests (any run or experiment folder's ``manifests/*.json``),
drawn ``--per-group`` per (class, protected) group with the seed (``--men``/``--women`` override the
counts of the groups labelled 1/0). Each VARIANT is comma-separated ``key=value`` changes of the
loop's fine-tune (group-balanced real draws, 2 epochs, mix 0.5, lr 5e-4, patience 1, α on
validation within the 1-point budget, aiming at the band less 40 %): ``mix``, ``epochs``,
``patience``, ``lr``, and ``repeat`` (each counterfactual listed that many times, so an epoch takes
that many more steps at the same mix). ``base`` is the loop's fine-tune unchanged. Prints, per
variant, the chosen α and epoch, validation and test accuracy, worst-group accuracy, DI and EOD.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

KEYS = {"mix": ("mix_ratio", float), "epochs": ("epochs", int), "patience": ("patience", int), "lr": ("lr", float)}
SHOWN = ("accuracy", "worst_group_accuracy", "disparate_impact", "equal_opportunity_difference")


def parse_variant(text: str) -> tuple[dict, int]:
    """(FinetuneConfig changes, repeat) of one VARIANT."""
    changes, repeat = {}, 1
    for part in filter(None, text.split(",")):
        if part == "base":
            continue
        key, _, value = part.partition("=")
        if key == "repeat":
            repeat = int(value)
        elif key in KEYS:
            changes[KEYS[key][0]] = KEYS[key][1](value)
        else:
            raise SystemExit(f"unknown variant key {key!r}: use base or {', '.join([*KEYS, 'repeat'])}")
    return changes, repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint every variant starts from")
    parser.add_argument("--manifests", required=True, help="comma-separated manifest files")
    parser.add_argument("--target", default="Male")
    parser.add_argument("--protected", default="Gray_Hair")
    parser.add_argument("--per-group", type=int, default=890)
    parser.add_argument("--men", type=int, help="images of the group labelled 1 (default --per-group)")
    parser.add_argument("--women", type=int, help="images of the group labelled 0 (default --per-group)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    variants = [(text, *parse_variant(text)) for text in args.variants]

    import numpy as np
    import pandas as pd

    from fairloop.data.datasets import load_dataset
    from fairloop.tools.finetune import FinetuneConfig, finetune
    from fairloop.tools.metrics import FairBand, fairness_report
    from fairloop.vision.models import load_checkpoint
    from fairloop.vision.train import predict_proba

    dataset = load_dataset("celeba", args.root)
    rows = []
    for manifest in args.manifests.split(","):
        run = Path(manifest).resolve().parent.parent
        rows += [{"path": str(run / r["path"]), "label": r["label"], "protected": r["protected"]}
                 for r in json.loads(Path(manifest).read_text())["images"]]
    pool = pd.DataFrame(rows).drop_duplicates("path")
    pool = pool[pool["protected"].isin([0, 1])]
    wanted = {1: args.men or args.per_group, 0: args.women or args.per_group}
    rng = np.random.default_rng(args.seed)
    images = pd.concat([group.iloc[rng.permutation(len(group))[:wanted[label]]]
                        for (label, _), group in pool.groupby(["label", "protected"])], ignore_index=True)
    counts = images.groupby(["label", "protected"]).size().to_dict()
    print(f"{len(images)} counterfactuals from {len(pool)}: {counts}", flush=True)

    model, meta = load_checkpoint(args.model)
    test = dataset.split("test")

    def scores(report: dict) -> dict:
        return {k: round(float(report[k]), 3) for k in SHOWN}

    def on_test(net) -> dict:
        probs = predict_proba(net, test.images(meta.get("image_size", 64)))
        return scores(fairness_report(y_true=test.labels(args.target), y_pred=(probs >= 0.5).astype(int),
                                      protected=test.labels(args.protected), privileged_value=1,
                                      target_name=args.target, protected_name=args.protected, n_bootstrap=0).as_dict())

    print(f"starting model: test {on_test(model)}", flush=True)
    loop = FinetuneConfig(mode="full", epochs=2, mix_ratio=0.5, real_sampling="balanced", accuracy_budget=0.01,
                          image_size=meta.get("image_size", 64), seed=args.seed)
    band = FairBand().shrunk(0.4)
    for text, changes, repeat in variants:
        start = time.perf_counter()
        result = finetune(model, dataset, pd.concat([images] * repeat, ignore_index=True), target=args.target,
                          protected=args.protected, config=replace(loop, **changes), band=band)
        print(f"{text}: alpha {result.alpha}, epoch {result.best_epoch}, val {scores(result.chosen.metrics)}, "
              f"test {on_test(result.model)}, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

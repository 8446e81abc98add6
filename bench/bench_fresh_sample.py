"""Is the validation split the loop decides on still an honest estimate at the end of a run? Scores
each model of finished runs (the baseline, every iteration's candidate) on the run's validation and
test splits and on a large fresh sample of the same population, which no decision has seen.

Usage: python bench/bench_fresh_sample.py RUN [RUN…] --fresh DATA [--root DATASET]

DATA is a SynthFaces folder drawn with another seed, e.g. ``fairloop data synth --out
data/synthfaces-fresh --n 60000 --seed 7``: its validation and test splits (18,000 images, balanced
over the four target × protected groups) are the fresh sample; one standard error of EOD on it is
about 0.005, against about 0.02 on the default scenario's 1,800-image splits. Every decision of a
run (the epoch kept, the mix compared, α, acceptance, the stop) is taken on validation, so a model
chosen that way looks better there than it is; the fresh sample measures by how much. The last
lines give validation − fresh and test − fresh over the runs' final models, mean ± half-width of
the 95 % t-interval. Nothing is written into RUN.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="folders that 'fairloop run --out' wrote")
    parser.add_argument("--fresh", type=Path, required=True,
                        help="a dataset folder of the same population drawn with another seed (its val and test splits)")
    parser.add_argument("--root", type=Path, help="the runs' dataset folder, if it is no longer where they were made")
    args = parser.parse_args()

    from fairloop.data.datasets import load_dataset
    from fairloop.experiments.stats import t_interval
    from fairloop.runs.config import RunConfig
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.models import load_checkpoint
    from fairloop.vision.train import predict_proba

    def score(model, image_size: int, config: RunConfig, parts) -> tuple[float, float]:
        """(EOD, worst-group accuracy) of ``model`` over the concatenated ``parts``."""
        labels = np.concatenate([p.labels(config.target) for p in parts])
        protected = np.concatenate([p.labels(config.protected) for p in parts])
        probs = np.concatenate([predict_proba(model, p.images(image_size), device="cpu") for p in parts])
        report = fairness_report(y_true=labels, y_pred=(probs >= 0.5).astype(int), protected=protected,
                                 privileged_value=config.privileged_value, target_name=config.target,
                                 protected_name=config.protected, n_bootstrap=0, seed=0).as_dict()
        return report["equal_opportunity_difference"], report["worst_group_accuracy"]

    fresh_data = load_dataset("celeba", args.fresh)
    fresh = [fresh_data.split("val"), fresh_data.split("test")]
    print(f"fresh sample: {sum(len(p) for p in fresh):,} images from {args.fresh}")
    print(f"{'run':<28} {'seed':>4} {'model':<12} | {'val EOD':>8} {'test EOD':>8} {'fresh EOD':>9} | "
          f"{'val WGA':>7} {'test WGA':>8} {'fresh WGA':>9} | {'val − fresh':>11} {'test − fresh':>12}")
    offsets: dict[str, list[float]] = {"val": [], "test": []}
    for run in args.runs:
        summary = json.loads((run / "summary.json").read_text())
        config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
        data = load_dataset(config.dataset, args.root or config.root, csv=config.csv)
        splits = {"val": [data.split("val")], "test": [data.split("test")], "fresh": fresh}
        models = [("baseline", summary["initial_model"])]
        models += [(f"it {it['iteration']} {'kept' if it['accepted'] else 'dropped'}", it["model"])
                   for it in summary["iterations"] if it.get("model")]
        for label, relative in models:
            model, meta = load_checkpoint(run / relative.removesuffix(".safetensors"))
            eod, wga = {}, {}
            for name, parts in splits.items():
                eod[name], wga[name] = score(model, meta.get("image_size", 64), config, parts)
            if relative == summary["final_model"] and label != "baseline":
                label += " *"
                for name in offsets:
                    offsets[name].append(eod[name] - eod["fresh"])
            print(f"{run.parent.name[-28:]:<28} {config.seed:>4} {label:<12} | {eod['val']:>+8.3f} {eod['test']:>+8.3f} "
                  f"{eod['fresh']:>+9.3f} | {wga['val']:>7.3f} {wga['test']:>8.3f} {wga['fresh']:>9.3f} | "
                  f"{eod['val'] - eod['fresh']:>+11.3f} {eod['test'] - eod['fresh']:>+12.3f}", flush=True)
    print("* the run's final model")
    for name, values in offsets.items():
        ci = t_interval(values)
        if ci["n"]:
            spread = f" ± {ci['half_width']:.3f}" if ci["half_width"] is not None else ""
            print(f"{name} EOD − fresh EOD over {ci['n']} final models: {ci['mean']:+.3f}{spread} "
                  f"(from {min(values):+.3f} to {max(values):+.3f})")


if __name__ == "__main__":
    main()

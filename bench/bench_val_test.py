"""Do validation and test agree along a fine-tune's path? Re-runs one iteration's fine-tune of a
finished run and prints, for every α the scan scored, the validation metrics the loop decided on
beside the test metrics it never saw.

Usage: python bench/bench_val_test.py RUN [--iteration N] [--root DATASET] [--fresh DATA] [--chosen-only]
       [--set FIELD=VALUE ...]

The fine-tune is rebuilt from RUN's files as the loop ran it: the model the iteration started
from, its counterfactuals with every accepted iteration's before it (``--first-batch`` > 0) or
those kept as extra training rows, the analyzer's mix ratio, the seed. On the machine and thread
count that made RUN it is the same fine-tune (same α chosen, same validation figures: the first
column checks it). Nothing is written into RUN. Test metrics here are for reading only: no
decision of fairloop's uses the test split. With ``--fresh DATA`` (a dataset of the same population
drawn with another seed, see ``bench/bench_fresh_sample.py``) the right-hand columns are DATA's
validation and test splits together instead of RUN's test split. ``--set`` changes a field of the
fine-tune's ``FinetuneConfig`` (e.g. ``--set objective=groupdro --set patience=2``), to compare a
change against the fine-tune the loop ran; ``--chosen-only`` scores only the chosen α on the other
split (a fresh sample of 18,000 images takes ~10 s a model).
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a folder that 'fairloop run --out' wrote")
    parser.add_argument("--iteration", type=int, default=1, help="which iteration's fine-tune (default 1)")
    parser.add_argument("--root", type=Path, help="the dataset's folder, if it is no longer where RUN was made")
    parser.add_argument("--fresh", type=Path, help="score on this dataset's val and test splits instead of RUN's test split")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a FinetuneConfig field, e.g. objective=groupdro (repeatable)")
    parser.add_argument("--chosen-only", action="store_true", help="score only the chosen α on the other split")
    args = parser.parse_args()

    from fairloop.data.datasets import load_dataset
    from fairloop.graphs.loop import finetune_manifests
    from fairloop.runs.config import RunConfig
    from fairloop.runs.folder import RunFolder
    from fairloop.runs.services import RunServices
    from fairloop.runs.steps import finetune_checkpoint
    from fairloop.tools.finetune import interpolate
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.train import predict_proba

    summary = json.loads((args.run / "summary.json").read_text())
    config = RunConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    if args.root:
        config = replace(config, root=str(args.root))
    iterations = summary["iterations"]
    if not 1 <= args.iteration <= len(iterations):
        raise SystemExit(f"{args.run} has iterations 1–{len(iterations)}; pass one of them with --iteration")
    entry = iterations[args.iteration - 1]
    earlier = [it for it in iterations[:args.iteration - 1] if it.get("accepted")]
    start = earlier[-1]["model"] if earlier else summary["initial_model"]
    new, kept = finetune_manifests(config, entry["manifest"], [it["manifest"] for it in earlier])
    services = RunServices(config, RunFolder(args.run), log=lambda *_: None)

    result, meta = finetune_checkpoint(services, start, new, kept, mix_ratio=entry["analysis"]["decision"]["mix_ratio"],
                                       seed=config.seed + args.iteration, bolder=True, **overrides(args.set))
    if args.fresh:
        fresh = load_dataset("celeba", args.fresh)
        parts = [fresh.split("val"), fresh.split("test")]
    else:
        parts = [services.dataset.split("test")]
    labels = np.concatenate([p.labels(config.target) for p in parts])
    protected = np.concatenate([p.labels(config.protected) for p in parts])
    base, _ = services.load_model(start)
    theta0 = copy.deepcopy(base.state_dict())
    band = config.band
    print(f"{args.run} iteration {args.iteration}: mix {result.config['mix_ratio']}, chosen α {result.alpha} "
          f"(the run chose {entry.get('alpha')}, mix {entry.get('mix_ratio')})")
    for epoch in result.history:
        if "val_worst_group_accuracy" in epoch:  # else the last epoch is θ1, and none was scored
            print(f"  epoch {epoch['epoch']}: val WGA {epoch['val_worst_group_accuracy']:.3f}, "
                  f"EOD {epoch.get('val_equal_opportunity_difference', float('nan')):+.3f}"
                  f"{' (kept as θ1 so far)' if epoch['improved'] else ''}")
    other = "fresh" if args.fresh else "test"
    print(f"{'α':>5} {'val EOD':>8} {'val SPD':>8} {'val WGA':>8} {'score':>7} | {other + ' EOD':>9} {other + ' SPD':>9} "
          f"{other + ' WGA':>9} {'in band':>7} | {'EOD ' + other + ' − val':>15}")
    offsets = []
    for candidate in result.candidates:
        if args.chosen_only and candidate.alpha != result.alpha:
            continue
        base.load_state_dict(interpolate(theta0, result.finetuned_state, candidate.alpha))
        probs = np.concatenate([predict_proba(base.eval(), p.images(meta.get("image_size", 64)), device=services.device)
                                for p in parts])
        report = fairness_report(y_true=labels, y_pred=(probs >= 0.5).astype(int), protected=protected,
                                 privileged_value=config.privileged_value, target_name=config.target,
                                 protected_name=config.protected, n_bootstrap=0, seed=config.seed).as_dict()
        val = candidate.metrics
        offset = report["equal_opportunity_difference"] - val["equal_opportunity_difference"]
        offsets.append(offset)
        mark = "*" if candidate.alpha == result.alpha else " "
        print(f"{candidate.alpha:>4.2f}{mark} {val['equal_opportunity_difference']:>+8.3f} "
              f"{val['statistical_parity_difference']:>+8.3f} {candidate.worst_group_accuracy:>8.3f} {candidate.score:>7.3f} | "
              f"{report['equal_opportunity_difference']:>+9.3f} {report['statistical_parity_difference']:>+9.3f} "
              f"{report['worst_group_accuracy']:>9.3f} {'yes' if band.check(report).inside else 'no':>7} | {offset:>+15.3f}")
    print(f"EOD {other} − validation over the path: mean {np.mean(offsets):+.3f}, from {min(offsets):+.3f} to {max(offsets):+.3f}")


def overrides(settings: list[str]) -> dict:
    """``--set FIELD=VALUE`` pairs as FinetuneConfig fields, each value parsed as its field's type."""
    from dataclasses import fields

    from fairloop.tools.finetune import FinetuneConfig

    types = {f.name: type(getattr(FinetuneConfig(), f.name)) for f in fields(FinetuneConfig)}
    out = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in types or types[name] not in (int, float, str):
            raise SystemExit(f"--set {setting}: use FIELD=VALUE with a number or text field of FinetuneConfig "
                             f"({', '.join(n for n, t in types.items() if t in (int, float, str))})")
        out[name] = types[name](value)
    return out


if __name__ == "__main__":
    main()

"""Does drawing the real images group-balanced help counterfactuals from a generator that is not exact?

Usage: python bench/bench_real_sampling.py RUN_FOLDER [--json OUT]

Takes a finished `fairloop run` (e.g. `--generator embedded`), and fine-tunes its starting model once on
its first iteration's counterfactuals at that iteration's mix ratio, three ways: real images drawn
uniformly, drawn equally from each (target, protected) group, and group-balanced without the
counterfactuals. Prints the test split's accuracy, worst-group accuracy, DI and EOD of each, for the
fine-tuned weights themselves (the best epoch on validation; no WiSE-FT interpolation, so the
comparison is not blurred by the choice of α).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import pandas as pd

    from fairloop.data import load_dataset
    from fairloop.runs import RunConfig
    from fairloop.tools.finetune import FinetuneConfig, finetune
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.models import load_checkpoint
    from fairloop.vision.train import predict_proba

    config = RunConfig(**json.loads((args.run / "config.json").read_text()))
    summary = json.loads((args.run / "summary.json").read_text())
    first = summary["iterations"][0]
    images = json.loads((args.run / first["manifest"]).read_text())["images"]
    counterfactuals = pd.DataFrame([{"path": str(args.run / r["path"]), "label": r["label"],
                                     "protected": r["protected"]} for r in images])
    data = load_dataset(config.dataset, config.root)
    test = data.split("test")

    rows = []
    for name, sampling, mix in (("uniform real images", "uniform", first["mix_ratio"]),
                                ("group-balanced real images", "balanced", first["mix_ratio"]),
                                ("group-balanced, no counterfactuals", "balanced", 0.0)):
        model, meta = load_checkpoint(args.run / summary["initial_model"])
        start = time.perf_counter()
        result = finetune(model, data, counterfactuals, target=config.target, protected=config.protected,
                          privileged_value=config.privileged_value, band=config.target_band,
                          config=FinetuneConfig(epochs=config.finetune_epochs, mix_ratio=mix, real_sampling=sampling,
                                                alphas=(0.0,), seed=config.seed + 1, device="cpu"))
        model.load_state_dict(result.finetuned_state)
        probs = predict_proba(model, test.images(meta.get("image_size", 64)))
        report = fairness_report(y_true=test.labels(config.target), y_pred=(probs >= 0.5).astype(int),
                                 protected=test.labels(config.protected), privileged_value=config.privileged_value,
                                 n_bootstrap=0).as_dict()
        rows.append({"method": name, "counterfactuals": result.n_counterfactual, "real": result.n_real,
                     **{k: report[k] for k in ("accuracy", "worst_group_accuracy", "disparate_impact",
                                               "equal_opportunity_difference")},
                     "seconds": round(time.perf_counter() - start, 1)})

    print(f"{args.run}: fine-tuning {summary['initial_model']} on iteration 1's {len(counterfactuals)} images "
          f"(mix {first['mix_ratio']}), test split")
    print("| real images | counterfactuals | accuracy | worst-group acc. | DI | EOD | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['counterfactuals']} | {r['accuracy']:.3f} | {r['worst_group_accuracy']:.3f} | "
              f"{r['disparate_impact']:.3f} | {r['equal_opportunity_difference']:+.3f} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Does fairloop beat the standard bias mitigations? One table on the same data, model and budget.

Usage: python bench/bench_mitigation.py [--n 12000] [--arch smallcnn] [--epochs 8] [--seed 0] [--workdir DIR]
                                        [--llm rules] [--llm-model NAME] [--generator G] [--max-iterations 4]
                                        [--max-images 12000] [--images-per-iteration 6000] [--device auto]

On SynthFaces' default scenario (target Male, training split with P(Gray_Hair == Male) = 0.95,
balanced validation/test splits) every method trains the same architecture for the same epochs
with the same seed, and is measured on the same test split:

- ERM: plain training on the biased split;
- Reweighing: AIF360's Reweighing of (Male, Gray_Hair) on the training split, as loss weights;
- group-balanced resampling: every Male × Gray_Hair group drawn equally often (with replacement);
- standard augmentation: flips, random crops with padding, colour jitter;
- oracle: the same training on an unbiased (0.5) training split of the same size — an upper
  reference that needs data nobody has, measured on the biased folder's test split;
- fairloop: the mitigation loop started from the ERM checkpoint; its wall time is the loop's alone
  (the ERM row pays for the baseline), its images are the counterfactuals it generated.

Prints one table (accuracy, worst-group accuracy, DI, SPD, EOD, AOD, inside the fair band, wall
time, images generated), then the headline: the share of the ERM → oracle worst-group gap fairloop
closes, whether it beats every non-oracle baseline on worst-group accuracy, whether it ends inside
the fair band, and its accuracy change vs ERM. Datasets are cached in --workdir (shared with
bench_shortcut.py's naming); each invocation writes its ERM checkpoint, run folder and a private
memory folder (no memory from other runs leaks in) under a fresh --workdir/mitigation-<stamp>/, and
the table as JSON to --workdir/mitigation.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fairloop.data.datasets import FaceDataset, load_dataset
from fairloop.data.synthfaces import Scenario, write_synthfaces
from fairloop.io import atomic_write_json
from fairloop.runs import RunConfig
from fairloop.tools.metrics import FairBand, fairness_report
from fairloop.vision.train import TrainConfig, group_balanced_weights, predict_proba, train_classifier

TARGET, PROTECTED, PRIVILEGED = "Male", "Gray_Hair", 1
BASELINES = ("ERM", "Reweighing (AIF360)", "group-balanced resampling", "standard augmentation")
ORACLE, FAIRLOOP = "oracle (unbiased train)", "fairloop"


def synthfaces(workdir: Path, n: int, correlation: float, seed: int) -> FaceDataset:
    """The SynthFaces folder of this size, correlation and seed, synthesized once per --workdir."""
    folder = workdir / f"synthfaces-{n}-{correlation}-{seed}"
    if not (folder / "list_attr_celeba.txt").exists():
        print(f"synthesizing {folder} …", flush=True)
        write_synthfaces(folder, n=n, scenario=Scenario(target=TARGET, spurious=PROTECTED, correlation=correlation),
                         seed=seed, force=True)
    return load_dataset("celeba", folder)


def test_metrics(model, test: FaceDataset, config: TrainConfig) -> dict[str, Any]:
    """Fairness report of a model on ``test`` (point estimates; no bootstrap)."""
    probs = predict_proba(model, test.images(config.image_size), device=next(model.parameters()).device)
    return fairness_report(y_true=test.labels(TARGET), y_pred=(probs >= 0.5).astype(int),
                           protected=test.labels(PROTECTED), privileged_value=PRIVILEGED, target_name=TARGET,
                           protected_name=PROTECTED, n_bootstrap=0).as_dict()


def reweighing_weights(train: FaceDataset) -> np.ndarray:
    """AIF360 Reweighing's instance weights of the training rows, in their order."""
    import pandas as pd

    from fairloop.tools.metrics import _quiet_aif360_import

    with _quiet_aif360_import():
        from aif360.algorithms.preprocessing import Reweighing
        from aif360.datasets import BinaryLabelDataset

    y, a = train.labels(TARGET), train.labels(PROTECTED)
    data = BinaryLabelDataset(df=pd.DataFrame({TARGET: y, PROTECTED: a}), label_names=[TARGET],
                              protected_attribute_names=[PROTECTED], favorable_label=1, unfavorable_label=0)
    weights = Reweighing(unprivileged_groups=[{PROTECTED: 1 - PRIVILEGED}],
                         privileged_groups=[{PROTECTED: PRIVILEGED}]).fit_transform(data).instance_weights
    # Reweighing's definition, w(a, y) = P(a) P(y) / P(a, y): guards against a reordering of rows
    expected = np.array([(a == ai).mean() * (y == yi).mean() / ((a == ai) & (y == yi)).mean() for ai, yi in zip(a, y)])
    if not np.allclose(weights, expected):
        raise RuntimeError("AIF360 Reweighing's weights do not match P(a)P(y)/P(a,y) row by row")
    return np.asarray(weights, dtype=np.float64)


def row(method: str, metrics: dict[str, Any], seconds: float, images: int, band: FairBand, **extra) -> dict[str, Any]:
    keys = ("accuracy", "worst_group_accuracy", "disparate_impact", "statistical_parity_difference",
            "equal_opportunity_difference", "average_odds_difference")
    check = band.check(metrics)
    return {"method": method, **{k: metrics[k] for k in keys}, "worst_group": metrics.get("worst_group"),
            "in_band": check.inside, "outside_band": check.outside, "seconds": seconds, "images": images, **extra}


def train_row(method: str, data: FaceDataset, test: FaceDataset, config: TrainConfig, band: FairBand,
              prepare=None, **kwargs) -> tuple[dict[str, Any], Any, dict]:
    """Train one method (``prepare()`` computes its keyword arguments inside the timed span)."""
    print(f"training: {method} …", flush=True)
    t0 = time.perf_counter()
    model, history = train_classifier(data, TARGET, config, **(prepare() if prepare else {}), **kwargs)
    seconds = time.perf_counter() - t0
    return row(method, test_metrics(model, test, config), seconds, 0, band,
               best_val_accuracy=history["best_val_accuracy"]), model, history


def run_fairloop(args, data: FaceDataset, checkpoint: Path, session: Path):
    """Run the loop from the ERM checkpoint; (summary.json, loop seconds, run folder, RunConfig)."""
    from fairloop.graphs.loop import run_loop
    from fairloop.runs import RunFolder, RunServices

    config = RunConfig(dataset="celeba", root=str(data.root), target=TARGET, protected=PROTECTED,
                       privileged_value=PRIVILEGED, llm=args.llm, llm_model=args.llm_model,
                       generator=args.generator, max_iterations=args.max_iterations, max_images=args.max_images,
                       images_per_iteration=args.images_per_iteration, arch=args.arch, baseline_epochs=args.epochs,
                       baseline=str(checkpoint), seed=args.seed, device=args.device,
                       memory=str(session / "memory")).validate()
    folder = RunFolder(session / "run")
    folder.save_config(config)
    print(f"fairloop: run folder {folder.path}", flush=True)
    services = RunServices(config, folder, log=lambda line: print(f"  fairloop {line}", flush=True))
    t0 = time.perf_counter()
    state = run_loop(services)
    seconds = time.perf_counter() - t0
    print(f"  fairloop {state['status']}", flush=True)
    return json.loads((folder.path / "summary.json").read_text()), seconds, folder.path, config


def fmt(value: float | None, spec: str) -> str:
    return "undef" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'method':<27} {'acc':>6} {'WGA':>6} {'DI':>6} {'SPD':>7} {'EOD':>7} {'AOD':>7} {'band':>5} "
              f"{'wall s':>8} {'images':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<27} {fmt(r['accuracy'], '6.3f')} {fmt(r['worst_group_accuracy'], '6.3f')} "
              f"{fmt(r['disparate_impact'], '6.3f')} {fmt(r['statistical_parity_difference'], '+7.3f')} "
              f"{fmt(r['equal_opportunity_difference'], '+7.3f')} {fmt(r['average_odds_difference'], '+7.3f')} "
              f"{'yes' if r['in_band'] else 'no':>5} {r['seconds']:>8.0f} {r['images']:>7}")


def headline(rows: dict[str, dict[str, Any]], band: FairBand) -> dict[str, Any]:
    erm, oracle, fl = rows["ERM"], rows[ORACLE], rows[FAIRLOOP]
    wga = {name: r["worst_group_accuracy"] or 0.0 for name, r in rows.items()}
    gap = wga[ORACLE] - wga["ERM"]
    best_other = max(BASELINES, key=lambda name: wga[name])
    return {
        "gap_closed": (wga[FAIRLOOP] - wga["ERM"]) / gap if gap > 1e-9 else None,
        "erm_oracle_gap": gap,
        "beats_every_baseline": all(wga[FAIRLOOP] > wga[name] for name in BASELINES),
        "best_baseline": best_other,
        "margin_over_best_baseline": wga[FAIRLOOP] - wga[best_other],
        "in_band": fl["in_band"],
        "outside_band": fl["outside_band"],
        "band": {"di_low": band.di_low, "di_high": band.di_high, "max_abs_diff": band.max_abs_diff},
        "accuracy_change_vs_erm": (fl["accuracy"] or 0.0) - (erm["accuracy"] or 0.0),
        "oracle_accuracy_change_vs_erm": (oracle["accuracy"] or 0.0) - (erm["accuracy"] or 0.0),
    }


def print_headline(h: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    wga = {name: r["worst_group_accuracy"] or 0.0 for name, r in rows.items()}
    if (rows["ERM"]["accuracy"] or 0.0) < 0.6:
        print(f"note: ERM is near chance (accuracy {rows['ERM']['accuracy']:.3f}): too few rows or epochs to learn "
              "even the shortcut, and a near-constant classifier is trivially inside the fair band; the comparison "
              "says little at this size")
    if h["gap_closed"] is None:
        print(f"ERM → oracle worst-group gap: {h['erm_oracle_gap']:+.3f} (no gap to close: the oracle is not better "
              "than ERM at this size)")
    else:
        print(f"fairloop closes {h['gap_closed']:.0%} of the ERM → oracle worst-group gap "
              f"({wga['ERM']:.3f} → {wga[FAIRLOOP]:.3f}; oracle {wga[ORACLE]:.3f})")
    print(f"beats every non-oracle baseline on worst-group accuracy: {'yes' if h['beats_every_baseline'] else 'no'} "
          f"(best baseline: {h['best_baseline']}, {wga[h['best_baseline']]:.3f}; margin "
          f"{h['margin_over_best_baseline']:+.3f})")
    b = h["band"]
    band = f"{b['di_low']:g} ≤ DI ≤ {b['di_high']:g}, |SPD|, |EOD|, |AOD| ≤ {b['max_abs_diff']:g}"
    print(f"inside the fair band ({band}) on test: {'yes' if h['in_band'] else 'no'}"
          + ("" if h["in_band"] else " — " + "; ".join(f"{k}: {v}" for k, v in h["outside_band"].items())))
    print(f"accuracy change vs ERM: {100 * h['accuracy_change_vs_erm']:+.1f} points "
          f"(oracle: {100 * h['oracle_accuracy_change_vs_erm']:+.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fairloop-bench-mitigation"))
    parser.add_argument("--llm", default="rules", help="fairloop's analyzer: rules or openai")
    parser.add_argument("--generator", default=RunConfig.generator, help="fairloop's generator: embedded or render")
    parser.add_argument("--llm-model", default=None, help="model name for --llm openai")
    parser.add_argument("--max-iterations", type=int, default=RunConfig.max_iterations)
    parser.add_argument("--max-images", type=int, default=RunConfig.max_images, help="fairloop's counterfactual images, whole run")
    parser.add_argument("--images-per-iteration", type=int, default=RunConfig.images_per_iteration)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from fairloop.vision.models import save_checkpoint

    workdir = args.workdir.expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    session = workdir / f"mitigation-{time.strftime('%Y%m%d-%H%M%S')}"
    while session.exists():  # two invocations in the same second get two folders
        session = session.with_name(session.name + "x")
    session.mkdir()

    biased = synthfaces(workdir, args.n, 0.95, args.seed)
    unbiased = synthfaces(workdir, args.n, 0.5, args.seed)
    test = biased.split("test")
    same_test = unbiased.split("test").table.drop(columns="path").equals(test.table.drop(columns="path"))
    band = FairBand()
    config = TrainConfig(arch=args.arch, epochs=args.epochs, seed=args.seed, device=args.device)
    train = biased.split("train")

    rows: dict[str, dict[str, Any]] = {}
    rows["ERM"], erm_model, erm_history = train_row("ERM", biased, test, config, band)
    checkpoint = session / "erm"
    save_checkpoint(erm_model, checkpoint, {
        "arch": config.arch, "target": TARGET, "image_size": config.image_size, "classes": [f"not {TARGET}", TARGET],
        "dataset": biased.name, "root": str(biased.root), "data_hash": biased.fingerprint(), "history": erm_history,
        "role": "baseline (bench_mitigation ERM)"})
    rows["Reweighing (AIF360)"] = train_row("Reweighing (AIF360)", biased, test, config, band,
                                            prepare=lambda: {"sample_weights": reweighing_weights(train)})[0]
    rows["group-balanced resampling"] = train_row(
        "group-balanced resampling", biased, test, config, band,
        prepare=lambda: {"sampler_weights": group_balanced_weights(train.labels(TARGET), train.labels(PROTECTED))})[0]
    rows["standard augmentation"] = train_row("standard augmentation", biased, test,
                                              replace(config, augment="standard"), band)[0]
    # trained (and model-selected) on the unbiased folder, measured on the biased folder's test split
    rows[ORACLE] = train_row(ORACLE, unbiased, test, config, band)[0]

    summary, seconds, run_folder, run_config = run_fairloop(args, biased, checkpoint, session)
    rows[FAIRLOOP] = row(FAIRLOOP, summary["final"], seconds, int(summary["images_used"]), band,
                         run_folder=str(run_folder), status=summary["status"],
                         iterations=[{k: it.get(k) for k in ("iteration", "accepted", "reason", "n_generated")}
                                     for it in summary["iterations"]])
    start = summary["initial"]  # fairloop's own measurement of the ERM checkpoint
    if start["accuracy"] != rows["ERM"]["accuracy"] or start["worst_group_accuracy"] != rows["ERM"]["worst_group_accuracy"]:
        print(f"note: fairloop measured its starting model at accuracy {start['accuracy']:.4f}, WGA "
              f"{start['worst_group_accuracy']:.4f}; the ERM row has {rows['ERM']['accuracy']:.4f}, "
              f"{rows['ERM']['worst_group_accuracy']:.4f}")

    print()
    print(f"SynthFaces n={args.n} (train {len(train)}, test {len(test)}), {TARGET} vs {PROTECTED}, training "
          f"P(Gray_Hair == Male) = 0.95; {args.arch}, {args.epochs} epochs, seed {args.seed}, device {args.device}; "
          f"fairloop: --llm {args.llm}, --generator {args.generator}, ≤ {args.max_iterations} iterations, ≤ {args.max_images} images, fine-tuning "
          f"{run_config.finetune_epochs} epochs per iteration")
    print("balanced test split of the biased folder for every row"
          + ("" if same_test else " (the unbiased folder's own test rows differ; the oracle is measured on these)"))
    print_table(list(rows.values()))
    print()
    h = headline(rows, band)
    print_headline(h, rows)
    print(f"fairloop run folder: {run_folder}")

    out = workdir / "mitigation.json"
    atomic_write_json(out, {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "train_rows": len(train), "test_rows": len(test), "target": TARGET, "protected": PROTECTED,
                   "oracle_test_rows_identical": bool(same_test)},
        "session": str(session), "run_folder": str(run_folder), "rows": list(rows.values()), "headline": h})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Reinforcement (seed 001, its Table 2): fine-tune on counterfactuals of the weak edits, and score
the result where the weaknesses were not found.

The weak edits come from a report on validation sources. The training counterfactuals are the same
edits of **training** images, the counterfactual test set the same edits of **test** images: no
source serves twice (:func:`draw_counterfactuals` draws from one split at a time). Four models:

========================= ==================================================================
``erm``                   the classifier as it is
``augment``               standard augmentation (flips, crops, colour jitter) on real images, the
                          seed's recipe otherwise: head-only fine-tune, WiSE-FT α = 0.3
``reinforce-seed``        the counterfactuals mixed in, head-only, α = 0.3 (seed 001)
``reinforce``             the counterfactuals mixed in, fairloop's fine-tune: every weight, α
                          chosen on validation within the accuracy budget
========================= ==================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairloop.weakness.find import edit_counterfactuals, split_sources

#: Weak edits reinforced: the worst ones whose ΔAcc interval lies below zero.
TOP_EDITS = 3
#: Seed 001's WiSE-FT weight.
SEED_ALPHA = 0.3
ARMS = ("erm", "augment", "reinforce-seed", "reinforce")


def reinforced_edits(weaknesses: list[dict[str, Any]], target: str, k: int = TOP_EDITS) -> list[dict[str, Any]]:
    """The ``k`` edits of a report (its ``weaknesses``, ranked worst first) to reinforce: beyond the
    noise, never the class; each class's worst first, as seed 001 reinforces per class, then the
    worst of the rest. Taking the ``k`` worst overall reinforced one class only in two of three
    seeds on the default scenario, where the shortcut has a half in each class."""
    weak = [w for w in weaknesses if w.get("significant") and w["attribute"] != target]
    firsts = [next(w for w in weak if w["label"] == label) for label in (1, 0) if any(w["label"] == label for w in weak)]
    chosen = sorted(firsts, key=weak.index)[:k]
    rest = [w for w in weak if w not in chosen]
    return sorted(chosen + rest[:k - len(chosen)], key=weak.index)


def draw_counterfactuals(dataset, generator, edits: list[dict[str, Any]], counts: list[int], *, target: str,
                         split: str, out_dir: Path, protected: str | None = None, oracle=None, seed: int = 0,
                         progress=None) -> pd.DataFrame:
    """``counts[i]`` counterfactuals of ``edits[i]`` made from sources of ``split`` of its class (each
    source once), kept when ``oracle`` confirms them (generators that are not exact): rows ``path``, ``label``, ``protected``,
    ``source_id``, ``attribute``, ``value``."""
    table, ids = dataset.table, dataset.split(split).table.index
    rng = np.random.default_rng([seed, len(split)])
    rows = []
    total, done = sum(counts), 0
    for edit, n in zip(edits, counts):
        attribute, value, label = edit["attribute"], int(edit["value"]), int(edit["label"])
        sources = split_sources(table, ids, attribute=attribute, value=value, target=target, label=label, n=n, rng=rng)
        if not sources:
            continue
        report = (lambda stage, k, m, offset=done: progress(f"counterfactuals ({split})", offset + k, total)) \
            if progress else None
        made = edit_counterfactuals(dataset, generator, target=target, attribute=attribute, value=value, label=label,
                                    sources=sources, seed=int(rng.integers(2**31 - 1)), out_dir=out_dir, oracle=oracle,
                                    progress=report)
        done += n
        for r in made:
            shown = r.get("attributes", {}).get(protected) if protected else None
            rows.append({"path": str(r["path"]), "label": label, "source_id": r["source_id"], "attribute": attribute,
                         "value": value, "protected": int(shown if shown is not None
                                                          else table.at[r["source_id"], protected] if protected else -1)})
    return pd.DataFrame(rows, columns=["path", "label", "protected", "source_id", "attribute", "value"])


def reinforce(classifier, dataset, generator, weaknesses: list[dict[str, Any]], *, target: str, protected: str,
              out_dir: Path, n_images: int = 1000, n_test: int = 100, finetune_epochs: int = 2, image_size: int = 64,
              oracle=None, seed: int = 0, device: str = "cpu", progress=None) -> dict[str, Any]:
    """Seed 001's Table 2 for one classifier: the four :data:`ARMS` on the real test split (accuracy,
    worst-group accuracy and EOD for ``protected``) and on the counterfactual test set (``n_test``
    edits of test images per reinforced edit). ``protected`` also steers fairloop's α (validation)."""
    from dataclasses import replace

    from fairloop.agent.analyzer import default_mix
    from fairloop.strategies.base import proportional_counts
    from fairloop.tools.finetune import FinetuneConfig, finetune

    edits = reinforced_edits(weaknesses, target)
    if not edits:
        return {"edits": [], "arms": {}, "note": "no weakness beyond the noise: nothing to reinforce"}
    counts = proportional_counts(n_images, [-float(w["delta_acc"]) for w in edits])
    train_cf = draw_counterfactuals(dataset, generator, edits, counts, target=target, split="train", out_dir=out_dir,
                                    protected=protected, oracle=oracle, seed=seed, progress=progress)
    test_cf = draw_counterfactuals(dataset, generator, edits, [n_test] * len(edits), target=target, split="test",
                                   out_dir=out_dir, protected=protected, oracle=oracle, seed=seed, progress=progress)
    mix = default_mix(len(train_cf), len(dataset.split("train")))
    seed_recipe = FinetuneConfig(mode="head", epochs=finetune_epochs, mix_ratio=mix, alphas=(1.0,),
                                 image_size=image_size, seed=seed, device=device)
    models = {"erm": classifier}
    augmented = finetune(classifier, dataset, None, target=target, protected=protected,
                         config=replace(seed_recipe, augment="standard", mix_ratio=0.0), progress=progress)
    models["augment"] = _at_alpha(augmented, classifier, SEED_ALPHA)
    seed_run = finetune(classifier, dataset, train_cf, target=target, protected=protected, config=seed_recipe,
                        progress=progress)
    models["reinforce-seed"] = _at_alpha(seed_run, classifier, SEED_ALPHA)
    ours = finetune(classifier, dataset, train_cf, target=target, protected=protected,
                    config=FinetuneConfig(epochs=finetune_epochs, mix_ratio=mix, image_size=image_size, seed=seed,
                                          device=device), progress=progress)
    models["reinforce"] = ours.model
    alphas = {"erm": None, "augment": SEED_ALPHA, "reinforce-seed": SEED_ALPHA, "reinforce": ours.alpha}
    arms = {name: {**score(model, dataset, test_cf, target=target, protected=protected, image_size=image_size),
                   "alpha": alphas[name]} for name, model in models.items()}
    return {"edits": [{k: w[k] for k in ("attribute", "value", "label", "edit", "delta_acc")} for w in edits],
            "n_train_counterfactuals": len(train_cf), "n_test_counterfactuals": len(test_cf), "mix_ratio": mix,
            "train_sources": sorted(set(train_cf["source_id"])), "test_sources": sorted(set(test_cf["source_id"])),
            "arms": arms}


def _at_alpha(result, base, alpha: float):
    """The fine-tune's θ1 interpolated with the starting model at a fixed ``alpha`` (seed 001's WiSE-FT)."""
    import copy

    from fairloop.tools.finetune import interpolate

    model = copy.deepcopy(base)
    theta0 = {k: v.detach().cpu() for k, v in base.state_dict().items()}
    model.load_state_dict(interpolate(theta0, result.finetuned_state, alpha))
    return model.eval()


def score(model, dataset, counterfactuals: pd.DataFrame, *, target: str, protected: str, image_size: int = 64):
    """Accuracy, worst-group accuracy and EOD on the real test split; accuracy on the counterfactual test set."""
    from fairloop.data.datasets import ImageStream
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.train import predict_proba

    test = dataset.split("test")
    predicted = (predict_proba(model, test.images(image_size)) >= 0.5).astype(int)
    report = fairness_report(y_true=test.labels(target), y_pred=predicted, protected=test.table[protected].to_numpy(),
                             target_name=target, protected_name=protected, n_bootstrap=0).as_dict()
    cf = (predict_proba(model, ImageStream(counterfactuals["path"].tolist(), image_size)) >= 0.5).astype(int)
    return {"accuracy": report["accuracy"], "worst_group_accuracy": report["worst_group_accuracy"],
            "equal_opportunity_difference": report["equal_opportunity_difference"],
            "counterfactual_accuracy": float((cf == counterfactuals["label"].to_numpy()).mean()) if len(cf) else None}

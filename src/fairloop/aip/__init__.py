"""Attribute-informed perturbation (seed 002): ask the *classifier* which attribute changes flip it.

:mod:`fairloop.aip.generator` is the attribute-conditional autoencoder (``fairloop generator
train-aip``); :mod:`fairloop.aip.search` the search and its baselines; :func:`counterfactual_search`
runs them over a split's images and writes the report behind ``fairloop aip``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairloop.aip.search import METHODS, SearchConfig, check_method_names, decide, exact_flips, run_method, summarize

#: Image pairs saved per method (original | reconstruction | counterfactual).
PAIRS_SAVED = 12


def query_images(dataset, split: str, n: int, seed: int) -> list[str]:
    """``n`` ids of ``split`` drawn at random (all when fewer), in a fixed order for the seed."""
    ids = np.array(dataset.split(split).table.index)
    return [str(i) for i in np.random.default_rng(seed).permutation(ids)[:n]]


def counterfactual_search(classifier, dataset, target: str, *, n: int = 200, mode: str = "flip",
                          methods: tuple[str, ...] = ("aip",), split: str = "test", generator=None,
                          config: SearchConfig | None = None, out_dir: Path | None = None, seed: int = 0,
                          device: str | torch.device = "cpu", log=print) -> dict[str, Any]:
    """Every method of ``methods`` on the same ``n`` query images of ``split``; the report as a dict
    (the first method's scores at the top level, every method under ``methods``)."""
    from fairloop.aip.generator import check_fits, load_aip_generator
    from fairloop.data.synthfaces import is_synthfaces, read_cues, read_identities
    from fairloop.tools.quality import AttributeOracle

    config = config or SearchConfig()
    synthfaces = is_synthfaces(dataset.root)
    check_method_names(list(methods), mode, synthfaces)
    device = torch.device(device)
    model = (generator or load_aip_generator()).to(device)
    names = list(model.attributes)
    check_fits(model, dataset, target)
    classifier = classifier.to(device).eval().requires_grad_(False)
    oracle = AttributeOracle.packaged(str(device))
    ids = query_images(dataset, split, n, seed)
    table = dataset.table.loc[ids]
    x = load_images(table["path"].tolist()).to(device)
    a0 = torch.tensor(table[names].to_numpy(np.float32), device=device)
    labels = table[target].to_numpy(int)
    frozen = [names.index(target)] if mode == "keep-label" else []
    with torch.no_grad():
        original_decisions = decide(classifier, x)
        z = model.encode(x)
        recon = model.decode(z, a0)
        recon_decisions = decide(classifier, recon)
        z_scale = z.std(0).clamp_min(1e-6) if len(z) > 1 else torch.ones_like(z[0])   # LPR's unit per coordinate
    started = time.perf_counter()
    report: dict[str, Any] = {"target": target, "mode": mode, "split": split, "n": len(ids),
                              "classifier_accuracy": round(float((original_decisions == labels).mean()), 4),
                              "reconstruction_agreement": round(float((recon_decisions == original_decisions).mean()), 4),
                              "search": asdict(config), "methods": {}}
    for method in methods:
        log(f"aip: {method} on {len(ids)} {split} images ({mode}) …")
        if method == "exact":
            rows = table[names].astype(int).to_dict("records")
            identities = read_identities(dataset.root).loc[ids].astype(int).tolist()
            result = exact_flips(classifier, rows, identities, target, names, original_decisions,
                                 cues=read_cues(dataset.root))
            reference, reference_decisions = x, original_decisions
        else:
            latent = method != "fgsm"
            reference, reference_decisions = (recon, recon_decisions) if latent else (x, original_decisions)
            result = run_method(method, model, classifier, x, a0, reference_decisions, frozen=frozen, config=config,
                                seed=seed)
        scores = summarize(result, reference=reference, reference_decisions=reference_decisions, labels=labels,
                           mode=mode, model=model, oracle=oracle, target=target, attribute_names=names,
                           z_scale=z_scale, tolerance=config.tolerance)
        scores["images"] = per_image(ids, labels, result, reference_decisions, names)
        if out_dir is not None:
            scores["pairs"] = save_pairs(Path(out_dir) / method, ids, x, recon, result.images, reference_decisions,
                                         result.decisions)
        report["methods"][method] = scores
        log(f"aip: {method}: flip rate {scores['flip_rate']:.3f}, valid {scores['valid_flip_rate']}, "
            f"LPR {scores['lpr']}, {scores['seconds_per_query']:.3f} s a query image")
    first = report["methods"][methods[0]]
    report.update({k: first[k] for k in ("flip_rate", "valid_flip_rate", "lpr", "seconds_per_query", "attributes")})
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def load_images(paths: list[str]) -> torch.Tensor:
    """Image files as one N×3×64×64 tensor in [0, 1] (the classifiers' input)."""
    from PIL import Image

    from fairloop.tools.quality import as_image_tensor

    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(img.convert("RGB"))
    return as_image_tensor(images)


def per_image(ids: list[str], labels: np.ndarray, result, before: np.ndarray, names: list[str],
              shown: int = 3) -> list[dict[str, Any]]:
    """One row per query: its class, decisions, calls spent and what changed (the ``shown`` largest
    attribute moves of a latent method, or the exact method's change)."""
    rows = []
    for i, image_id in enumerate(ids):
        row: dict[str, Any] = {"id": image_id, "label": int(labels[i]), "decision_before": int(before[i]),
                               "decision_after": int(result.decisions[i]), "queries": int(result.queries[i])}
        if result.delta_a is not None:
            order = np.argsort(-np.abs(result.delta_a[i]))[:shown]
            row["delta_a"] = {names[j]: round(float(result.delta_a[i, j]), 3) for j in order
                              if abs(result.delta_a[i, j]) >= 0.01}
        elif result.moved:
            row["change"] = result.moved[i]
        rows.append(row)
    return rows


def save_pairs(folder: Path, ids: list[str], x: torch.Tensor, recon: torch.Tensor, counterfactual: torch.Tensor,
               before: np.ndarray, after: np.ndarray) -> list[dict[str, Any]]:
    """The first :data:`PAIRS_SAVED` flipped images as original | reconstruction | counterfactual PNGs."""
    saved = []
    for i in np.flatnonzero(before != after)[:PAIRS_SAVED]:
        path = save_png(torch.cat([x[i], recon[i], counterfactual[i]], 2), folder / f"{Path(ids[i]).stem}.png")
        saved.append({"id": ids[i], "image": str(path), "decision_before": int(before[i]),
                      "decision_after": int(after[i])})
    return saved


def save_png(image: torch.Tensor, path: Path) -> Path:
    """A 3×H×W tensor in [0, 1] as a PNG, written atomically."""
    from PIL import Image

    from fairloop.io import atomic_write

    pixels = Image.fromarray(image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    return atomic_write(path, lambda tmp: pixels.save(tmp, format="PNG"))


__all__ = ["METHODS", "PAIRS_SAVED", "counterfactual_search", "load_images", "query_images", "save_png"]

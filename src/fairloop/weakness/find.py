"""Weakness finding (seed 001): how much a classifier's accuracy drops when one attribute of a
face changes and its class does not.

For each kept edit (attribute → value) and each class, fairloop draws sources from **one** split (validation by
default: weaknesses are found there, reinforced on training sources and scored on test sources —
:func:`split_sources` never mixes them), makes each source's counterfactual with the generator
(class unchanged), keeps the pairs the attribute oracle confirms (edit shown, class kept) when the
generator is not exact, and compares the classifier on the pairs:

- ``acc_original`` / ``acc_counterfactual``: accuracy on the sources and on their counterfactuals;
- ``delta_acc`` = ``acc_counterfactual − acc_original`` (seed 001's ΔAcc; negative is a weakness);
- ``flip_rate``: share of pairs where the decision changed;

each with a paired bootstrap 95 % interval over the sources. Edits are ranked worst ΔAcc first;
one whose interval lies below zero is a weakness beyond the noise (with ~30 edits tested, expect
one or two intervals to miss zero by chance: read the ranking, not a single interval).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairloop.weakness.perturb import Perturbation, direction, edit_phrase, factor_of

#: Bootstrap resamples of each interval.
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass
class Weakness:
    """One edit's effect on the classifier's accuracy on one class, over ``n`` confirmed
    source–counterfactual pairs."""

    attribute: str
    value: int
    label: int                     # the class of the sources (seed 001 ranks edits per class)
    n: int
    acc_original: float
    acc_counterfactual: float
    delta_acc: float
    flip_rate: float
    ci: dict[str, list[float]]
    drawn: int
    pairs: list[dict[str, Any]] = field(default_factory=list)   # source/counterfactual paths and decisions

    @property
    def significant(self) -> bool:
        """ΔAcc's interval lies below zero."""
        return self.ci["delta_acc"][1] < 0

    def as_dict(self, pairs: int = 0) -> dict[str, Any]:
        return {"factor": factor_of(self.attribute), "attribute": self.attribute, "value": self.value,
                "direction": direction(self.value), "label": self.label,
                "edit": edit_phrase(self.attribute, self.value),
                "delta_acc": round(self.delta_acc, 4), "flip_rate": round(self.flip_rate, 4), "n": self.n,
                "ci": {k: [round(v, 4) for v in lo_hi] for k, lo_hi in self.ci.items()},
                "acc_original": round(self.acc_original, 4), "acc_counterfactual": round(self.acc_counterfactual, 4),
                "drawn": self.drawn, "significant": self.significant, "pairs": self.pairs[:pairs]}


@dataclass
class WeaknessReport:
    """Edits ranked worst first, with the filters' bookkeeping."""

    target: str
    split: str
    weaknesses: list[Weakness]
    perturbation: Perturbation
    generator: str
    verified: bool                 # pairs were checked by the attribute oracle
    source_ids: list[str]          # every source used: all from ``split``
    seconds: float
    caption_source: str = "table"

    def top(self, k: int = 3, *, significant: bool = True) -> list[Weakness]:
        return [w for w in self.weaknesses if w.significant or not significant][:k]

    def attributes(self) -> list[dict[str, Any]]:
        """Attributes ranked by how much the model leans on them **both ways**, then by their worst edit.

        A shortcut is read as evidence for one class and its absence as evidence for the other, so
        it costs accuracy in two mirrored edits: removing it from the class it is paired with, adding
        it to the other (the planted gray hair: men − gray hair and women + gray hair). ``both_ways``
        is the smaller of those two drops (0 when an attribute has no such pair); attributes whose two
        drops are both beyond the noise come first. A one-sided drop is weaker evidence of a shortcut:
        on the default scenario adding blond hair to men costs the most of any single edit, yet
        removing it from women costs little — blond is one of the colours that are not gray.
        ``significant``: the worst edit's interval lies below 0."""
        by_name: dict[str, list[Weakness]] = {}
        for w in self.weaknesses:
            by_name.setdefault(w.attribute, []).append(w)
        out = []
        for name, rows in by_name.items():   # rows keep the ranking's order: rows[0] is the worst
            cell = {(w.label, w.value): w for w in rows}
            mirrored = [(cell[(1, v)], cell[(0, 1 - v)]) for v in (0, 1) if (1, v) in cell and (0, 1 - v) in cell]
            pair = min(mirrored, key=lambda p: max(p[0].delta_acc, p[1].delta_acc), default=None)
            both = max(pair[0].delta_acc, pair[1].delta_acc) if pair else 0.0
            out.append({"attribute": name, "both_ways": round(min(both, 0.0), 4),
                        "both_ways_edits": [f"{self.target}={w.label} {direction(w.value)}" for w in pair] if pair else [],
                        "both_ways_significant": bool(pair) and all(w.significant for w in pair),
                        "worst_delta_acc": round(rows[0].delta_acc, 4), "worst_label": rows[0].label,
                        "worst_edit": f"{self.target}={rows[0].label} {direction(rows[0].value)}",
                        "worst_direction": direction(rows[0].value), "significant": rows[0].significant,
                        "mean_flip_rate": round(float(np.mean([w.flip_rate for w in rows])), 4)})
        # shortcuts beyond the noise (both mirrored intervals below 0) first, by both_ways; then the rest by worst edit
        return sorted(out, key=lambda a: (not a["both_ways_significant"],
                                          a["both_ways"] if a["both_ways_significant"] else a["worst_delta_acc"],
                                          a["worst_delta_acc"], -a["mean_flip_rate"]))

    def as_dict(self, pairs: int = 6) -> dict[str, Any]:
        p = self.perturbation
        return {"target": self.target, "split": self.split, "generator": self.generator,
                "oracle_checked": self.verified, "captions": {"from": self.caption_source, "n": p.captions},
                "perturber": {"backend": p.backend, "seconds": round(p.seconds, 1), "filters": p.filters(),
                              "unsupported": p.unsupported(), "errors": p.errors[:20], "raw": p.raw[:5],
                              "rejected": [{"reason": reason, "factor": e.factor, "attribute": e.attribute,
                                            "value": e.value, "caption": e.caption, "source_caption": e.source_caption}
                                           for e, reason in p.rejected[:12]]},
                "weaknesses": [w.as_dict(pairs) for w in self.weaknesses], "attributes": self.attributes(),
                "n_sources": len(self.source_ids), "seconds": round(self.seconds, 1),
                "note": ("ΔAcc = accuracy on the counterfactuals − on their sources; CIs are paired bootstrap "
                         f"{CONFIDENCE:.0%} intervals over sources; significant = the ΔAcc interval lies below 0")}


def split_sources(table: pd.DataFrame, split_ids: pd.Index, *, attribute: str, value: int, target: str,
                  label: int, n: int, rng: np.random.Generator) -> list[str]:
    """Up to ``n`` ids of ``split_ids`` of class ``label`` that the edit changes (``attribute`` ≠ ``value``)."""
    rows = table.loc[split_ids]
    pool = rows.index[(rows[attribute] != value) & (rows[target] == label)]
    return [str(i) for i in rng.permutation(np.array(pool))[:n]]


def edit_counterfactuals(dataset, generator, *, target: str, attribute: str, value: int, label: int,
                         sources: list[str], seed: int, out_dir: Path, oracle=None, progress=None) -> list[dict[str, Any]]:
    """The generator's manifest rows for ``sources`` (ids of class ``label``) with ``attribute`` set to
    ``value``, class unchanged; with a generator that is not exact, only those ``oracle`` confirms."""
    from fairloop.agent.analyzer import describe
    from fairloop.generators import GenerationRequest

    request = GenerationRequest(prompt=describe(target, label, attribute, bool(value)), n=len(sources), label=label,
                                target=target, source_ids=tuple(sources), seed=seed)
    rows = generator.generate(request, Path(out_dir) / "images", sources=dataset, progress=progress).rows
    if oracle is None or generator.exact:   # an exact generator's images need no check
        return rows
    from fairloop.tools.quality import verify_generated

    passed, _ = verify_generated(oracle, rows, target)
    return [r for r, ok in zip(rows, passed) if ok]


def paired_bootstrap(original: np.ndarray, counterfactual: np.ndarray, rng: np.random.Generator,
                     n_bootstrap: int = N_BOOTSTRAP) -> dict[str, list[float]]:
    """Percentile intervals of ΔAcc and flip rate from ``original``/``counterfactual`` correctness (0/1)
    and decisions: the pairs are resampled together."""
    correct_o, correct_c, flips = original[:, 0], counterfactual[:, 0], original[:, 1] != counterfactual[:, 1]
    idx = rng.integers(0, len(correct_o), size=(n_bootstrap, len(correct_o)))
    delta = correct_c[idx].mean(1) - correct_o[idx].mean(1)
    flip = flips[idx].mean(1)
    lo, hi = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    return {"delta_acc": [float(np.percentile(delta, lo)), float(np.percentile(delta, hi))],
            "flip_rate": [float(np.percentile(flip, lo)), float(np.percentile(flip, hi))]}


def find_weaknesses(classifier, dataset, generator, perturbation: Perturbation, *, target: str, out_dir: Path,
                    split: str = "val", per_edit: int = 40, image_size: int = 64, oracle=None, seed: int = 0,
                    max_edits: int | None = None, n_bootstrap: int = N_BOOTSTRAP, progress=None,
                    caption_source: str = "table") -> WeaknessReport:
    """Score every kept edit of ``perturbation`` on up to ``per_edit`` sources of ``split``.

    Images go to ``out_dir/images`` (content-addressed by the render backend, so a rerun redraws
    nothing). ``oracle`` (an :class:`~fairloop.tools.quality.AttributeOracle`) drops pairs whose
    counterfactual does not show the edit or shows the other class, where the generator is not exact."""
    from fairloop.data.datasets import ImageStream
    from fairloop.vision.train import predict_proba

    start = time.perf_counter()
    table = dataset.table
    split_ids = dataset.split(split).table.index
    keys = perturbation.edit_keys()[:max_edits]
    rng = np.random.default_rng(seed)
    plan = [(attribute, value, label, split_sources(table, split_ids, attribute=attribute, value=value, target=target,
                                                    label=label, n=per_edit, rng=rng))
            for attribute, value in keys for label in (0, 1)]
    total, done = sum(len(ids) for *_, ids in plan), 0
    out_dir = Path(out_dir)
    weaknesses, used = [], set()
    for attribute, value, label, ids in plan:
        if not ids:
            continue
        report = (lambda stage, k, n, offset=done: progress("weaknesses", offset + k, total)) if progress else None
        rows = edit_counterfactuals(dataset, generator, target=target, attribute=attribute, value=value, label=label,
                                    sources=ids, seed=int(rng.integers(2**31 - 1)), out_dir=out_dir, oracle=oracle,
                                    progress=report)
        done += len(ids)
        if not rows:
            continue
        sources = [r["source_id"] for r in rows]
        used.update(sources)
        labels = np.full(len(sources), label)
        p_orig = predict_proba(classifier, ImageStream([str(p) for p in table.loc[sources, "path"]], image_size))
        p_cf = predict_proba(classifier, ImageStream([r["path"] for r in rows], image_size))
        d_orig, d_cf = (p_orig >= 0.5).astype(int), (p_cf >= 0.5).astype(int)
        original = np.stack([d_orig == labels, d_orig], 1).astype(float)
        counterfactual = np.stack([d_cf == labels, d_cf], 1).astype(float)
        acc_o, acc_c = float(original[:, 0].mean()), float(counterfactual[:, 0].mean())
        weaknesses.append(Weakness(
            attribute, value, label, len(rows), acc_o, acc_c, acc_c - acc_o, float((d_orig != d_cf).mean()),
            paired_bootstrap(original, counterfactual, rng, n_bootstrap), drawn=len(ids),
            pairs=[{"source": str(table.at[s, "path"]), "counterfactual": r["path"], "label": int(y),
                    "p_source": round(float(a), 3), "p_counterfactual": round(float(b), 3)}
                   for s, r, y, a, b in sorted(zip(sources, rows, labels, p_orig, p_cf),
                                               key=lambda t: -abs(float(t[3]) - float(t[4])))]))
    weaknesses.sort(key=lambda w: (w.delta_acc, -w.flip_rate, w.attribute, w.value, w.label))
    return WeaknessReport(target, split, weaknesses, perturbation, generator.name, oracle is not None and not generator.exact,
                          sorted(used), time.perf_counter() - start, caption_source)

"""Attribute-informed perturbation (seed 002's Algorithm 1) and the baselines it is measured against.

For a query image x0 with attributes a0: z0 = enc(x0); the search minimises
``BCE(F(dec(z, a)), y*) + α(‖z − z0‖² + ‖a − a0‖²)`` by gradient steps on z (size μ) and a (size γ),
both shrunk by β after every step, until the decision is y* or ``max_queries`` classifier calls are
spent — seed 002 writes its loop condition with "or", which never stops before n_max; it is "and"
here. y* is the other class than the classifier's decision on the *reconstruction* dec(z0, a0), so a
decoder's blur is never counted as a flip (how often the reconstruction keeps the original's
decision is reported as ``reconstruction_agreement``).

Modes: ``flip`` is the seed's (every attribute may move, the target too); ``keep-label`` freezes the
target attribute, so a flip is the classifier changing its mind about a person whose class did not
change — the fairness reading. Methods (:data:`METHODS`):

- ``aip``: z and a by gradient (seed 002);
- ``xgems``: z only (latent search without attributes);
- ``aip-r``: z and a along random directions, each step as long as AIP's would be (the seed's AIP_R);
- ``fgsm``: pixel space, one gradient sign, ε raised 1/255 → 64/255 until the decision flips;
- ``exact``: SynthFaces only — every single-attribute change re-rendered by the dataset's renderer
  (``keep-label``: the target never changes); the ground truth of which one attribute flips the model.

Scores per method: flip rate (FR); valid flip rate (the attribute oracle reads the counterfactual's
target as the mode wants: the new class for ``flip``, the unchanged true class for ``keep-label``);
LPR, seed 002's ‖z* − z0‖₀ / k with z* = enc(x*) for every method, counted with a tolerance
(coordinates that moved more than ``tolerance`` standard deviations of z — without one every
coordinate "moves" and LPR ≈ 1 by construction); ‖Δa‖₁; which attribute moved most, as set (|Δa|) and
as the oracle reads it; classifier calls and seconds per query image.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fairloop.errors import ConfigError

METHODS = ("aip", "xgems", "aip-r", "fgsm", "exact")
MODES = ("flip", "keep-label")
#: A search ends early once its steps have shrunk below this share of their first size (β = 0.9:
#: after 66 steps) — the rest of the budget could not move z or a.
STILL = 1e-3
#: FGSM's ε ladder (pixel units of 1/255): one classifier call each, after one gradient.
FGSM_EPSILONS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SearchConfig:
    """Seed 002's settings for images (α = 1.5, β = 0.9, μ = 2, γ = 3, n_max = 500)."""

    alpha: float = 1.5
    beta: float = 0.9
    mu: float = 2.0
    gamma: float = 3.0
    max_queries: int = 500
    tolerance: float = 0.1        # LPR: a coordinate of z moved when |Δ| > tolerance × its std over the queries
    batch_size: int = 64


@dataclass
class Counterfactuals:
    """One method's counterfactuals of the same query images (rows in query order)."""

    method: str
    images: torch.Tensor                  # N×3×64×64 in [0, 1]
    decisions: np.ndarray                 # the classifier's decision on each counterfactual
    queries: np.ndarray                   # classifier calls spent per image
    seconds: float
    delta_a: np.ndarray | None = None     # N×t: a* − a0 (latent methods that move a)
    moved: list[str | None] = field(default_factory=list)   # exact: the change made ("Gray_Hair → Blond_Hair")
    flips: Counter | None = None          # exact: per attribute, the images a change touching it flips


@torch.no_grad()
def decide(classifier, images: torch.Tensor) -> np.ndarray:
    """The classifier's 0/1 decision on each image, in batches of 256."""
    return np.concatenate([(classifier(images[i:i + 256]).reshape(-1) > 0).long().cpu().numpy()
                           for i in range(0, len(images), 256)])


def _want(decisions: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(1 - decisions).float().to(device)


def latent_search(model, classifier, z0: torch.Tensor, a0: torch.Tensor, want: torch.Tensor, *, move_a: bool,
                  random: bool, frozen: list[int], config: SearchConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """AIP (``move_a``), xGEMs (not ``move_a``) or AIP_R (``random``) on one batch. Each image stops at
    its first flip, keeping the (z, a) that flipped it. Returns z*, a*, queries per image."""
    generator = torch.Generator().manual_seed(seed)
    z, a = z0.clone(), a0.clone()
    n = len(z)
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    queries = torch.zeros(n, dtype=torch.long, device=z.device)
    mu, gamma = config.mu, config.gamma
    for _ in range(config.max_queries):
        z_var, a_var = z.clone().requires_grad_(True), a.clone().requires_grad_(move_a)
        logits = classifier(model.decode(z_var, a_var)).reshape(n)
        queries += active.long()
        active &= (logits.detach() > 0).float() != want
        if not active.any():
            break
        loss = (F.binary_cross_entropy_with_logits(logits, want, reduction="sum")
                + config.alpha * ((z_var - z0).pow(2).sum() + (a_var - a0).pow(2).sum()))
        grads = torch.autograd.grad(loss, [z_var, a_var] if move_a else [z_var])
        steps = [mu * grads[0]] + ([gamma * grads[1]] if move_a else [])
        if random:  # the same length per image, a random direction
            steps = [_random_like(s, generator) for s in steps]
        with torch.no_grad():
            keep = active.view(-1, 1).float()
            z = z - keep * steps[0]
            if move_a:
                a = (a - keep * steps[1]).clamp(0, 1)
                a[:, frozen] = a0[:, frozen]
        mu, gamma = mu * config.beta, gamma * config.beta
        if mu < STILL * config.mu and gamma < STILL * config.gamma:
            break   # the steps have decayed to nothing: later iterations could not move anything
    return z.detach(), a.detach(), queries


def _random_like(step: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    direction = torch.randn(step.shape, generator=generator).to(step.device)
    return direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * step.norm(dim=1, keepdim=True)


def fgsm(classifier, x: torch.Tensor, want: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest ε of :data:`FGSM_EPSILONS` whose sign step flips each image (the largest where none
    does); returns the images and classifier calls per image (one gradient + one per ε tried)."""
    x_var = x.clone().requires_grad_(True)
    logits = classifier(x_var).reshape(len(x))
    grad, = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits, want, reduction="sum"), [x_var])
    out, queries = x.clone(), torch.ones(len(x), dtype=torch.long, device=x.device)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for eps in FGSM_EPSILONS:
            candidate = (x - eps / 255 * grad.sign()).clamp(0, 1)
            flipped = (classifier(candidate).reshape(len(x)) > 0).float() == want
            queries += active.long()
            out[active] = candidate[active]
            active &= ~flipped
            if not active.any():
                break
    return out, queries


def single_attribute_changes(row: dict[str, int], target: str, names: list[str]) -> list[tuple[tuple[str, ...], dict[str, int]]]:
    """Every attribute vector one change away from ``row`` with ``target`` kept, with the attributes
    each change touches: an attribute toggled, or the hair moved from its state to another one (which
    touches both: a gray-haired man made blond loses Gray_Hair as much as he gains Blond_Hair)."""
    from fairloop.data.synthfaces import HAIR_STATES

    hair = next((h for h in HAIR_STATES if row.get(h)), None)
    out = []
    for name in names:
        if name == target or name == hair:
            continue
        if name in HAIR_STATES:
            touched = (hair, name) if hair else (name,)
            out.append((touched, {**row, **{h: int(h == name) for h in HAIR_STATES}}))
        else:
            out.append(((name,), {**row, name: 1 - int(row.get(name, 0))}))
    return out


def exact_flips(classifier, rows: list[dict[str, int]], identities: list[int], target: str, names: list[str],
                decisions: np.ndarray, cues: str = "salient") -> Counterfactuals:
    """Re-render every single change of every query (SynthFaces' renderer, in the dataset's ``cues``
    style); the first change (in attribute order) that flips an image is its counterfactual. Also
    counts, per attribute, the images that some change touching it flips (each image once per attribute)."""
    from fairloop.data.synthfaces import render_face
    from fairloop.tools.quality import as_image_tensor

    started = time.perf_counter()
    device = next(classifier.parameters()).device
    images, out_decisions, queries, moved, flips = [], [], [], [], Counter()
    with torch.no_grad():
        for row, identity, decision in zip(rows, identities, decisions):
            changes = single_attribute_changes(row, target, names)
            batch = as_image_tensor([render_face(attrs, identity, cues=cues) for _, attrs in changes])
            decided = (classifier(batch.to(device)).reshape(len(batch)) > 0).long().cpu().numpy()
            flipped = np.flatnonzero(decided != decision)
            flips.update({a for i in flipped for a in changes[i][0]})
            first = int(flipped[0]) if len(flipped) else None
            images.append(batch[first if first is not None else 0].to(device))
            out_decisions.append(int(decided[first]) if first is not None else int(decision))
            moved.append(" → ".join(changes[first][0]) if first is not None else None)
            queries.append(len(changes))
    return Counterfactuals("exact", torch.stack(images), np.array(out_decisions), np.array(queries),
                           time.perf_counter() - started, moved=moved, flips=flips)


def run_method(method: str, model, classifier, x: torch.Tensor, a0: torch.Tensor, decisions: np.ndarray, *,
               frozen: list[int], config: SearchConfig, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> Counterfactuals:
    """One latent or pixel method over every query, in batches; ``progress(done, total)`` after each."""
    started = time.perf_counter()
    images, queries, deltas = [], [], []
    for start in range(0, len(x), config.batch_size):
        part = slice(start, start + config.batch_size)
        want = _want(decisions[part], x.device)
        if method == "fgsm":
            out, used = fgsm(classifier, x[part], want)
        else:
            with torch.no_grad():
                z0 = model.encode(x[part])
            z, a, used = latent_search(model, classifier, z0, a0[part], want, move_a=method != "xgems",
                                       random=method == "aip-r", frozen=frozen, config=config, seed=seed + start)
            with torch.no_grad():
                out = model.decode(z, a)
            if method != "xgems":
                deltas.append((a - a0[part]).cpu().numpy())
        images.append(out.detach())
        queries.append(used.cpu().numpy())
        if progress:
            progress(min(start + config.batch_size, len(x)), len(x))
    images = torch.cat(images)
    return Counterfactuals(method, images, decide(classifier, images), np.concatenate(queries), time.perf_counter() - started,
                           delta_a=np.concatenate(deltas) if deltas else None)


def summarize(result: Counterfactuals, *, reference: torch.Tensor, reference_decisions: np.ndarray,
              labels: np.ndarray, mode: str, model, oracle, target: str, attribute_names: list[str],
              z_scale: torch.Tensor, tolerance: float) -> dict[str, Any]:
    """The scores of one method (see the module docstring). ``reference`` is what the counterfactuals
    are compared with: the reconstructions for latent methods, the originals for FGSM and exact."""
    flipped = result.decisions != reference_decisions
    n = len(flipped)
    with torch.no_grad():
        dz = (model.encode(result.images) - model.encode(reference)).abs() / z_scale
    moved_share = (dz > tolerance).float().mean(1).cpu().numpy()
    read_before, read_after = oracle.predict(reference), oracle.predict(result.images)
    columns = {a: j for j, a in enumerate(oracle.attributes)}
    valid = None
    if target in columns:
        says = read_after[:, columns[target]] >= 0.5
        wanted = result.decisions.astype(bool) if mode == "flip" else labels.astype(bool)
        valid = flipped & (says == wanted)
    seen_change = np.abs(read_after - read_before)
    readable = [a for a in attribute_names if a in columns and a != target]
    seen_most = Counter(readable[int(np.argmax(seen_change[i, [columns[a] for a in readable]]))]
                        for i in np.flatnonzero(flipped)) if readable else Counter()
    out: dict[str, Any] = {
        "method": result.method, "n": n, "flip_rate": round(float(flipped.mean()), 4),
        "valid_flip_rate": None if valid is None else round(float(valid.mean()), 4),
        "lpr": round(float(moved_share[flipped].mean()), 4) if flipped.any() else None,
        "queries_per_image": round(float(result.queries.mean()), 1),
        "seconds_per_query": round(result.seconds / max(n, 1), 4),
        "attributes_seen": _ranked(seen_most),
    }
    if result.delta_a is not None:
        delta = np.abs(result.delta_a)
        free = [j for j, a in enumerate(attribute_names) if a != target or mode == "flip"]
        most = Counter(attribute_names[free[int(np.argmax(delta[i, free]))]] for i in np.flatnonzero(flipped))
        out["delta_a_l1"] = round(float(delta[flipped].sum(1).mean()), 4) if flipped.any() else None
        out["attributes"] = _ranked(most)
        if flipped.any():   # how far each attribute moved, on average over the flips
            mean = delta[flipped].mean(0)
            out["mean_abs_delta_a"] = {attribute_names[j]: round(float(mean[j]), 3) for j in np.argsort(-mean)
                                       if j in free}
    elif result.flips is not None:
        out["delta_a_l1"] = 1.0 if flipped.any() else None   # one attribute (or hair state), all the way
        out["attributes"] = _ranked(result.flips)
        out["attributes_note"] = "images that some single change touching the attribute flips"
    else:
        out["delta_a_l1"] = None
        out["attributes"] = out["attributes_seen"]
    return out


def _ranked(counts: Counter) -> list[dict[str, Any]]:
    total = sum(counts.values())
    return [{"attribute": a, "count": c, "share": round(c / total, 3)} for a, c in counts.most_common()]


def check_method_names(methods: list[str], mode: str, synthfaces: bool) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)}", f"use some of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown --mode {mode!r}", f"use one of {', '.join(MODES)}")
    if "exact" in methods and not synthfaces:
        raise ConfigError("the exact minimal flip re-renders faces, so it needs a SynthFaces folder",
                          "leave 'exact' out of --methods for other datasets")
    if "exact" in methods and mode != "keep-label":
        raise ConfigError("the exact minimal flip changes one attribute besides the class: it is a keep-label baseline",
                          "use --mode keep-label, or leave 'exact' out of --methods")


__all__ = ["FGSM_EPSILONS", "METHODS", "MODES", "Counterfactuals", "SearchConfig", "check_method_names",
           "decide", "exact_flips", "fgsm", "latent_search", "run_method", "single_attribute_changes", "summarize"]

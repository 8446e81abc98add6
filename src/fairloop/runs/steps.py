"""The steps a mitigation run is made of, shared by the loop, the chat and experiments.

Each takes the run's :class:`~fairloop.runs.services.RunServices` and works in its folder:
checkpoints, evaluations and images are content-addressed, so a step that runs again (a resumed
run, a second arm on the same baseline) finds its work instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairloop.io import atomic_write, atomic_write_json
from fairloop.runs.config import MEMORY_KEYS
from fairloop.runs.services import RunServices

#: A generator that is not exact also gets a fine-tune at this multiple of the analyzer's mix ratio
#: (see finetune_model), up to the largest mix ratio an analyzer may ask for.
BOLDER_MIX, MAX_MIX = 1.5, 0.9


# ------------------------------------------------------------------------------------ evaluation


def model_key(relative: str) -> str:
    return relative.rsplit("/", 1)[-1].removesuffix(".safetensors")


def save_model(services: RunServices, model, meta: dict[str, Any]) -> str:
    """Save a checkpoint under the hash of its weights; return its path relative to the run."""
    from fairloop.vision.models import save_checkpoint

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = services.folder.path / "models" / digest.hexdigest()[:16]
    if not path.with_suffix(".safetensors").exists():
        save_checkpoint(model, path, meta)
    return services.folder.relative(path.with_name(path.name + ".safetensors"))


def train_baseline(services: RunServices) -> str:
    """Train the run's starting classifier (ERM on the training split) and save it; its relative path.

    With ``config.reuse_baseline`` a baseline that an earlier run trained on the same data with the
    same settings is taken from :func:`baseline_cache` instead: training on the CPU is deterministic
    for a given seed, thread count and torch, so it is the model this run would train (the key holds
    all of them), and a second run on a scenario skips the few minutes of training."""
    from fairloop.vision.train import TrainConfig, train_classifier

    cfg = services.config
    train_cfg = TrainConfig(arch=cfg.arch, epochs=cfg.baseline_epochs, seed=cfg.seed, device=cfg.device)
    data_hash = services.dataset.fingerprint()
    cached = baseline_cache() / baseline_key(train_cfg, cfg.target, data_hash, services.device) \
        if cfg.reuse_baseline else None
    if cached is not None:
        model, meta = _cached_baseline(services, cached, cfg.target, data_hash)
        if model is not None:
            services.log(f"setup: the baseline an earlier run trained on this data with these settings ({cached}); "
                         "--fresh-baseline trains it again")
            return save_model(services, model, meta)
    model, history = train_classifier(services.dataset, cfg.target, train_cfg, progress=services.progress)
    meta = {"arch": cfg.arch, "target": cfg.target, "image_size": train_cfg.image_size,
            "data_hash": data_hash, "history": history, "role": "baseline"}
    if cached is not None:
        from fairloop.vision.models import save_checkpoint

        try:
            save_checkpoint(model, cached, meta)
        except OSError as exc:  # a cache that cannot be written costs the next run time, not this run
            services.log(f"warning: the baseline was not kept for later runs ({exc})")
    return save_model(services, model, meta)


def baseline_cache() -> Path:
    """``$FAIRLOOP_HOME/baselines``: baselines kept for later runs on the same data."""
    from fairloop.io import fairloop_home

    return fairloop_home() / "baselines"


def baseline_key(train_cfg, target: str, data_hash: str, device) -> str:
    """The cache key of a baseline: everything its weights depend on (the thread count, torch's
    version and the weights' memory layout change float rounding)."""
    import torch

    from fairloop import __version__

    settings = {k: v for k, v in vars(train_cfg).items() if k not in ("device", "num_workers")}
    key = {"train": settings, "target": target, "data": data_hash, "device": torch.device(device).type,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "fairloop": __version__,
           "layout": "channels_last"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _cached_baseline(services: RunServices, stem: Path, target: str, data_hash: str):
    """(model, meta) of a cached baseline that matches this run, else (None, None); a damaged or
    mismatched file is reported and trained over."""
    from fairloop.errors import DataError
    from fairloop.vision.models import checkpoint_paths, load_checkpoint

    if not all(path.is_file() for path in checkpoint_paths(stem)):
        return None, None
    try:
        model, meta = load_checkpoint(stem, services.device)
    except DataError as exc:
        services.log(f"warning: ignoring a cached baseline: {exc.problem}")
        return None, None
    if meta.get("target") != target or meta.get("data_hash") != data_hash or meta.get("role") != "baseline":
        services.log(f"warning: ignoring the cached baseline {stem}: it was trained for other data or another target")
        return None, None
    return model, meta


def eval_file(services: RunServices, relative: str, suffix: str) -> Path:
    """Where a checkpoint's cached evaluation ``suffix`` (``metrics.json``, ``val.npy``, ...) lives in ``RUN/evals``."""
    return services.folder.path / "evals" / f"{model_key(relative)}.{suffix}"


def evaluate_model(services: RunServices, relative: str) -> dict[str, Any]:
    """Val and test metrics of a checkpoint, computed once and kept in ``RUN/evals``."""
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.train import predict_proba

    cache = eval_file(services, relative, "metrics.json")
    if cache.exists():
        return json.loads(cache.read_text())
    cfg, data = services.config, services.dataset
    model, meta = services.load_model(relative)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        part = data.split(split)
        probs = predict_proba(model, part.images(meta.get("image_size", 64)), device=services.device,
                              progress=services.progress)
        report = fairness_report(y_true=part.labels(cfg.target), y_pred=(probs >= 0.5).astype(int),
                                 protected=part.labels(cfg.protected), privileged_value=cfg.privileged_value,
                                 target_name=cfg.target, protected_name=cfg.protected, n_bootstrap=100, seed=cfg.seed)
        out[split] = report.as_dict()
        _save_array(eval_file(services, relative, f"{split}.npy"), probs.astype(np.float32))
    atomic_write_json(cache, out)
    return out


def val_predictions(services: RunServices, relative: str) -> np.ndarray | None:
    """P(target = 1) of a checkpoint on the validation split, as :func:`evaluate_model` kept it;
    None when it is not there (or not one number per validation row)."""
    path = eval_file(services, relative, "val.npy")
    if not path.exists():
        return None
    probs = np.load(path, allow_pickle=False)  # a run folder is untrusted: numbers only, never objects
    return probs if probs.shape == (len(services.dataset.split("val")),) else None


def _save_array(path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a bare temp name
            np.save(f, array)

    atomic_write(path, write)


def explain_model(services: RunServices, relative: str) -> dict[str, Any]:
    """LIME attribute importance of a checkpoint on the validation split (cached)."""
    from fairloop.tools.explain import explain_attributes

    cache = eval_file(services, relative, "explain.json")
    if cache.exists():
        return json.loads(cache.read_text())
    evaluate_model(services, relative)
    cfg = services.config
    val = services.dataset.split("val")
    probs = val_predictions(services, relative)
    if probs is None:
        from fairloop.errors import DataError

        path = eval_file(services, relative, "val.npy")
        raise DataError(f"{path} does not hold one prediction per validation row of {relative}",
                        f"delete {path} and {eval_file(services, relative, 'metrics.json')}: they are computed again")
    exp = explain_attributes(attributes=val.table[[a for a in val.attributes if a != cfg.target]], scores=probs,
                             protected=cfg.protected, n_explain=min(cfg.explain_rows, len(val)), seed=cfg.seed)
    out = exp.as_dict() | {"as_list": [[k, v] for k, v in exp.as_list()]}
    atomic_write_json(cache, out)
    return out


def compact_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in MEMORY_KEYS}


# ------------------------------------------------------- counterfactuals and fine-tuning (shared with chat)


def make_counterfactuals(services: RunServices, plans: list[dict[str, Any]], negative_prompt: str = "", *,
                         seed_key: tuple[int, ...], manifest, text_to_image: bool = False,
                         scm: dict[str, Any] | None = None, match_proxy: bool = True, search: str | None = None,
                         model: str | None = None) -> dict[str, Any]:
    """Generate the images of ``plans`` (label, description, n_images) as minimal edits of training
    images, matched to the group they fill on its strongest proxy (:mod:`fairloop.tools.sources`),
    or each made the counterfactual of its source under the causal model ``scm`` (a proposal's
    spec, see :func:`causal_model`), or from any source the edit changes (``match_proxy`` False),
    or drawn as new faces with ``text_to_image``, or searched against checkpoint ``model`` (``search``
    "aip", see :func:`aip_counterfactuals`); keep those the
    attribute oracle confirms (when there is one), and write ``manifest``.

    Returns ``{"manifest": relative path, "n": images kept, "made": images generated, "notes",
    "verification"}``."""
    from fairloop.generators import GenerationRequest
    from fairloop.tools.sources import SourceBatch, plan_scm_sources, plan_sources

    if search == "aip":  # run state is untrusted: any other value is no search
        return aip_counterfactuals(services, plans, model=model, seed_key=seed_key, manifest=manifest)
    cfg = services.config
    train = services.dataset.split("train").table
    causal = causal_model(scm, list(services.dataset.attributes), train) if scm and not text_to_image else None
    rows, notes, proxies = [], [], []
    planned = []  # (plan, batch, its plan's rng): every batch first, so progress counts the whole set
    for k, plan in enumerate(plans):
        if plan["n_images"] <= 0:
            continue
        rng = np.random.default_rng([*seed_key, k])
        if text_to_image:
            batches, proxy = [SourceBatch(plan["description"], plan["n_images"])], None
        elif causal is not None:
            batches, proxy = plan_scm_sources(train, causal, target=cfg.target, label=plan["label"],
                                              description=plan["description"], n=plan["n_images"],
                                              vocabulary=services.dataset.attributes, rng=rng)
        else:
            batches, proxy = plan_sources(train, target=cfg.target, label=plan["label"],
                                          description=plan["description"], n=plan["n_images"],
                                          vocabulary=services.dataset.attributes, rng=rng, protected=cfg.protected,
                                          match_proxy=match_proxy)
        if proxy is not None:
            notes.append(proxy.note(plan["description"]))
            proxies.append({"description": plan["description"], **proxy.as_dict()})
            services.log(f"  {notes[-1]}")
        planned += [(plan, batch, rng) for batch in batches]
    total, offset = sum(batch.n for _, batch, _ in planned), 0
    for plan, batch, rng in planned:
        request = GenerationRequest(prompt=batch.prompt, n=batch.n, label=plan["label"], target=cfg.target,
                                    negative_prompt=negative_prompt, source_ids=batch.source_ids,
                                    seed=int(rng.integers(2**31 - 1)))
        report = (lambda stage, done, n, offset=offset: services.progress(stage, offset + done, total)) \
            if services.progress else None
        offset += batch.n
        result = services.generator.generate(request, services.folder.path / "images", sources=services.dataset,
                                             progress=report)
        notes += result.notes
        for row in result.rows:
            row["path"] = services.folder.relative(row["path"])
            source_value = train.at[row["source_id"], cfg.protected] if row.get("source_id") else None
            row["protected"] = int(row.get("attributes", {}).get(
                cfg.protected, source_value if source_value is not None else -1))
        rows += result.rows
    made = len(rows)
    verification, rejected = None, []
    if services.oracle is not None:  # non-exact generators on SynthFaces: keep what the oracle confirms
        from fairloop.tools.quality import verify_generated

        passed, verification = verify_generated(services.oracle, rows, cfg.target, services.folder.resolve)
        rejected = [r for r, ok in zip(rows, passed) if not ok]
        rows = [r for r, ok in zip(rows, passed) if ok]
        services.log(f"  verification: {verification['passed']}/{verification['checked']} generated images show "
                     f"what their prompt asked for")
    atomic_write_json(manifest, {"generator": services.generator.name, "model_id": services.generator.model_id,
                                 "exact_oracle": services.generator.exact, "notes": notes, "proxies": proxies,
                                 "verification": verification, "images": rows, "rejected": rejected})
    return {"manifest": services.folder.relative(manifest), "n": len(rows), "made": made, "notes": notes,
            "verification": verification}


def aip_counterfactuals(services: RunServices, plans: list[dict[str, Any]], *, model: str | None,
                        seed_key: tuple[int, ...], manifest) -> dict[str, Any]:
    """Each plan's images as keep-label AIP searches (seed 002) against checkpoint ``model``, one per
    random training image of the plan's class; kept where the model's decision flipped and the
    attribute oracle still reads the true class, labelled with it (the ``protected`` value is what the
    oracle reads). Drawn with the shipped AIP generator, whatever the run's ``--generator``. Returns
    what :func:`make_counterfactuals` does; "verification" counts searches and kept images."""
    from fairloop.aip import save_png
    from fairloop.aip.augment import search_training_images
    from fairloop.aip.generator import check_fits, load_aip_generator

    cfg = services.config
    generator = load_aip_generator()
    check_fits(generator, services.dataset, cfg.target)
    if model is None:
        raise ValueError("AIP searches against a model: pass the checkpoint")
    net, _ = services.load_model(model)
    train = services.dataset.split("train").table
    rows, notes, searched = [], [], 0
    total = sum(max(0, p["n_images"]) for p in plans)
    for k, plan in enumerate(plans):
        if plan["n_images"] <= 0:
            continue
        rng = np.random.default_rng([*seed_key, k])
        pool = train.index[train[cfg.target] == plan["label"]].to_numpy()
        ids = [str(i) for i in rng.permutation(pool)[:plan["n_images"]]]
        if not ids:  # a class with no training image (or a label run state made up)
            continue
        seed = int(rng.integers(2**31 - 1))
        report = (lambda done, n, offset=searched: services.progress("aip search", offset + done, total)) \
            if services.progress else None
        found = search_training_images(net, services.dataset, cfg.target, ids, generator=generator, seed=seed,
                                       device=services.device, progress=report)
        searched += len(ids)
        for i in found.kept:
            shown = {a: int(found.shown[i, j] >= 0.5) for j, a in enumerate(found.attributes)}
            top = np.argsort(-np.abs(found.delta_a[i]))[:3]
            path = services.folder.path / "images" / "aip" / f"{Path(ids[i]).stem}-{model_key(model)}-{seed}.png"
            rows.append({"path": services.folder.relative(save_png(found.counterfactuals[i], path)),
                         "prompt": plan["description"], "label": int(plan["label"]), "source_id": ids[i],
                         "seed": seed, "backend": "aip", "attributes": shown, "protected": shown.get(cfg.protected, -1),
                         "moved": {found.searched[j]: round(float(found.delta_a[i, j]), 3) for j in top}})
        notes.append(f"{plan['description']}: {len(found.kept)} of {len(ids)} searches flipped the model while the "
                     f"attribute oracle reads the true class")
        services.log(f"  {notes[-1]}")
    verification = {"checked": searched, "passed": len(rows), "pass_rate": round(len(rows) / searched, 4),
                    "rule": "an AIP search passes when the model's decision flipped and the oracle reads the true class",
                    "named_shown": None, "others_kept": None} if searched else None
    atomic_write_json(manifest, {"generator": "aip", "model_id": "fairloop-aip-generator", "exact_oracle": False,
                                 "notes": notes, "proxies": [], "verification": verification, "images": rows,
                                 "rejected": []})
    return {"manifest": services.folder.relative(manifest), "n": len(rows), "made": searched, "notes": notes,
            "verification": verification}


def causal_model(spec: dict[str, Any], attributes: list[str], train: pd.DataFrame):
    """The :class:`~fairloop.scm.StructuralCausalModel` a proposal's ``scm`` spec names: SynthFaces'
    true model (``{"graph": "true"}``), or tables counted on the training split over an LLM's graph
    (every attribute a variable, isolated when the graph leaves it out). The spec comes from run
    state, which is untrusted: anything but [attribute, attribute] pairs is ignored."""
    from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES
    from fairloop.errors import ConfigError
    from fairloop.scm import CausalGraph, StructuralCausalModel

    if spec.get("graph") == "true":
        if set(attributes) != set(ATTRIBUTES):
            raise ConfigError("the true causal model is known only for SynthFaces",
                              "use the scm strategy (an LLM's graph, fitted on your data) for this dataset")
        return StructuralCausalModel.synthfaces()
    edges = [e for e in spec.get("edges", []) if isinstance(e, list | tuple) and len(e) == 2
             and e[0] in attributes and e[1] in attributes]
    return StructuralCausalModel.fit(train, CausalGraph.of(attributes, edges), groups=(HAIR_STATES,),
                                     source="the LLM's graph, tables counted on the training split")


def analyzer_context(services: RunServices, metrics: dict[str, Any], explanation: dict[str, Any], *,
                     train_groups: dict[str, int], max_images: int, iteration: int = 1,
                     recalled: list[str] | None = None, history: list[str] | None = None, model: str | None = None):
    """Seed 000's prompt P for this run: validation metrics, LIME importances and training counts;
    for a strategy that asks for them, the weaknesses of checkpoint ``model``."""
    from fairloop.agent.schema import AnalyzerContext

    cfg = services.config
    weaknesses = []
    if model and getattr(services.strategy, "needs_weaknesses", False):
        weaknesses = find_model_weaknesses(services, model)["weaknesses"]
    return AnalyzerContext(
        task=f"classify {cfg.target} from face images without bias towards any attribute",
        target=cfg.target, protected=cfg.protected, privileged_value=cfg.privileged_value,
        attributes=[a for a in services.dataset.attributes if a != cfg.target], metrics=metrics,
        importances=[(k, v) for k, v in explanation["as_list"]], train_groups=train_groups, max_images=max_images,
        iteration=iteration, recalled=list(recalled or []), history=list(history or []), band=cfg.target_band,
        weaknesses=weaknesses)


#: Sources per edit and class when a run looks for its model's weaknesses (seed 001).
DISCOVERY_PER_EDIT = 30


def find_model_weaknesses(services: RunServices, relative: str) -> dict[str, Any]:
    """The weakness report of a checkpoint (seed 001) on validation sources, every single-attribute
    edit tested with the run's generator (cached; images under ``weaknesses/``)."""
    from fairloop.weakness import discover

    cache = eval_file(services, relative, "weaknesses.json")
    if cache.exists():
        return json.loads(cache.read_text())
    cfg = services.config
    net, meta = services.load_model(relative)
    report = discover(net, services.dataset, services.generator, target=cfg.target,
                      out_dir=services.folder.path / "weaknesses", oracle=services.oracle, per_edit=DISCOVERY_PER_EDIT,
                      image_size=meta.get("image_size", 64), seed=cfg.seed, progress=services.progress)
    out = report.as_dict(pairs=0) | {"n_images": sum(w.drawn for w in report.weaknesses)}
    atomic_write_json(cache, out)
    return out


def counterfactual_table(services: RunServices, manifests: list[str]) -> pd.DataFrame:
    """(path, label, protected) of the images in these manifests, ready for fine-tuning."""
    rows = []
    for relative in manifests:
        for r in json.loads(services.folder.existing(relative, "the manifest").read_text())["images"]:
            rows.append({"path": str(services.folder.existing(r["path"], "the counterfactual image")), "label": r["label"],
                         "protected": r["protected"]})
    table = pd.DataFrame(rows, columns=["path", "label", "protected"])
    return table[table["protected"].isin([0, 1])]


def train_groups(services: RunServices, kept_manifests: list[str]) -> dict[str, int]:
    """Group counts of the training data as the next fine-tuning sees it: real rows plus the
    counterfactuals of accepted iterations (seed 000's D ← D + D̂)."""
    cfg = services.config
    counts = services.dataset.split("train").table.groupby([cfg.target, cfg.protected]).size().to_dict()
    kept = counterfactual_table(services, kept_manifests)
    for (label, protected), n in kept.groupby(["label", "protected"]).size().items():
        counts[(label, protected)] = counts.get((label, protected), 0) + int(n)
    return {f"{cfg.target}={t}, {cfg.protected}={p}": int(n) for (t, p), n in sorted(counts.items())}


def second_mix(mix_ratio: float) -> float:
    """The mix ratio a non-exact generator's fine-tune is compared at: :data:`BOLDER_MIX` × the asked
    one, at most :data:`MAX_MIX`; at the cap itself, the asked one ÷ :data:`BOLDER_MIX`. At 0.9 a
    fine-tune keeps ~100 real images for 900 counterfactuals, and the demo's first iterations asked
    at 0.9 ended at validation worst-group accuracy 0.831–0.842, those at 0.42–0.75 at 0.853–0.876:
    the cap is a side worth comparing from, not only towards."""
    if mix_ratio < MAX_MIX:
        return round(min(MAX_MIX, mix_ratio * BOLDER_MIX), 4)
    return round(mix_ratio / BOLDER_MIX, 4)


def finetune_model(services: RunServices, model: str, manifests: list[str], kept_manifests: list[str], *,
                   mix_ratio: float, seed: int, role: str, epochs: int | None = None, bolder: bool = False,
                   **overrides: Any):
    """:func:`finetune_checkpoint`, then save the result; returns its relative path and the
    :class:`~fairloop.tools.finetune.FinetuneResult`."""
    result, meta = finetune_checkpoint(services, model, manifests, kept_manifests, mix_ratio=mix_ratio, seed=seed,
                                       epochs=epochs, bolder=bolder, **overrides)
    relative = save_model(services, result.model, {**meta, "role": role, "parent": model, "alpha": result.alpha})
    return relative, result


def finetune_checkpoint(services: RunServices, model: str, manifests: list[str], kept_manifests: list[str], *,
                        mix_ratio: float, seed: int, epochs: int | None = None, bolder: bool = False,
                        **overrides: Any):
    """Fine-tune checkpoint ``model`` on the images of ``manifests`` mixed in at ``mix_ratio`` (with
    the images of ``kept_manifests`` as extra training data); returns the chosen
    :class:`~fairloop.tools.finetune.FinetuneResult` and the checkpoint's metadata. ``overrides``
    replace fields of the :class:`~fairloop.tools.finetune.FinetuneConfig` (an experiment's
    baselines set ``objective``, ``real_sampling`` and ``mode``).

    With ``bolder`` and a generator that is not exact, it also fine-tunes at :func:`second_mix` of the
    mix ratio and keeps the result validation ranks higher (:func:`select_alpha`'s order; a tie
    keeps ``mix_ratio``): such counterfactuals teach less per image than real ones, and how much
    less is for validation to say."""
    from fairloop.tools.finetune import FinetuneConfig, finetune, select_alpha

    cfg = services.config
    base, meta = services.load_model(model)
    exact = services.generator.exact
    # an exact generator's counterfactuals look like the real images; any other's need the real
    # members of each group drawn as often as a large group's (see draw_real_rows)
    ft_cfg = FinetuneConfig(mode=cfg.finetune_mode, epochs=epochs or cfg.finetune_epochs, mix_ratio=mix_ratio,
                            real_sampling="uniform" if exact else "balanced", accuracy_budget=cfg.accuracy_budget,
                            image_size=meta.get("image_size", 64), seed=seed, device=cfg.device)
    ft_cfg = replace(ft_cfg, **overrides)
    mixes = [mix_ratio]
    if bolder and not exact and 0 < mix_ratio:
        mixes.append(second_mix(mix_ratio))
    counterfactuals, kept = counterfactual_table(services, manifests), counterfactual_table(services, kept_manifests)
    results = [finetune(base, services.dataset, counterfactuals, target=cfg.target, protected=cfg.protected,
                        privileged_value=cfg.privileged_value, config=replace(ft_cfg, mix_ratio=mix),
                        band=cfg.target_band, overshoot_band=cfg.band, extra_training=kept,
                        progress=services.progress)
               for mix in mixes]
    chosen = select_alpha([r.chosen for r in results], base_accuracy=results[0].base.accuracy,
                          accuracy_budget=cfg.accuracy_budget)
    return next(r for r in results if r.chosen is chosen), meta

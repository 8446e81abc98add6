"""The mitigation loop (seed 000's Algorithm 1, with the analyzer deciding) as a LangGraph graph.

    setup → measure → explain → recall → analyze ─┬→ generate → finetune → evaluate → decide ─┬→ measure …
                                                   └──────────────────────────────────────→ decide └→ report → END

Decisions use the validation split; the test split is only reported. The state is JSON-safe
(numbers, strings, relative paths) and checkpointed after every node in ``RUN/state.sqlite``, so
``fairloop run --resume RUN`` continues where a crash stopped without redoing finished nodes.
Artifacts are content-addressed, so even a node that is re-run finds its images and evaluations.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from functools import wraps
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from fairloop.graphs.run import MEMORY_KEYS, RunServices
from fairloop.io import atomic_write, atomic_write_json

#: A generator that is not exact also gets a fine-tune at this multiple of the analyzer's mix ratio
#: (see finetune_model), up to the largest mix ratio an analyzer may ask for.
BOLDER_MIX, MAX_MIX = 1.5, 0.9


class LoopState(TypedDict, total=False):
    iteration: int
    model: str                     # relative path of the accepted checkpoint
    initial_model: str
    initial: dict[str, Any]        # {"val": metrics, "test": metrics} of the starting model
    current: dict[str, Any]        # the same for the accepted model
    explanation: dict[str, Any]    # AttributeExplanation.as_dict() of the accepted model on val
    initial_explanation: dict[str, Any]
    recalled: list[str]
    analysis: dict[str, Any]
    generated: dict[str, Any]
    candidate: dict[str, Any]
    iterations: list[dict[str, Any]]
    kept_manifests: list[str]      # counterfactual sets of accepted iterations: they stay in the training data
    images_used: int
    image_scale: float             # halved after an overshoot, so the next plan asks for less
    no_gain: int
    status: str
    report: dict[str, str]         # relative paths of summary.json and report.html


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
    """Train the run's starting classifier (ERM on the training split) and save it; its relative path."""
    from fairloop.vision.train import TrainConfig, train_classifier

    cfg = services.config
    train_cfg = TrainConfig(arch=cfg.arch, epochs=cfg.baseline_epochs, seed=cfg.seed, device=cfg.device)
    model, history = train_classifier(services.dataset, cfg.target, train_cfg, progress=services.progress)
    meta = {"arch": cfg.arch, "target": cfg.target, "image_size": train_cfg.image_size,
            "data_hash": services.dataset.fingerprint(), "history": history, "role": "baseline"}
    return save_model(services, model, meta)


def evaluate_model(services: RunServices, relative: str) -> dict[str, Any]:
    """Val and test metrics of a checkpoint, computed once and kept in ``RUN/evals``."""
    from fairloop.tools.metrics import fairness_report
    from fairloop.vision.train import predict_proba

    cache = services.folder.path / "evals" / f"{model_key(relative)}.metrics.json"
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
        probs_file = cache.with_name(f"{model_key(relative)}.{split}.npy")
        _save_array(probs_file, probs.astype(np.float32))
    atomic_write_json(cache, out)
    return out


def _save_array(path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a bare temp name
            np.save(f, array)

    atomic_write(path, write)


def explain_model(services: RunServices, relative: str) -> dict[str, Any]:
    """LIME attribute importance of a checkpoint on the validation split (cached)."""
    from fairloop.tools.explain import explain_attributes

    cache = services.folder.path / "evals" / f"{model_key(relative)}.explain.json"
    if cache.exists():
        return json.loads(cache.read_text())
    evaluate_model(services, relative)
    cfg = services.config
    val = services.dataset.split("val")
    probs = np.load(services.folder.path / "evals" / f"{model_key(relative)}.val.npy")
    exp = explain_attributes(attributes=val.table[[a for a in val.attributes if a != cfg.target]], scores=probs,
                             protected=cfg.protected, n_explain=min(cfg.explain_rows, len(val)), seed=cfg.seed)
    out = exp.as_dict() | {"as_list": [[k, v] for k, v in exp.as_list()]}
    atomic_write_json(cache, out)
    return out


def band_distance(metrics: dict[str, Any], band) -> float:
    """How far the metrics are outside the fair band (0 inside); undefined metrics count as 1."""
    di = metrics.get("disparate_impact")
    total = 1.0 if di is None else max(0.0, band.di_low - di) + max(0.0, di - band.di_high)
    for key in ("statistical_parity_difference", "equal_opportunity_difference", "average_odds_difference"):
        value = metrics.get(key)
        total += 1.0 if value is None else max(0.0, abs(value) - band.max_abs_diff)
    return total


def overshoots(before: dict[str, Any], after: dict[str, Any], band) -> list[str]:
    """Metrics that crossed the band to its other side (seed 000's DI 0.27 → 1.355)."""
    crossed = []
    di0, di1 = before.get("disparate_impact"), after.get("disparate_impact")
    if di0 is not None and di1 is not None and (
            (di0 < band.di_low and di1 > band.di_high) or (di0 > band.di_high and di1 < band.di_low)):
        crossed.append(f"disparate_impact {di0:.3f} → {di1:.3f}")
    for key in ("statistical_parity_difference", "equal_opportunity_difference", "average_odds_difference"):
        v0, v1 = before.get(key), after.get(key)
        if v0 is not None and v1 is not None and abs(v1) > band.max_abs_diff and v0 * v1 < 0:
            crossed.append(f"{key} {v0:+.3f} → {v1:+.3f}")
    return crossed


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in MEMORY_KEYS}


# ------------------------------------------------------- counterfactuals and fine-tuning (shared with chat)


def make_counterfactuals(services: RunServices, plans: list[dict[str, Any]], negative_prompt: str = "", *,
                         seed_key: tuple[int, ...], manifest) -> dict[str, Any]:
    """Generate the images of ``plans`` (label, description, n_images) as minimal edits of training
    images, matched to the group they fill on its strongest proxy (:mod:`fairloop.tools.sources`),
    keep those the attribute oracle confirms (when there is one), and write ``manifest``.

    Returns ``{"manifest": relative path, "n": images kept, "made": images generated, "notes",
    "verification"}``."""
    from fairloop.tools.generate import GenerationRequest
    from fairloop.tools.sources import plan_sources

    cfg = services.config
    train = services.dataset.split("train").table
    rows, notes, proxies = [], [], []
    for k, plan in enumerate(plans):
        if plan["n_images"] <= 0:
            continue
        rng = np.random.default_rng([*seed_key, k])
        batches, proxy = plan_sources(train, target=cfg.target, label=plan["label"], description=plan["description"],
                                      n=plan["n_images"], vocabulary=services.dataset.attributes, rng=rng,
                                      protected=cfg.protected)
        if proxy is not None:
            notes.append(proxy.note(plan["description"]))
            proxies.append({"description": plan["description"], **proxy.as_dict()})
            services.log(f"  {notes[-1]}")
        for batch in batches:
            request = GenerationRequest(prompt=batch.prompt, n=batch.n, label=plan["label"], target=cfg.target,
                                        negative_prompt=negative_prompt, source_ids=batch.source_ids,
                                        seed=int(rng.integers(2**31 - 1)))
            result = services.generator.generate(request, services.folder.path / "images",
                                                 sources=services.dataset, progress=services.progress)
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


def analyzer_context(services: RunServices, metrics: dict[str, Any], explanation: dict[str, Any], *,
                     train_groups: dict[str, int], max_images: int, iteration: int = 1,
                     recalled: list[str] | None = None, history: list[str] | None = None):
    """Seed 000's prompt P for this run: validation metrics, LIME importances and training counts."""
    from fairloop.agent.schema import AnalyzerContext

    cfg = services.config
    return AnalyzerContext(
        task=f"classify {cfg.target} from face images without bias towards any attribute",
        target=cfg.target, protected=cfg.protected, privileged_value=cfg.privileged_value,
        attributes=[a for a in services.dataset.attributes if a != cfg.target], metrics=metrics,
        importances=[(k, v) for k, v in explanation["as_list"]], train_groups=train_groups, max_images=max_images,
        iteration=iteration, recalled=list(recalled or []), history=list(history or []), band=cfg.target_band)


def counterfactual_table(services: RunServices, manifests: list[str]) -> pd.DataFrame:
    """(path, label, protected) of the images in these manifests, ready for fine-tuning."""
    rows = []
    for relative in manifests:
        for r in json.loads(services.folder.resolve(relative).read_text())["images"]:
            rows.append({"path": str(services.folder.resolve(r["path"])), "label": r["label"],
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


def finetune_model(services: RunServices, model: str, manifests: list[str], kept_manifests: list[str], *,
                   mix_ratio: float, seed: int, role: str, epochs: int | None = None, bolder: bool = False):
    """Fine-tune checkpoint ``model`` on the images of ``manifests`` mixed in at ``mix_ratio`` (with
    the images of ``kept_manifests`` as extra training data) and save the result; returns its
    relative path and the :class:`~fairloop.tools.finetune.FinetuneResult`.

    With ``bolder`` and a generator that is not exact, it also fine-tunes at :data:`BOLDER_MIX` × the
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
    mixes = [mix_ratio]
    if bolder and not exact and 0 < mix_ratio < MAX_MIX:
        mixes.append(round(min(MAX_MIX, mix_ratio * BOLDER_MIX), 4))
    counterfactuals, kept = counterfactual_table(services, manifests), counterfactual_table(services, kept_manifests)
    results = [finetune(base, services.dataset, counterfactuals, target=cfg.target, protected=cfg.protected,
                        privileged_value=cfg.privileged_value, config=replace(ft_cfg, mix_ratio=mix),
                        band=cfg.target_band, extra_training=kept, progress=services.progress)
               for mix in mixes]
    chosen = select_alpha([r.chosen for r in results], base_accuracy=results[0].base.accuracy,
                          accuracy_budget=cfg.accuracy_budget)
    result = next(r for r in results if r.chosen is chosen)
    relative = save_model(services, result.model, {**meta, "role": role, "parent": model, "alpha": result.alpha})
    return relative, result


# ----------------------------------------------------------------------------------------- nodes


def traced(name: str):
    """Record each node call in ``trace.jsonl``: what ran, for how long, and a compact result."""

    def wrap(fn):
        @wraps(fn)
        def node(self, state: LoopState) -> dict[str, Any]:
            iteration = state.get("iteration", 0)
            self.services.log(f"[iteration {iteration}] {name} …")
            start = time.perf_counter()
            update = fn(self, state)
            self.services.folder.trace(name, iteration, time.perf_counter() - start, _summarize(update))
            return update

        return node

    return wrap


def _summarize(update: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(update, default=str)
    return update if len(text) < 600 else {"keys": sorted(update), "size": len(text)}


class MitigationLoop:
    """The nodes of the loop; each returns a partial state update."""

    def __init__(self, services: RunServices) -> None:
        self.services = services
        self.config = services.config

    # setup ---------------------------------------------------------------------------------
    @traced("setup")
    def setup(self, state: LoopState) -> dict[str, Any]:
        from fairloop.vision.models import load_checkpoint

        cfg, services = self.config, self.services
        if cfg.baseline:
            model, meta = load_checkpoint(cfg.baseline, services.device)
            if meta.get("target") not in (None, cfg.target):
                from fairloop.errors import ConfigError

                raise ConfigError(f"--baseline {cfg.baseline} was trained for {meta['target']!r}, not {cfg.target!r}",
                                  "pass a checkpoint for the run's target, or none to train one")
            relative = save_model(services, model, meta)
        else:
            relative = train_baseline(services)
        return {"model": relative, "initial_model": relative, "iteration": 1, "iterations": [], "images_used": 0, "no_gain": 0,
                "image_scale": 1.0, "status": "running"}

    # measure / explain / recall ------------------------------------------------------------
    @traced("measure")
    def measure(self, state: LoopState) -> dict[str, Any]:
        metrics = evaluate_model(self.services, state["model"])
        update: dict[str, Any] = {"current": metrics}
        if "initial" not in state:
            update["initial"] = metrics
        return update

    @traced("explain")
    def explain(self, state: LoopState) -> dict[str, Any]:
        explanation = explain_model(self.services, state["model"])
        update: dict[str, Any] = {"explanation": explanation}
        if "initial_explanation" not in state:
            update["initial_explanation"] = explanation
        return update

    @traced("recall")
    def recall(self, state: LoopState) -> dict[str, Any]:
        cfg, val = self.config, state["current"]["val"]
        top = ", ".join(f"{k}:{v:.3f}" for k, v in state["explanation"]["as_list"][:5])
        query = (f"target {cfg.target}, protected {cfg.protected}; disparate impact {val['disparate_impact']}; "
                 f"equal opportunity difference {val['equal_opportunity_difference']}; important attributes {top}")
        recalled = self.services.memory.recall(query, k=3, target=cfg.target, exclude_run=self.services.folder.path.name)
        return {"recalled": [r.record.recall_line() for r in recalled]}

    # analyze -------------------------------------------------------------------------------
    @traced("analyze")
    def analyze(self, state: LoopState) -> dict[str, Any]:
        cfg = self.config
        remaining = max(0, cfg.max_images - state["images_used"])
        budget = int(min(cfg.images_per_iteration * state.get("image_scale", 1.0), remaining))
        context = analyzer_context(self.services, state["current"]["val"], state["explanation"],
                                   train_groups=train_groups(self.services, state.get("kept_manifests", [])), max_images=budget,
                                   iteration=state["iteration"], recalled=state.get("recalled", []),
                                   history=[it["line"] for it in state.get("iterations", [])])
        if cfg.target_band.check(state["current"]["val"]).inside:  # one notion of "fair" in the loop
            return {"analysis": {"backend": "loop", "model": None, "prompt": "", "raw": [], "attempts": 0, "errors": [],
                                 "fell_back": False, "seconds": 0.0, "budget": budget, "decision": {
                                     "diagnosis": "The model is inside the fair band, with its margin, on validation.",
                                     "counterfactuals_needed": False, "shortcut_attributes": [],
                                     "change_attributes": [], "plans": [], "negative_prompt": "", "mix_ratio": 0.0}}}
        result = self.services.analyzer.analyze(context)
        for error in result.errors:
            self.services.log(f"  analyzer answer rejected: {error}")
        return {"analysis": result.as_dict() | {"budget": budget}}

    def after_analyze(self, state: LoopState) -> str:
        decision = state["analysis"]["decision"]
        wanted = sum(p["n_images"] for p in decision["plans"])
        return "generate" if decision["counterfactuals_needed"] and wanted > 0 else "decide"

    def after_generate(self, state: LoopState) -> str:
        return "finetune" if state["generated"]["n"] > 0 else "decide"

    # generate ------------------------------------------------------------------------------
    @traced("generate")
    def generate(self, state: LoopState) -> dict[str, Any]:
        decision = state["analysis"]["decision"]
        manifest = self.services.folder.path / "manifests" / f"it{state['iteration']}.json"
        made = make_counterfactuals(self.services, decision["plans"], decision.get("negative_prompt", ""),
                                    seed_key=(self.config.seed, state["iteration"]), manifest=manifest)
        return {"generated": {"manifest": made["manifest"], "n": made["n"], "notes": made["notes"],
                              "verification": made["verification"], "iteration": state["iteration"]},
                "images_used": state["images_used"] + made["made"]}

    # finetune / evaluate -------------------------------------------------------------------
    @traced("finetune")
    def finetune(self, state: LoopState) -> dict[str, Any]:
        relative, result = finetune_model(self.services, state["model"], [state["generated"]["manifest"]],
                                          state.get("kept_manifests", []),
                                          mix_ratio=state["analysis"]["decision"]["mix_ratio"],
                                          seed=self.config.seed + state["iteration"],
                                          role=f"iteration {state['iteration']} candidate", bolder=True)
        return {"candidate": {"model": relative, "alpha": result.alpha, "finetune": result.as_dict(),
                              "mix_ratio": result.config["mix_ratio"], "iteration": state["iteration"]}}

    @traced("evaluate")
    def evaluate(self, state: LoopState) -> dict[str, Any]:
        return {"candidate": state["candidate"] | {"eval": evaluate_model(self.services, state["candidate"]["model"])}}

    # decide --------------------------------------------------------------------------------
    @traced("decide")
    def decide(self, state: LoopState) -> dict[str, Any]:
        cfg, band = self.config, self.config.target_band
        decision = state["analysis"]["decision"]
        current, initial = state["current"]["val"], state["initial"]["val"]
        iteration = state["iteration"]
        update: dict[str, Any] = {}

        if (state.get("candidate") or {}).get("iteration") == iteration and "eval" in state["candidate"]:
            cand = state["candidate"]["eval"]["val"]
            crossed = overshoots(initial, cand, cfg.band)
            accuracy_ok = cand["accuracy"] >= initial["accuracy"] - cfg.accuracy_budget
            wga_gain = (cand["worst_group_accuracy"] or 0) - (current["worst_group_accuracy"] or 0)
            closer = band_distance(current, band) - band_distance(cand, band)
            # reaching the band is worth a little worst-group accuracy; otherwise the candidate must be
            # better on one count (worst-group accuracy, distance to the band) and not worse on the other
            reaches_band = band.check(cand).inside and not band.check(current).inside
            accepted = accuracy_ok and not crossed and (
                (reaches_band and wga_gain > -0.02)
                or (wga_gain > -0.01 and closer > -0.005 and (wga_gain > 0.005 or closer > 0.005)))
            if crossed:
                reason = "rolled back: overshot the fair band (" + "; ".join(crossed) + ")"
            elif not accuracy_ok:
                reason = (f"rolled back: validation accuracy {cand['accuracy']:.3f} is below the budget "
                          f"({initial['accuracy']:.3f} − {cfg.accuracy_budget})")
            elif not accepted:
                reason = (f"rolled back: no gain (worst-group accuracy {wga_gain:+.3f}, "
                          f"distance to the fair band {-closer:+.3f})")
            else:
                reason = (f"accepted: worst-group accuracy {current['worst_group_accuracy']:.3f} → "
                          f"{cand['worst_group_accuracy']:.3f}, DI {current['disparate_impact']:.3f} → "
                          f"{cand['disparate_impact']:.3f}")
            entry = {
                "iteration": iteration, "accepted": accepted, "reason": reason,
                "metrics": state["candidate"]["eval"]["test"], "val_metrics": cand,
                "n_generated": state["generated"]["n"], "asked_mix_ratio": decision["mix_ratio"],
                "mix_ratio": state["candidate"].get("mix_ratio", decision["mix_ratio"]),
                "alpha": state["candidate"]["alpha"], "model": state["candidate"]["model"],
                "real_sampling": state["candidate"]["finetune"]["config"].get("real_sampling", "uniform"),
                "manifest": state["generated"]["manifest"],
                "verification": state["generated"].get("verification"),
                "analysis": state["analysis"],
            }
            if accepted:
                update |= {"model": state["candidate"]["model"], "current": state["candidate"]["eval"], "no_gain": 0,
                           "kept_manifests": state.get("kept_manifests", []) + [state["generated"]["manifest"]]}
                after = cand
            else:
                update["no_gain"] = state.get("no_gain", 0) + 1
                after = current
            if crossed:
                update["image_scale"] = state.get("image_scale", 1.0) * 0.5
        else:  # no counterfactuals: the analyzer asked for none, or none passed verification
            generated = state.get("generated") or {}
            verification = generated.get("verification") if generated.get("iteration") == iteration else None
            if verification is not None:
                reason = (f"no usable counterfactuals: none of the {verification['checked']} generated images passed "
                          "the attribute-oracle check")
            else:
                reason = "no counterfactuals: " + decision["diagnosis"][:200]
            entry = {"iteration": iteration, "accepted": False, "reason": reason, "metrics": state["current"]["test"],
                     "val_metrics": current, "n_generated": 0, "mix_ratio": 0.0, "alpha": None,
                     "verification": verification, "analysis": state["analysis"]}
            accepted, after = False, current
        entry["line"] = (f"iteration {iteration}: {entry['n_generated']} images, mix {entry['mix_ratio']:.2f} → "
                         f"{reason}")
        self.services.log("  " + reason)
        self._remember(state, entry, after, accepted)
        iterations = state.get("iterations", []) + [entry]
        update["iterations"] = iterations
        update["status"] = self._stop_reason(state, update, after, entry)
        if update["status"] == "running":
            update["iteration"] = iteration + 1
        return update

    def _stop_reason(self, state: LoopState, update: dict[str, Any], after: dict[str, Any], entry: dict) -> str:
        cfg = self.config
        if cfg.target_band.check(after).inside:
            return "fair: the model is inside the fair band, with its margin, on the validation split"
        if entry["n_generated"] == 0:
            return "stopped: " + ("the analyzer asked for no counterfactuals" if entry.get("verification") is None
                                  else "no generated image passed verification")
        if state["iteration"] >= cfg.max_iterations:
            return f"stopped: {cfg.max_iterations} iterations spent"
        if state["images_used"] >= cfg.max_images:
            return f"stopped: image budget of {cfg.max_images} spent"
        if update.get("no_gain", 0) >= 2:
            return "stopped: two iterations brought no gain"
        return "running"

    def after_decide(self, state: LoopState) -> str:
        return "measure" if state["status"] == "running" else "report"

    def _remember(self, state: LoopState, entry: dict[str, Any], after: dict[str, Any], accepted: bool) -> None:
        from fairloop.memory import IterationRecord

        cfg, services = self.config, self.services
        decision = state["analysis"]["decision"]
        record = IterationRecord(
            run_id=services.folder.path.name, iteration=entry["iteration"], dataset=services.dataset.name,
            target=cfg.target, protected=cfg.protected,
            scenario=f"{services.dataset.name} at {services.dataset.root.name}: {cfg.target} vs {cfg.protected}",
            metrics_before=_compact(state["current"]["val"]), metrics_after=_compact(entry["val_metrics"]),
            importances=[(k, float(v)) for k, v in state["explanation"]["as_list"][:8]],
            analyzer=decision, generator=services.generator.name, n_generated=entry["n_generated"],
            mix_ratio=float(entry["mix_ratio"]), alpha=entry["alpha"], accepted=accepted, outcome=entry["reason"],
        )
        services.memory.add(record)

    # report --------------------------------------------------------------------------------
    @traced("report")
    def report(self, state: LoopState) -> dict[str, Any]:
        from fairloop.report.run_html import write_run_outputs

        final_explanation = explain_model(self.services, state["model"])
        paths = write_run_outputs(self.services, state, final_explanation)
        return {"status": state["status"], "report": {k: self.services.folder.relative(v) for k, v in paths.items()}}


def build_graph(services: RunServices, checkpointer=None):
    """Compile the loop for one run; ``checkpointer`` makes it resumable."""
    from langgraph.graph import END, START, StateGraph

    loop = MitigationLoop(services)
    graph = StateGraph(LoopState)
    for name in ("setup", "measure", "explain", "recall", "analyze", "generate", "finetune", "evaluate", "decide",
                 "report"):
        graph.add_node(name, getattr(loop, name))
    graph.add_edge(START, "setup")
    graph.add_edge("setup", "measure")
    graph.add_edge("measure", "explain")
    graph.add_edge("explain", "recall")
    graph.add_edge("recall", "analyze")
    graph.add_conditional_edges("analyze", loop.after_analyze, ["generate", "decide"])
    graph.add_conditional_edges("generate", loop.after_generate, ["finetune", "decide"])
    graph.add_edge("finetune", "evaluate")
    graph.add_edge("evaluate", "decide")
    graph.add_conditional_edges("decide", loop.after_decide, ["measure", "report"])
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)


def run_loop(services: RunServices) -> dict[str, Any]:
    """Run the loop to its end, or continue it from its last checkpoint; return the final state.

    A run is finished once its report node has run. Any other saved state is continued: even an
    empty ``next`` can mean a node finished but the step's checkpoint was not yet written.
    """
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(services.folder.state_db, check_same_thread=False)
    try:
        graph = build_graph(services, SqliteSaver(conn))
        config = {"configurable": {"thread_id": "loop"}, "recursion_limit": 10 * services.config.max_iterations + 20}
        snapshot = graph.get_state(config)
        if snapshot.values.get("report"):
            return snapshot.values  # finished before: nothing to redo
        graph.invoke(None if snapshot.values else {}, config)
        return graph.get_state(config).values
    finally:
        conn.close()

"""One experiment job: the shared ERM model of a (scenario, seed), or one arm started from it.

A job works in its own run folder (its own images, models, evaluations and memory, so arms never
leak into each other) and ends by writing ``result.json`` atomically; a job with a readable result
is done. Jobs are plain functions of (config, job, paths), so any executor can run them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairloop.errors import DataError
from fairloop.experiments.config import FINETUNE_ARMS, ExperimentConfig, ScenarioSpec, job_seed
from fairloop.io import atomic_write, atomic_write_json, finished_file

#: Kept images whose paths a result lists, for the report's examples.
EXAMPLES = 8
#: Characters of an LLM's diagnosis and first raw answer kept in a result.
TEXT_LIMIT = 1500


@dataclass(frozen=True)
class Job:
    scenario: ScenarioSpec
    arm: str        # "ERM" for the shared baseline job of (scenario, seed)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.scenario.key}/{self.arm}/s{self.seed}"

    def folder(self, experiment: Path) -> Path:
        if self.arm == "ERM":
            return experiment / "erm" / self.scenario.key / f"s{self.seed}"
        return experiment / "jobs" / self.scenario.key / self.arm / f"s{self.seed}"


def read_result(path: Path, job: Job) -> dict[str, Any] | None:
    """The job's result when ``path`` holds a complete one for this job, else None (redo it)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("job") != job.key or "metrics" not in result:
        return None
    return result


def run_job(config: ExperimentConfig, job: Job, experiment: Path, root: str, *, progress=None,
            log=print) -> dict[str, Any]:
    """Run ``job`` (its ERM job must have run for an arm) and write its ``result.json``; the result."""
    import torch

    from fairloop.runs import RunFolder, RunServices

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    folder = RunFolder(job.folder(experiment))
    if job.arm == "ERM":
        run_config = config.run_config(job.scenario, "erm", job.seed, root, memory=str(folder.path / "memory"))
        services = RunServices(run_config, folder, progress=progress, log=log)
        result = _erm(services)
    else:
        seed = job_seed(job.seed, job.arm)
        run_config = config.run_config(job.scenario, job.arm, seed, root, memory=str(folder.path / "memory"))
        services = RunServices(run_config, folder, progress=progress, log=log)
        erm = Job(job.scenario, "ERM", job.seed)
        erm_result = read_result(erm.folder(experiment) / "result.json", erm)
        if erm_result is None:
            raise DataError(f"job {job.key} starts from the ERM model of seed {job.seed}, which has no result yet",
                            f"run the experiment again with --resume {experiment}: ERM jobs run first")
        model = _adopt(services, RunFolder(erm.folder(experiment)), erm_result["model"])
        if job.arm == "erm":  # its cost is the shared baseline's training
            result = _unchanged(services, model) | {"erm_seconds": erm_result["seconds"]}
        elif job.arm in FINETUNE_ARMS:
            result = _finetune_arm(services, model, job.arm, seed)
        elif config.protocol == "loop":
            result = _loop_arm(services, model)
        else:
            result = _fixed_arm(services, model, config, seed)
    seconds = time.perf_counter() - start + result.get("erm_seconds", 0.0)
    result |= {"job": job.key, "arm": job.arm, "seed": job.seed, "scenario": job.scenario.key,
               "protocol": config.protocol, "seconds": round(seconds, 2), "threads": torch.get_num_threads()}
    atomic_write_json(folder.path / "result.json", result)
    return result


# ------------------------------------------------------------------------------------------ arms


def _erm(services) -> dict[str, Any]:
    from fairloop.runs.steps import evaluate_model, explain_model, train_baseline

    model = train_baseline(services)
    metrics = evaluate_model(services, model)
    explain_model(services, model)  # every arm starts from this explanation: computed once
    return {"model": model, "metrics": metrics["test"], "val_metrics": metrics["val"]}


def _adopt(services, erm_folder, relative: str) -> str:
    """The shared ERM checkpoint in this job's folder, with its evaluations (same content hash)."""
    from fairloop.runs.steps import model_key

    source = erm_folder.resolve(relative)
    target = services.folder.resolve(relative)
    for path in [source, source.with_suffix(".json"), *(erm_folder.path / "evals").glob(f"{model_key(relative)}.*")]:
        copy = target.parent / path.name if path.parent == source.parent else services.folder.path / "evals" / path.name
        if not finished_file(copy):
            atomic_write(copy, lambda tmp, path=path: shutil.copyfile(path, tmp))
    return relative


def fell_back(result: dict[str, Any]) -> bool:
    """Whether a job's strategy did not use its own answer (an LLM's fallback, in any iteration)."""
    return bool((result.get("proposal") or {}).get("fell_back")) or int(result.get("fallbacks") or 0) > 0


def _unchanged(services, model: str) -> dict[str, Any]:
    from fairloop.runs.steps import evaluate_model

    metrics = evaluate_model(services, model)
    return {"model": model, "metrics": metrics["test"], "val_metrics": metrics["val"], "n_generated": 0}


def _finetune_arm(services, model: str, arm: str, seed: int) -> dict[str, Any]:
    from fairloop.runs.steps import evaluate_model, finetune_model

    relative, ft = finetune_model(services, model, [], [], mix_ratio=0.0, seed=seed, role=arm, **FINETUNE_ARMS[arm])
    metrics = evaluate_model(services, relative)
    return {"model": relative, "metrics": metrics["test"], "val_metrics": metrics["val"], "n_generated": 0,
            "alpha": ft.alpha, "finetune": {k: ft.config[k] for k in ("mode", "objective", "real_sampling", "epochs")}}


def _fixed_arm(services, model: str, config: ExperimentConfig, seed: int) -> dict[str, Any]:
    """One round: the strategy's proposal scaled to ``config.images`` images, generated, checked,
    and fine-tuned in at the experiment's mix ratio (the same for every arm)."""
    from fairloop.agent.analyzer import default_mix
    from fairloop.runs.steps import (
        analyzer_context,
        evaluate_model,
        explain_model,
        finetune_model,
        make_counterfactuals,
        train_groups,
    )
    from fairloop.strategies.base import scale_plans

    metrics, explanation = evaluate_model(services, model), explain_model(services, model)
    context = analyzer_context(services, metrics["val"], explanation, train_groups=train_groups(services, []),
                               max_images=config.images, model=model)
    proposal = services.strategy.propose(context, np.random.default_rng(seed))
    decision = proposal.decision
    asked = [p.model_dump() for p in decision.plans] if decision.counterfactuals_needed else []
    plans = scale_plans(asked, config.images)
    made = {"n": 0, "made": 0, "verification": None, "manifest": None}
    if plans:
        made = make_counterfactuals(services, plans, decision.negative_prompt, seed_key=(seed,),
                                    manifest=services.folder.path / "manifests" / "fixed.json",
                                    text_to_image=proposal.text_to_image, scm=proposal.scm,
                                    match_proxy=proposal.match_proxy, search=proposal.search, model=model)
    mix = config.mix_ratio or default_mix(config.images, len(services.dataset.split("train")))
    result: dict[str, Any] = {"n_asked": sum(p["n_images"] for p in asked), "n_made": made["made"],
                              "n_generated": made["n"], "mix_ratio": mix, "plans": plans,
                              "verification": made["verification"], "proposal": _proposal_text(proposal.as_dict())}
    if context.weaknesses:  # images drawn to find them: not training data, but time the arm spent
        result["discovery_images"] = sum(int(w["drawn"]) for w in context.weaknesses)
    if made["n"] == 0:  # nothing to train on: the arm's model is the ERM model
        return result | _unchanged(services, model)
    relative, ft = finetune_model(services, model, [made["manifest"]], [], mix_ratio=mix, seed=seed,
                                  role=f"experiment arm {services.config.strategy}")
    after = evaluate_model(services, relative)
    return result | {"model": relative, "metrics": after["test"], "val_metrics": after["val"], "alpha": ft.alpha,
                     "examples": _examples(services, made["manifest"])}


def _loop_arm(services, model: str) -> dict[str, Any]:
    """The whole mitigation loop with this arm's strategy and the experiment's image budget."""
    from dataclasses import replace

    from fairloop.graphs.loop import run_loop

    services.config = replace(services.config, baseline=str(services.folder.resolve(model)))
    services.folder.save_config(services.config)
    state = run_loop(services)
    summary = json.loads((services.folder.path / "summary.json").read_text())
    iterations = summary["iterations"]
    kept = [it["manifest"] for it in iterations if it.get("accepted") and it.get("manifest")]
    analyses = [it.get("analysis") or {} for it in iterations]
    return {"model": state["model"], "metrics": summary["final"], "val_metrics": summary["final_val"],
            "n_generated": sum(int(it.get("n_generated") or 0) for it in iterations),
            "n_made": int(summary.get("images_used") or 0), "status": summary["status"],
            "iterations": len(iterations), "accepted": sum(bool(it.get("accepted")) for it in iterations),
            "verification": _pooled_verification([it.get("verification") for it in iterations]),
            "proposal": _proposal_text(analyses[0]) if analyses else None,
            "fallbacks": sum(bool(a.get("fell_back")) for a in analyses),
            "examples": _examples(services, kept[0]) if kept else []}


# ------------------------------------------------------------------------------------- reporting


def _proposal_text(analysis: dict[str, Any]) -> dict[str, Any]:
    decision = analysis.get("decision") or {}
    raw = analysis.get("raw") or []
    return {"strategy": analysis.get("strategy"), "backend": analysis.get("backend"), "model": analysis.get("model"),
            "diagnosis": str(decision.get("diagnosis", ""))[:TEXT_LIMIT],
            "first_answer": str(raw[0])[:TEXT_LIMIT] if raw else "", "attempts": analysis.get("attempts"),
            "errors": [str(e)[:300] for e in (analysis.get("errors") or [])][:5],
            "fell_back": bool(analysis.get("fell_back")), "mix_ratio": decision.get("mix_ratio"),
            "plans": decision.get("plans", [])}


def _pooled_verification(checks: list[dict[str, Any] | None]) -> dict[str, int] | None:
    checks = [c for c in checks if c]
    if not checks:
        return None
    return {"checked": sum(int(c["checked"]) for c in checks), "passed": sum(int(c["passed"]) for c in checks)}


def _examples(services, manifest: str) -> list[dict[str, Any]]:
    rows = json.loads(services.folder.resolve(manifest).read_text())["images"][:EXAMPLES]
    return [{"path": r["path"], "prompt": r.get("prompt", ""), "label": r.get("label")} for r in rows]


__all__ = ["Job", "fell_back", "read_result", "run_job"]

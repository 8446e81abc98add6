"""Running an experiment: plan its jobs, run those without a result, and write its tables.

```
EXP/experiment.json                 config, its digest, versions, thread counts
EXP/data/<scenario>/                SynthFaces of each scenario (without --root)
EXP/erm/<scenario>/s<seed>/         the shared ERM model of each (scenario, seed), result.json
EXP/jobs/<scenario>/<arm>/s<seed>/  one arm's run folder and result.json
EXP/results.csv, EXP/summary.json, EXP/table.md, EXP/report.html
```

Every arm of a (scenario, seed) starts from that seed's ERM model and is measured on the same test
split (a paired design). ``--resume`` runs only the jobs without a result; adding arms or seeds
adds jobs; changing what decides a job's numbers (generator, images, epochs, …) is refused.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError
from fairloop.experiments.config import ExperimentConfig, ScenarioSpec, load_experiment, save_experiment
from fairloop.experiments.jobs import Job, fell_back, read_result, run_job
from fairloop.experiments.stats import METRICS, summarize
from fairloop.io import atomic_write_json, atomic_write_text

#: The metric keys of audit.json, the columns of results.csv.
METRIC_COLUMNS = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "disparate_impact",
                  "statistical_parity_difference", "equal_opportunity_difference", "average_odds_difference",
                  "theil_index", "false_negative_rate_difference")


def plan_jobs(config: ExperimentConfig) -> list[Job]:
    """ERM jobs first within each (scenario, seed), then its arms, in the order given."""
    jobs = []
    for scenario in config.scenarios:
        for seed in config.seeds:
            jobs.append(Job(scenario, "ERM", seed))
            jobs += [Job(scenario, arm, seed) for arm in config.arms]
    return jobs


def scenario_root(config: ExperimentConfig, scenario: ScenarioSpec, experiment: Path, log=print) -> str:
    """The data folder of a scenario: the user's --root, or SynthFaces synthesized once in EXP/data."""
    from fairloop.data.datasets import load_dataset

    if config.root:
        data = load_dataset(config.dataset, config.root, csv=config.csv)
        data.require_attribute(scenario.target, "target")
        data.require_attribute(scenario.protected, "protected")
        return str(Path(config.root).absolute())
    from fairloop.data.synthfaces import Scenario, default_cues, write_synthfaces

    folder = experiment / "data" / f"{scenario.key}-n{config.n}-d{config.data_seed}"
    if not (folder / "list_attr_celeba.txt").exists():
        spec = Scenario(scenario.target, scenario.protected, scenario.correlation).validate()
        log(f"synthesizing {folder.name} …")
        write_synthfaces(folder, n=config.n, scenario=spec, seed=config.data_seed, cues=default_cues(spec.target),
                         force=True)
    return str(folder.absolute())


def open_experiment(out: Path, config: ExperimentConfig | None, *, resume: bool) -> ExperimentConfig:
    """The experiment folder's config: ``config`` for a new folder; for ``resume``, the stored one,
    or ``config`` when it differs from it only in arms, seeds and scenarios (they add jobs, never
    change finished ones)."""
    if not resume:
        if (out / "experiment.json").exists():
            raise ConfigError(f"{out} already holds an experiment",
                              f"continue it with --resume {out}, or choose another --out")
        return config.validate()
    stored = load_experiment(out)
    if config is None:
        return stored.validate()
    if config.digest() != stored.digest():
        raise ConfigError(f"{out} was run with other settings than these (generator, images, epochs, …)",
                          "resume it with only --arms, --seeds or --scenario changed, or start a new --out")
    return config.validate()


EXECUTORS = ("local", "ray")


def run_experiment(config: ExperimentConfig, out: Path, *, executor: str = "local", ray_address: str | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every job without a result, then write the tables. ``local`` runs the jobs in this
    process one after another; ``ray`` submits them to Ray (:mod:`fairloop.experiments.ray_executor`).
    Both give the same ``result.json`` for the same job: the executor decides where, not what."""
    import os

    from fairloop.manifest import build_manifest

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}", f"use one of {', '.join(EXECUTORS)}")
    out.mkdir(parents=True, exist_ok=True)
    save_experiment(out, config, build_manifest(config.as_dict(), executor=executor, ray_address=ray_address,
                                                threads={"torch_per_job": config.threads,
                                                         "machine_cpus": os.cpu_count()}))
    jobs = plan_jobs(config)
    todo = [job for job in jobs if read_result(job.folder(out) / "result.json", job) is None]
    shared = sum(job.arm == "ERM" for job in jobs)
    log(f"{len(jobs)} jobs ({shared} shared ERM models, {len(jobs) - shared} arm jobs), {len(jobs) - len(todo)} "
        f"already done; writing to {out}")
    roots = {scenario.key: scenario_root(config, scenario, out, log)  # the data first, once, on this machine
             for scenario in dict.fromkeys(job.scenario for job in todo)}
    if executor == "ray":
        from fairloop.experiments.ray_executor import run_on_ray

        run_on_ray(config, out, todo, roots, address=ray_address, progress=progress, log=log)
        return write_outputs(config, out)
    start = time.perf_counter()
    for done, job in enumerate(todo):
        if progress:
            progress("jobs", done, len(todo))
        elapsed = time.perf_counter() - start
        eta = f", about {elapsed / done * (len(todo) - done) / 60:.0f} min left" if done else ""
        log(f"job {done + 1}/{len(todo)}: {job.key}{eta}")
        run_job(config, job, out, roots[job.scenario.key], progress=progress, log=log)
    if progress:
        progress("jobs", len(todo), len(todo))
    return write_outputs(config, out)


def collect(config: ExperimentConfig, out: Path) -> list[dict[str, Any]]:
    """The results of this experiment's arm jobs (finished ones only)."""
    rows = []
    for job in plan_jobs(config):
        if job.arm != "ERM":
            result = read_result(job.folder(out) / "result.json", job)
            if result is not None:
                rows.append(result)
    return rows


def write_outputs(config: ExperimentConfig, out: Path) -> dict[str, Any]:
    """``results.csv`` (one row per job), ``summary.json``, ``table.md`` and ``report.html``."""
    from fairloop.report.experiment_html import render_experiment_html
    from fairloop.tools.metrics import FairBand

    rows = collect(config, out)
    band = FairBand()
    summaries = summarize(rows, reference=config.reference, band=band)
    order = {arm: k for k, arm in enumerate(config.arms)}
    summaries.sort(key=lambda s: ([sc.key for sc in config.scenarios].index(s["scenario"]), order[s["arm"]]))
    atomic_write_text(out / "results.csv", results_csv(rows, band))
    summary = {"config": config.as_dict(), "reference": config.reference, "jobs": len(rows),
               "band": {"di_low": band.di_low, "di_high": band.di_high, "max_abs_diff": band.max_abs_diff},
               "arms": summaries}
    atomic_write_json(out / "summary.json", summary)
    table = markdown_table(summary)
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "report.html", render_experiment_html(summary, rows, out))
    return summary


def results_csv(rows: list[dict[str, Any]], band) -> str:
    columns = ["scenario", "arm", "seed", "protocol", *METRIC_COLUMNS, "in_band", "n_generated", "n_made",
               "oracle_checked", "oracle_passed", "fell_back", "alpha", "mix_ratio", "seconds", "threads"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r["scenario"], r["arm"], r["seed"])):
        verification = r.get("verification") or {}
        writer.writerow({"scenario": r["scenario"], "arm": r["arm"], "seed": r["seed"], "protocol": r["protocol"],
                         **{m: r["metrics"].get(m) for m in METRIC_COLUMNS},
                         "in_band": band.check(r["metrics"]).inside, "n_generated": r.get("n_generated", 0),
                         "n_made": r.get("n_made", r.get("n_generated", 0)),
                         "oracle_checked": verification.get("checked"), "oracle_passed": verification.get("passed"),
                         "fell_back": fell_back(r),
                         "alpha": r.get("alpha"), "mix_ratio": r.get("mix_ratio"), "seconds": r.get("seconds"),
                         "threads": r.get("threads")})
    return buffer.getvalue()


def _ci(interval: dict[str, Any], digits: int = 3, signed: bool = False) -> str:
    if interval["mean"] is None:
        return "undef."
    sign = "+" if signed else ""
    if interval["half_width"] is None:
        return f"{interval['mean']:{sign}.{digits}f}"
    return f"{interval['mean']:{sign}.{digits}f} ± {interval['half_width']:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """Per scenario: each arm's mean ± 95 % CI over seeds, then its paired differences."""
    reference = summary["reference"]
    lines = [f"# Experiment: {summary['config']['protocol']} protocol, {summary['config']['images']} images per "
             f"{'job' if summary['config']['protocol'] == 'fixed' else 'run'}, generator "
             f"{summary['config']['generator']}", "",
             "Test split; mean ± half-width of the 95 % t-interval over seeds. In band: DI in "
             f"[{summary['band']['di_low']}, {summary['band']['di_high']}] and |SPD|, |EOD|, |AOD| ≤ "
             f"{summary['band']['max_abs_diff']}."]
    for scenario in dict.fromkeys(s["scenario"] for s in summary["arms"]):
        arms = [s for s in summary["arms"] if s["scenario"] == scenario]
        lines += ["", f"## {scenario}", "",
                  "| arm | seeds | accuracy | worst-group acc. | DI | SPD | EOD | AOD | in band | images kept | oracle pass | fallbacks | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in arms:
            m = s["metrics"]
            oracle = "" if s["oracle_pass_rate"] is None else f"{s['oracle_pass_rate']:.2f}"
            lines.append(f"| {s['arm']} | {s['n']} | {_ci(m['accuracy'])} | {_ci(m['worst_group_accuracy'])} | "
                         f"{_ci(m['disparate_impact'])} | {_ci(m['statistical_parity_difference'], signed=True)} | "
                         f"{_ci(m['equal_opportunity_difference'], signed=True)} | "
                         f"{_ci(m['average_odds_difference'], signed=True)} | {s['in_band']}/{s['n']} | "
                         f"{_ci(s['n_generated'], 0)} | {oracle} | {s['fallbacks']} | {_ci(s['seconds'], 0)} |")
        lines += ["", f"Paired differences against `{reference}` (same seed, same ERM model): worst-group accuracy "
                      "(arm − reference; > 0 is better) and |EOD| (arm − reference; < 0 is better), with wins k/n. "
                      "An interval that contains 0 is within the noise.", "",
                  "| arm | Δ worst-group acc. | wins | Δ \\|EOD\\| | wins | verdict |", "|---|---:|---:|---:|---:|---|"]
        for s in arms:
            if not s["paired"]:
                continue
            wga, eod = s["paired"]["worst_group_accuracy"], s["paired"]["equal_opportunity_difference"]
            verdict = ("within the noise" if wga["within_noise"] else
                       ("better" if wga["mean"] > 0 else "worse") + " on worst-group accuracy")
            lines.append(f"| {s['arm']} | {_ci(wga, signed=True)} | {wga['wins']}/{wga['seeds']} | "
                         f"{_ci(eod, signed=True)} | {eod['wins']}/{eod['seeds']} | {verdict} |")
    return "\n".join(lines) + "\n"


__all__ = ["EXECUTORS", "METRICS", "collect", "open_experiment", "plan_jobs", "run_experiment", "write_outputs"]

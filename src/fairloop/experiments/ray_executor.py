"""Running an experiment's jobs on Ray: one task per job, on this machine or a cluster.

Jobs are independent except that each arm job reads its (scenario, seed)'s ERM checkpoint: the arm
task takes the ERM task's result (a small dict holding the checkpoint's path) as an argument, so
Ray starts it only once that model exists. Each task declares ``threads`` CPUs (and a GPU when the
experiment runs on CUDA), sets torch to that many threads and records it, and writes its own job
folder: every job has its own run folder and memory, so arms never share state. The experiment
folder must be on storage every node sees (a shared file system) when Ray runs on a cluster. A
worker process keeps the packaged LLM loaded between the tasks it runs, one model per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError
from fairloop.experiments.config import ExperimentConfig, ScenarioSpec
from fairloop.experiments.jobs import Job, run_job


def _task(config: dict[str, Any], scenario: dict[str, Any], arm: str, seed: int, out: str, root: str,
          *erm: dict[str, Any]) -> dict[str, Any]:
    """One job inside a Ray worker (``erm``: the ERM task's result, only there to order the tasks)."""
    job = Job(ScenarioSpec(**scenario), arm, seed)
    return run_job(ExperimentConfig.from_dict(config), job, Path(out), root, log=lambda line: None)


def run_on_ray(config: ExperimentConfig, out: Path, todo: list[Job], roots: dict[str, str], *,
               address: str | None = None, progress: Callable[[str, int, int], None] | None = None,
               log: Callable[[str], None] = print) -> None:
    """Submit ``todo`` to Ray (a local Ray started here, or the cluster at ``address``) and wait."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray, which is not installed",
                          "pip install -e '.[ray]' (or pip install ray), or use --executor local") from None
    from dataclasses import asdict

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 ignore_reinit_error=True)
    try:
        gpus = 1 if config.device.startswith("cuda") else 0
        task = ray.remote(_task).options(num_cpus=config.threads, num_gpus=gpus, max_retries=0)
        refs: dict[str, Any] = {}
        keys: dict[Any, str] = {}
        for job in todo:  # ERM jobs come first in each (scenario, seed): arm jobs wait on them
            erm = Job(job.scenario, "ERM", job.seed).key
            deps = [refs[erm]] if job.arm != "ERM" and erm in refs else []
            ref = task.remote(config.as_dict(), asdict(job.scenario), job.arm, job.seed, str(out.absolute()),
                              roots[job.scenario.key], *deps)
            refs[job.key], keys[ref] = ref, job.key
        cluster = ray.cluster_resources()
        log(f"Ray: {len(todo)} tasks on {cluster.get('CPU', 0):g} CPUs ({config.threads} each)"
            + (f" and {cluster.get('GPU', 0):g} GPUs" if gpus else ""))
        pending, start = list(refs.values()), time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)  # a failed task raises here, with its traceback
            finished = len(todo) - len(pending)
            eta = (time.perf_counter() - start) / finished * len(pending)
            left = f", about {eta / 60:.0f} min left" if pending else ""
            log(f"job {finished}/{len(todo)} done: {keys[done[0]]}{left}")
            if progress:
                progress("jobs", finished, len(todo))
    finally:
        if started:
            ray.shutdown()

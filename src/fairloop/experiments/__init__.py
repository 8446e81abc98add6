"""Prompt-strategy experiments (``fairloop experiment``): arms × seeds × scenarios, paired on one
ERM model per seed, with confidence intervals. See :mod:`fairloop.experiments.runner`."""

from fairloop.experiments.config import ARMS, BASIC_ARMS, FINETUNE_ARMS, PROTOCOLS, ExperimentConfig, ScenarioSpec
from fairloop.experiments.runner import open_experiment, run_experiment, write_outputs

__all__ = ["ARMS", "BASIC_ARMS", "FINETUNE_ARMS", "PROTOCOLS", "ExperimentConfig", "ScenarioSpec", "open_experiment",
           "run_experiment", "write_outputs"]

"""A mitigation run's configuration, folder and the services its graph nodes share.

The run folder holds everything a run makes, so a resumed run finds its own work:

```
RUN/config.json         the RunConfig (no secrets: the API key stays in the environment)
RUN/state.sqlite        LangGraph checkpoints (one thread per run)
RUN/models/<hash>.*     checkpoints named by content hash (safetensors + JSON sidecar)
RUN/evals/<hash>.json   metrics, predictions summary and explanation of a checkpoint, computed once
RUN/images/<hash>.png   counterfactual images, named by content hash
RUN/manifests/it<k>.json  the manifest of iteration k's images
RUN/trace.jsonl         every tool call: node, iteration, seconds, a compact result
RUN/summary.json, RUN/report.html
```
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write_json

MEMORY_KEYS = ("accuracy", "worst_group_accuracy", "disparate_impact", "statistical_parity_difference",
               "equal_opportunity_difference", "average_odds_difference")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a mitigation run; its hash names the run."""

    dataset: str = "celeba"
    root: str = ""
    csv: str | None = None
    target: str = "Male"
    protected: str = "Gray_Hair"
    privileged_value: int = 1
    generator: str = "embedded"  # fairloop's own diffusion model; render: the SynthFaces oracle
    generator_model: str | None = None  # sd: checkpoint path or hub id; embedded: other weights
    llm: str = "rules"
    llm_model: str | None = None
    llm_base_url: str | None = None
    max_iterations: int = 4
    max_images: int = 12000           # over the whole run
    images_per_iteration: int = 6000
    accuracy_budget: float = 0.01     # max drop of validation accuracy vs the starting model
    di_low: float = 0.8
    di_high: float = 1.25
    max_abs_diff: float = 0.05
    stop_margin: float = 0.4          # the loop aims inside the band by this share of its width
    arch: str = "smallcnn"
    baseline_epochs: int = 8
    baseline: str | None = None       # an existing checkpoint to start from
    finetune_epochs: int = 2
    finetune_mode: str = "full"
    seed: int = 0
    device: str = "auto"
    memory: str | None = None         # memory folder; default $FAIRLOOP_HOME/memory
    explain_rows: int = 200

    def validate(self) -> RunConfig:
        if self.max_iterations < 1 or self.max_images < 0 or self.images_per_iteration < 1:
            raise ConfigError("--max-iterations, --max-images and --images-per-iteration must be positive",
                              "use e.g. --max-iterations 3 --max-images 12000")
        if self.finetune_epochs < 1:
            raise ConfigError(f"--finetune-epochs {self.finetune_epochs} trains nothing", "use e.g. --finetune-epochs 2")
        if not 0 <= self.stop_margin < 1:
            raise ConfigError(f"--stop-margin {self.stop_margin} is not a fraction", "use e.g. 0.4 (0 stops at the band's edge)")
        if not 0 <= self.accuracy_budget < 1:
            raise ConfigError(f"--accuracy-budget {self.accuracy_budget} is not a fraction", "use e.g. 0.01 (1 point)")
        from fairloop.tools.generate import GENERATORS

        if self.generator not in GENERATORS:
            raise ConfigError(f"unknown --generator {self.generator!r}", f"use one of {', '.join(GENERATORS)}")
        if self.generator == "sd" and not self.generator_model:
            raise ConfigError("--generator sd needs a Stable Diffusion checkpoint",
                              "pass --generator-model PATH_OR_HUB_ID (a diffusers folder, or a hub id you have cached)")
        from fairloop.agent.analyzer import ANALYZER_KINDS

        if self.llm not in ANALYZER_KINDS:
            raise ConfigError(f"unknown --llm {self.llm!r}", f"use {', '.join(ANALYZER_KINDS)} (or auto on the command line)")
        if self.llm == "openai" and not self.llm_model:
            raise ConfigError("--llm openai needs a model name", "pass --llm-model, e.g. gpt-4o-mini")
        return self

    @property
    def band(self):
        from fairloop.tools.metrics import FairBand

        return FairBand(self.di_low, self.di_high, self.max_abs_diff)

    @property
    def target_band(self):
        """What the loop aims for: the band less ``stop_margin`` of its width on each side.

        Validation metrics carry sampling error (one standard error of EOD is about 0.02 with 1,800
        balanced images, 0.4 of the band's half-width), so a model that stops right at the band's
        edge on validation lands outside it on fresh data about half the time. The fair band itself
        still decides what counts as overshooting."""
        return self.band.shrunk(self.stop_margin)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def run_id(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True)
        return "run-" + hashlib.sha256(canonical.encode()).hexdigest()[:10]


@dataclass
class RunFolder:
    """Paths inside a run folder, and the trace of tool calls."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        for sub in ("models", "evals", "images", "manifests"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def state_db(self) -> Path:
        return self.path / "state.sqlite"

    def relative(self, path: str | Path) -> str:
        return str(Path(path).resolve().relative_to(self.path.resolve()))

    def resolve(self, relative: str) -> Path:
        """A path stored in the state, resolved inside the run folder (never outside it)."""
        path = (self.path / relative).resolve()
        if self.path.resolve() not in path.parents and path != self.path.resolve():
            raise DataError(f"state path {relative!r} points outside the run folder", "the run state is damaged")
        return path

    def save_config(self, config: RunConfig) -> None:
        atomic_write_json(self.config_file, config.as_dict())

    def load_config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise DataError(f"{self.path} is not a fairloop run folder (no config.json)",
                            "pass the folder that 'fairloop run --out' created")
        return RunConfig.from_dict(json.loads(self.config_file.read_text()))

    def trace(self, node: str, iteration: int, seconds: float, result: dict[str, Any]) -> None:
        """Append one tool call to ``trace.jsonl`` (a line is written whole or not at all)."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "node": node, "iteration": iteration,
                           "seconds": round(seconds, 2), "result": result}, default=str)
        with open(self.path / "trace.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def read_trace(self) -> list[dict[str, Any]]:
        path = self.path / "trace.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class RunServices:
    """What the graph's nodes share that is not state: the dataset, generator, analyzer, memory."""

    config: RunConfig
    folder: RunFolder
    progress: Any = None             # (stage, done, total) callback, or None
    log: Any = print                 # one-line messages for the user

    @cached_property
    def dataset(self):
        from fairloop.data.datasets import load_dataset

        data = load_dataset(self.config.dataset, self.config.root, csv=self.config.csv)
        data.require_attribute(self.config.target, "target")
        data.require_attribute(self.config.protected, "protected")
        return data

    @cached_property
    def generator(self):
        from fairloop.tools.generate import make_generator

        return make_generator(self.config.generator, model=self.config.generator_model, device=self.config.device)

    @cached_property
    def oracle(self):
        """The attribute oracle that verifies generated images, or None outside its domain (SynthFaces)."""
        from fairloop.data.synthfaces import is_synthfaces

        if self.generator.exact or not is_synthfaces(self.dataset.root):
            return None
        from fairloop.tools.quality import AttributeOracle

        return AttributeOracle.packaged()

    @cached_property
    def analyzer(self):
        from fairloop.agent.analyzer import make_analyzer

        return make_analyzer(self.config.llm, model=self.config.llm_model, base_url=self.config.llm_base_url)

    @cached_property
    def memory(self):
        from fairloop.memory import MemoryStore, default_memory_path

        return MemoryStore(self.config.memory or default_memory_path())

    @cached_property
    def device(self):
        from fairloop.vision.models import resolve_device

        return resolve_device(self.config.device)

    def load_model(self, relative: str):
        from fairloop.vision.models import load_checkpoint

        return load_checkpoint(self.folder.resolve(relative), self.device)

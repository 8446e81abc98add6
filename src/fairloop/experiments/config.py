"""What an experiment compares: scenarios × arms × seeds, under one protocol and one budget."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write_json
from fairloop.strategies import STRATEGIES, check_strategy

#: Arms that fine-tune the shared ERM model without generated images: the same fine-tune (epochs,
#: α grid, accuracy budget, selection on validation) with another objective or other real rows.
FINETUNE_ARMS: dict[str, dict[str, str]] = {
    "realft": {},                                              # the fine-tune of the image arms, mix 0
    "resampling": {"real_sampling": "balanced"},               # group-balanced draws
    "reweighing": {"objective": "reweighing", "real_sampling": "uniform"},   # AIF360 Reweighing's weights
    "groupdro": {"objective": "groupdro", "real_sampling": "uniform"},       # online group DRO
    "dfr": {"mode": "head", "real_sampling": "balanced"},      # last layer on group-balanced training rows
}
ARMS = ("erm", *FINETUNE_ARMS, *STRATEGIES)
#: What an arm without an LLM or a prompts file runs by default.
BASIC_ARMS = ("erm", "realft", "resampling", "reweighing", "groupdro", "dfr", "random", "manual-min", "rules")
PROTOCOLS = ("fixed", "loop")


@dataclass(frozen=True)
class ScenarioSpec:
    """One (target, protected) question; ``correlation`` is the SynthFaces shortcut strength (None:
    the user's own folder, which has whatever bias it has)."""

    target: str = "Male"
    protected: str = "Gray_Hair"
    correlation: float | None = 0.95

    @property
    def key(self) -> str:
        return f"{self.target}-{self.protected}" + ("" if self.correlation is None else f"-{self.correlation:g}")

    @classmethod
    def parse(cls, text: str, *, synthetic: bool) -> ScenarioSpec:
        """``TARGET:PROTECTED[:CORRELATION]``."""
        parts = [p.strip() for p in str(text).split(":")]
        fix = "write TARGET:PROTECTED:CORRELATION, e.g. Male:Gray_Hair:0.95 (no correlation with --root)"
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"--scenario {text!r} is not TARGET:PROTECTED[:CORRELATION]", fix)
        if len(parts) == 3 and not synthetic:
            raise ConfigError(f"--scenario {text!r} gives a correlation, but --root data has its own", fix)
        try:
            correlation = float(parts[2]) if len(parts) == 3 else (0.95 if synthetic else None)
        except ValueError:
            raise ConfigError(f"--scenario {text!r}: {parts[2]!r} is not a number", fix) from None
        return cls(parts[0], parts[1], correlation)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines an experiment; ``experiment.json`` stores it and its hash."""

    arms: tuple[str, ...] = BASIC_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    scenarios: tuple[ScenarioSpec, ...] = (ScenarioSpec(),)
    dataset: str = "celeba"
    root: str | None = None           # a CelebA-format folder; None: SynthFaces per scenario
    csv: str | None = None
    n: int = 12000                    # SynthFaces images per scenario
    data_seed: int = 0
    generator: str = "render"
    generator_model: str | None = None
    protocol: str = "fixed"
    images: int = 2000                # generated images per job (fixed), or per run (loop)
    mix_ratio: float | None = None    # fixed protocol; None: the share of ``images`` in the training split
    reference: str = "erm"            # the arm paired differences are taken against
    llm: str = "rules"
    llm_model: str | None = None
    llm_base_url: str | None = None
    prompts: str | None = None
    arch: str = "smallcnn"
    baseline_epochs: int = 8
    finetune_epochs: int = 2
    max_iterations: int = 4           # loop protocol
    threads: int = 2                  # torch threads in every job (thread counts change float rounding)
    device: str = "auto"

    def validate(self) -> ExperimentConfig:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"--arms {','.join(self.arms)} must name each arm once", f"choose from {', '.join(ARMS)}")
        for arm in self.arms:
            if arm not in ARMS:
                raise ConfigError(f"unknown arm {arm!r}", f"choose from {', '.join(ARMS)}")
            if arm in STRATEGIES:
                check_strategy(arm, llm=self.llm, prompts=self.prompts)
        if self.reference not in self.arms:
            raise ConfigError(f"the reference arm {self.reference!r} is not among --arms",
                              f"add it to --arms, or pass --reference with one of {', '.join(self.arms)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"--seeds {self.seeds} must be distinct numbers ≥ 0", "use e.g. --seeds 0,1,2")
        if len(self.seeds) < 2:
            raise ConfigError("one seed gives no confidence interval",
                              "use at least 2 seeds (3 or more for intervals worth reading: --seeds 0,1,2)")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown --protocol {self.protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
        if self.images < 1 or self.n < 100 or self.threads < 1:
            raise ConfigError(f"--images {self.images}, --n {self.n}, --threads {self.threads} are not usable",
                              "use --images ≥ 1, --n ≥ 100 and --threads ≥ 1")
        if self.mix_ratio is not None and not 0 < self.mix_ratio < 1:
            raise ConfigError(f"--mix-ratio {self.mix_ratio} is not a fraction in (0, 1)", "use e.g. 0.2")
        if self.root and any(s.correlation is not None for s in self.scenarios):
            raise ConfigError("a scenario names a SynthFaces correlation, but --root data has its own",
                              "give --root scenarios as TARGET:PROTECTED (ScenarioSpec(target, protected, None))")
        if len({s.key for s in self.scenarios}) != len(self.scenarios) or not self.scenarios:
            raise ConfigError("the scenarios must be distinct", "name each TARGET:PROTECTED[:CORRELATION] once")
        self.run_config(self.scenarios[0], "erm", 0, "").validate()  # generator, LLM and band options
        return self

    def run_config(self, scenario: ScenarioSpec, arm: str, seed: int, root: str, **changes: Any):
        """The :class:`~fairloop.runs.RunConfig` of one job."""
        from fairloop.runs import RunConfig

        return RunConfig(dataset=self.dataset, root=root, csv=self.csv, target=scenario.target,
                         protected=scenario.protected, generator=self.generator, generator_model=self.generator_model,
                         strategy=arm if arm in STRATEGIES else "rules", prompts=self.prompts, llm=self.llm,
                         llm_model=self.llm_model, llm_base_url=self.llm_base_url, max_images=self.images,
                         max_iterations=self.max_iterations, arch=self.arch, baseline_epochs=self.baseline_epochs,
                         finetune_epochs=self.finetune_epochs, seed=seed, device=self.device, **changes)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arms"], data["seeds"] = list(self.arms), list(self.seeds)
        data["scenarios"] = [asdict(s) for s in self.scenarios]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["arms"] = tuple(str(a) for a in values.get("arms", BASIC_ARMS))
        values["seeds"] = tuple(int(s) for s in values.get("seeds", (0, 1, 2)))
        values["scenarios"] = tuple(ScenarioSpec(**{k: s.get(k) for k in ("target", "protected", "correlation")})
                                    for s in values.get("scenarios", [asdict(ScenarioSpec())]))
        return cls(**values)

    def digest(self) -> str:
        """A hash of what decides a job's numbers (arms, seeds and scenarios only add jobs)."""
        shared = {k: v for k, v in self.as_dict().items() if k not in ("arms", "seeds", "scenarios", "reference")}
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def job_seed(seed: int, arm: str) -> int:
    """The generation, LLM-sampling and fine-tune seed of one (seed, arm) job."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{arm}".encode()).digest()[:4], "big") % (2**31 - 1)


def save_experiment(folder: Path, config: ExperimentConfig, manifest: dict[str, Any]) -> None:
    atomic_write_json(folder / "experiment.json", {"config": config.as_dict(), "digest": config.digest(), **manifest})


def load_experiment(folder: Path) -> ExperimentConfig:
    """The config stored in ``EXP/experiment.json`` (JSON only: an experiment folder is untrusted input)."""
    path = folder / "experiment.json"
    if not path.is_file():
        raise DataError(f"{folder} is not a fairloop experiment folder (no experiment.json)",
                        "pass the folder that 'fairloop experiment --out' created")
    try:
        data = json.loads(path.read_text())
        return ExperimentConfig.from_dict(data["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is damaged ({type(error).__name__}: {error})",
                        "start a new experiment with --out, or restore the file") from None

"""What the steps of a run share that is not state: the dataset, generator, oracle, strategy, memory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fairloop.runs.config import RunConfig
from fairloop.runs.folder import RunFolder


@dataclass
class RunServices:
    """What a run's steps share that is not state: the dataset, generator, strategy, memory."""

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
        from fairloop.generators import make_generator

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
    def strategy(self):
        from fairloop.strategies import make_strategy

        cfg = self.config
        return make_strategy(cfg.strategy, llm=cfg.llm, llm_model=cfg.llm_model, llm_base_url=cfg.llm_base_url,
                             prompts=cfg.prompts)

    @cached_property
    def memory(self):
        from fairloop.memory import MemoryStore, default_memory_path

        return MemoryStore(self.config.memory or default_memory_path())

    @cached_property
    def device(self):
        from fairloop.vision.models import resolve_device

        return resolve_device(self.config.device)

    def load_model(self, relative: str):
        from fairloop.vision.models import checkpoint_paths, load_checkpoint

        for path in checkpoint_paths(self.folder.resolve(relative)):
            self.folder.existing(self.folder.relative(path), "the model file")
        return load_checkpoint(self.folder.resolve(relative), self.device)

"""The analyzers as strategies: ``rules``, ``llm`` (checked against the data, rules as fallback)
and ``llm-raw`` (the schema checked, nothing corrected, no fallback)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from fairloop.strategies.base import Proposal

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.analyzer import LLMAnalyzer, RulesAnalyzer
    from fairloop.agent.schema import AnalyzerContext


class AnalyzerStrategy:
    """A strategy that asks an analyzer (:mod:`fairloop.agent.analyzer`) for its decision; an LLM
    analyzer's sampling seed comes from ``rng``, so each (seed, arm) pair asks the same question
    the same way."""

    def __init__(self, name: str, analyzer: RulesAnalyzer | LLMAnalyzer) -> None:
        self.name, self.analyzer = name, analyzer

    def __repr__(self) -> str:
        return f"AnalyzerStrategy({self.name!r}, {self.analyzer!r})"

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        if hasattr(self.analyzer, "sampling_seed"):
            self.analyzer.sampling_seed = int(rng.integers(2**31 - 1))
        result = self.analyzer.analyze(context)
        return replace(result, strategy=self.name, seconds=time.perf_counter() - start)

"""Seed 003 as a strategy: the rules decide which groups to fill and how many images each gets;
a structural causal model decides what each image looks like — every image is the counterfactual
of its own source under do(protected := the value the group needs), its effects recomputed (see
:func:`fairloop.tools.sources.plan_scm_sources`). ``scm`` asks a language model for the causal
graph (:mod:`fairloop.scm.builder`) and counts its mechanisms on the training split; ``scm-true``
uses SynthFaces' true model, the upper bound. Neither uses proxy matching."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from fairloop.strategies.base import Proposal

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.schema import AnalyzerContext
    from fairloop.scm.builder import SCMBuilder


class ScmStrategy:
    """``builder`` None: SynthFaces' true model (``scm-true``); else the LLM's graph (``scm``). An LLM
    graph that never passes its checks (names, acyclic) is reported and the proposal falls back to
    proxy matching."""

    def __init__(self, name: str, builder: SCMBuilder | None = None) -> None:
        self.name, self.builder = name, builder

    def __repr__(self) -> str:
        return f"ScmStrategy({self.name!r}, {self.builder.backend if self.builder else 'true graph'})"

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        from fairloop.agent.analyzer import RulesAnalyzer, target_noun
        from fairloop.data.synthfaces import HAIR_STATES
        from fairloop.scm.builder import user_prompt
        from fairloop.tools.prompt_parser import attribute_phrase, parse_prompt

        start = time.perf_counter()
        proposal = RulesAnalyzer().analyze(context)
        base = replace(proposal, strategy=self.name, backend=self.name)
        plans = proposal.decision.plans if proposal.decision.counterfactuals_needed else []
        if not plans:
            return replace(base, seconds=time.perf_counter() - start)
        if self.builder is None:
            return replace(base, scm={"graph": "true"}, seconds=time.perf_counter() - start)
        # one graph per proposal, asked about the first plan's sources: "a man with gray hair", do(Gray_Hair = 0)
        plan = plans[0]
        vocabulary = [context.target, *context.attributes]
        value = parse_prompt(plan.description, vocabulary).edits.get(context.protected)
        if value is None:  # the rules' plan does not set the protected attribute: nothing to intervene on
            return replace(base, seconds=time.perf_counter() - start)
        caption = f"{target_noun(context.target, plan.label)} {attribute_phrase(context.protected, not value)}"
        groups = (HAIR_STATES,) if set(HAIR_STATES) <= set(vocabulary) else ()
        result = self.builder.build(caption, vocabulary, intervention=(context.protected, value), groups=groups,
                                    seed=int(rng.integers(2**31 - 1)))
        # the graph is what the counterfactuals need (fairloop intervenes itself); the model's own
        # intervention bookkeeping is checked and its problems reported, but does not void the graph
        spec = {"graph": "llm", "variables": result.answer.variables, "edges": result.answer.edges,
                "caption": caption} if result.graph_valid else None
        return replace(base, backend=self.builder.backend, prompt=user_prompt(caption, vocabulary, (context.protected, value)),
                       raw=result.raw, attempts=result.attempts, errors=result.problems, fell_back=spec is None,
                       scm=spec, seconds=time.perf_counter() - start)

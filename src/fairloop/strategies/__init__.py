"""Every way of deciding what counterfactual images to make, behind one interface.

========== ====================================================================================
``rules``      the deterministic analyzer: balance the protected attribute within each class
``llm``        seed 000's LLM analyzer (``--llm local|openai``), its answers checked against the
               data and sent back with the problems; the rules decide when it never gets one right
``llm-raw``    the same model, its answer checked against the schema only, nothing corrected and no
               fallback: the model's own contribution
``manual``     hand-written descriptions from a file (``--prompts FILE``)
``manual-min`` class-only text ("a photo of a man"), drawn as new faces
``random``     edits of random attributes
``scm``        the rules' groups, each image its source's counterfactual under an LLM's causal graph
               (seed 003; mechanisms counted on the training split)
``scm-true``   the same under SynthFaces' true causal model: the upper bound of ``scm``
``lance``      seed 001: the run finds its model's weaknesses on validation (every single-attribute
               edit, ΔAcc with CIs) and reinforces the worst with the same edits of training images
``aip``        seed 002: keep-label AIP searches on training images against the current model; what
               flips it while the oracle still reads the true class is kept (SynthFaces only)
========== ====================================================================================

Add a strategy by writing a class with a ``name`` and ``propose(context, rng) -> Proposal``
(:class:`~fairloop.strategies.base.Strategy`) and naming it in :func:`make_strategy`.
"""

from __future__ import annotations

from pathlib import Path

from fairloop.errors import ConfigError
from fairloop.strategies.base import Proposal, Strategy

STRATEGIES = ("rules", "llm", "llm-raw", "manual", "manual-min", "random", "scm", "scm-true", "lance", "aip")
#: Strategies that need a language model (``--llm local`` or ``--llm openai``).
LLM_STRATEGIES = ("llm", "llm-raw", "scm")


def check_strategy(name: str, *, llm: str, prompts: str | Path | None = None) -> str:
    """``name`` when it can run with these options; a :class:`ConfigError` naming the fix otherwise."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}", f"use one of {', '.join(STRATEGIES)}")
    if name in LLM_STRATEGIES and llm == "rules":
        raise ConfigError(f"the {name} strategy needs a language model, and --llm is rules",
                          "pass --llm local (the packaged model) or --llm openai --llm-model NAME")
    if name == "manual" and not prompts:
        raise ConfigError("the manual strategy needs the descriptions it uses",
                          'pass --prompts FILE with lines like "1: a man without gray hair" and "0: a woman with gray hair"')
    return name


def make_strategy(name: str, *, llm: str = "rules", llm_model: str | None = None, llm_base_url: str | None = None,
                  prompts: str | Path | None = None) -> Strategy:
    """The strategy ``name``; ``llm``/``llm_model``/``llm_base_url`` choose the language model of
    ``llm``, ``llm-raw`` and ``scm``, ``prompts`` the file of ``manual``."""
    from fairloop.agent.analyzer import RulesAnalyzer, make_analyzer
    from fairloop.strategies.analyzers import AnalyzerStrategy
    from fairloop.strategies.fixed import ManualMinStrategy, ManualStrategy, RandomStrategy

    check_strategy(name, llm=llm, prompts=prompts)
    if name == "rules":
        return AnalyzerStrategy("rules", RulesAnalyzer())
    if name in ("llm", "llm-raw"):
        return AnalyzerStrategy(name, make_analyzer(llm, model=llm_model, base_url=llm_base_url, raw=name == "llm-raw"))
    if name == "manual":
        return ManualStrategy(prompts)
    if name == "manual-min":
        return ManualMinStrategy()
    if name in ("scm", "scm-true"):
        from fairloop.scm.builder import make_builder
        from fairloop.strategies.scm import ScmStrategy

        return ScmStrategy(name, make_builder(llm, model=llm_model, base_url=llm_base_url) if name == "scm" else None)
    if name == "lance":
        from fairloop.strategies.lance import LanceStrategy

        return LanceStrategy()
    if name == "aip":
        from fairloop.strategies.aip import AipStrategy

        return AipStrategy()
    return RandomStrategy()


__all__ = ["LLM_STRATEGIES", "STRATEGIES", "Proposal", "Strategy", "check_strategy", "make_strategy"]

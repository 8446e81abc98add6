"""The strategy interface: every way of deciding what counterfactual images to make.

A strategy reads the analyzer's context (validation metrics, LIME importances, training group
counts, memory, the image budget: seed 000's prompt P) and returns a :class:`Proposal`: which
images to make, per class, how many, at what mix ratio, and everything it produced on the way (the
LLM's prompt and raw answers, its errors) for the report. ``fairloop run``, ``fairloop chat`` and
``fairloop experiment`` all call strategies through :meth:`Strategy.propose`; the run's steps
(:mod:`fairloop.runs.steps`) turn a proposal into images and a fine-tune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.schema import AnalyzerContext, AnalyzerDecision


@dataclass
class Proposal:
    """What a strategy wants made, and how it came to it.

    ``decision`` holds the plans (label, description, n_images), the negative prompt and the mix
    ratio. ``text_to_image`` asks for new faces drawn from the descriptions instead of edits of
    training images matched to the group they fill (by proxy, or through the causal model ``scm``).
    ``search`` replaces the generator's prompts by a search against the classifier (``"aip"``).
    ``fell_back`` says the strategy's own answer
    was not used: the rules decided for an LLM, or nothing was proposed (``llm-raw``)."""

    decision: AnalyzerDecision
    backend: str                 # who decided: "rules", "local", "openai", "manual", "random", …
    model: str | None
    prompt: str                  # the user prompt sent, verbatim; "" without a language model
    raw: list[str]               # every raw answer received, verbatim (key scrubbed, capped)
    attempts: int
    errors: list[str]            # why each rejected attempt was rejected
    fell_back: bool
    seconds: float
    system_prompt: str = ""      # the system message sent, verbatim; "" without a language model
    strategy: str = ""           # the strategy's name (set by the strategy that returns it)
    text_to_image: bool = False
    #: the causal model that turns sources into counterfactuals instead of proxy matching:
    #: ``{"graph": "true"}`` (SynthFaces' own) or ``{"graph": "llm", "variables", "edges"}``
    scm: dict[str, Any] | None = None
    #: False: each image starts from any training image of its class that the edit changes (seed
    #: 001's reinforcement), without proxy matching
    match_proxy: bool = True
    #: "aip": no prompts; each image is a keep-label AIP search against the current model (seed 002),
    #: started from a training image of its plan's class
    search: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "strategy": self.strategy or self.backend,
            "decision": self.decision.model_dump(mode="json"),
            "backend": self.backend,
            "model": self.model,
            "prompt": self.prompt,
            "system_prompt": self.system_prompt,
            "raw": list(self.raw),
            "attempts": int(self.attempts),
            "errors": list(self.errors),
            "fell_back": bool(self.fell_back),
            "seconds": float(self.seconds) if math.isfinite(self.seconds) else None,
            "text_to_image": bool(self.text_to_image),
            "scm": self.scm,
            "match_proxy": bool(self.match_proxy),
            "search": self.search,
        }


class Strategy(Protocol):
    """Decides what counterfactuals to make. ``rng`` seeds whatever the strategy samples (random
    edits, an LLM's sampling), so a (seed, arm) pair always proposes the same."""

    name: str

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal: ...


def proportional_counts(n: int, weights: list[float]) -> list[int]:
    """``n`` split in proportion to ``weights`` by largest remainders: the counts sum to ``n``
    exactly (all zeros when there is nothing to split)."""
    total = sum(weights)
    if n <= 0 or total <= 0:
        return [0] * len(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    for k in sorted(range(len(weights)), key=lambda k: counts[k] - exact[k])[: n - sum(counts)]:
        counts[k] += 1
    return counts


def scale_plans(plans: list[dict[str, Any]], n: int, weights: list[float] | None = None) -> list[dict[str, Any]]:
    """The plans with their counts scaled to exactly ``n`` images in proportion to ``weights``
    (default: their own counts; largest remainders); a plan whose share rounds to nothing is dropped."""
    counts = proportional_counts(n, weights or [p["n_images"] for p in plans])
    return [p | {"n_images": c} for p, c in zip(plans, counts) if c > 0]

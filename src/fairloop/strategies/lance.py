"""``lance`` (seed 001): reinforce what the model is found weak at, without being told the bias.

The run finds its model's weaknesses first (:func:`fairloop.runs.steps.find_model_weaknesses`:
every single-attribute edit of validation sources, ranked by ΔAcc with CIs) and hands them over in
the context. This strategy takes the edits to reinforce (beyond the noise, each class's worst first:
:func:`~fairloop.weakness.reinforce.reinforced_edits`) and asks for the same edits of *training*
images of the same class, the budget shared in proportion to the accuracy each edit cost; sources
are any training images the edit changes, with no proxy matching (seed 001 edits the images it
has). It never reads the protected attribute.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fairloop.agent.analyzer import NEGATIVE_PROMPT, default_mix, describe, train_size
from fairloop.agent.schema import AnalyzerDecision, ClassPlan
from fairloop.strategies.base import Proposal, proportional_counts
from fairloop.weakness.reinforce import reinforced_edits

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.schema import AnalyzerContext


class LanceStrategy:
    name = "lance"
    needs_weaknesses = True

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        weak = reinforced_edits([w for w in context.weaknesses if _usable(w, set(context.attributes))], context.target)
        costs = [-float(w["delta_acc"]) for w in weak]
        counts = proportional_counts(context.max_images, costs)
        plans = [ClassPlan(label=int(w["label"]), description=describe(context.target, int(w["label"]), w["attribute"],
                                                                       bool(w["value"])), n_images=n)
                 for w, n in zip(weak, counts) if n > 0]
        total = sum(p.n_images for p in plans)
        found = "; ".join(f"{context.target}={w['label']}, {w['edit']}: ΔAcc {w['delta_acc']:+.3f} "
                          f"[{w['ci']['delta_acc'][0]:+.3f}, {w['ci']['delta_acc'][1]:+.3f}]" for w in weak)
        diagnosis = (f"Weakest edits on validation: {found}." if weak else
                     "No edit costs accuracy beyond the noise on validation: nothing to reinforce.")
        decision = AnalyzerDecision(diagnosis=diagnosis[:1500], counterfactuals_needed=total > 0, plans=plans,
                                    shortcut_attributes=list(dict.fromkeys(w["attribute"] for w in weak)),
                                    negative_prompt=NEGATIVE_PROMPT,
                                    mix_ratio=default_mix(total, train_size(context)) if total else 0.0)
        return Proposal(decision=decision, backend=self.name, model=None, prompt="", raw=[], attempts=1, errors=[],
                        fell_back=False, seconds=time.perf_counter() - start, strategy=self.name, match_proxy=False)


def _usable(row: dict, attributes: set[str]) -> bool:
    """A report row with the fields a proposal reads: the report comes back from the run folder, which
    is untrusted input."""
    try:
        ci = row["ci"]["delta_acc"]
        return (row["attribute"] in attributes and row["label"] in (0, 1) and row["value"] in (0, 1)
                and isinstance(row["edit"], str) and all(isinstance(x, int | float) for x in (row["delta_acc"], *ci))
                and len(ci) == 2)
    except (KeyError, TypeError):
        return False

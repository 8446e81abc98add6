"""``aip`` (seed 002): ask the classifier which attribute changes flip it, and teach it otherwise.

The budget is split evenly between the two classes. Each image starts from a random training image
of its class: keep-label AIP (:func:`fairloop.aip.augment.search_training_images`) moves its
attributes, the target frozen, until the *current* model changes its mind; the results the
attribute oracle still reads as the true class are kept, labelled with it — images the model gets
wrong only because of what the search changed. Like ``lance``, it never reads the protected
attribute; unlike the text strategies it needs the shipped AIP generator's attributes (SynthFaces)
and draws with that generator whatever the run's ``--generator``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fairloop.agent.analyzer import default_mix, target_noun, train_size
from fairloop.agent.schema import AnalyzerDecision, ClassPlan
from fairloop.strategies.base import Proposal, proportional_counts

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.schema import AnalyzerContext


class AipStrategy:
    name = "aip"

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        counts = proportional_counts(context.max_images, [1, 1])
        plans = [ClassPlan(label=label, description=f"an AIP counterfactual of {target_noun(context.target, label)}",
                           n_images=n) for label, n in zip((1, 0), counts) if n > 0]
        total = sum(p.n_images for p in plans)
        diagnosis = (f"Keep-label AIP on {total} training images against the current model: each image's "
                     f"attributes move, {context.target} frozen, until the model changes its mind; kept where "
                     f"the attribute oracle still reads the true class.")
        decision = AnalyzerDecision(diagnosis=diagnosis, counterfactuals_needed=total > 0, plans=plans,
                                    negative_prompt="", mix_ratio=default_mix(total, train_size(context)) if total else 0.0)
        return Proposal(decision=decision, backend=self.name, model=None, prompt="", raw=[], attempts=1, errors=[],
                        fell_back=False, seconds=time.perf_counter() - start, strategy=self.name, match_proxy=False,
                        search="aip")

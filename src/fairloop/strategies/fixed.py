"""Strategies that need no analysis: hand-written descriptions (``manual``), class-only text
(``manual-min``) and edits of random attributes (``random``) — the references an analyzer must beat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fairloop.agent.analyzer import NEGATIVE_PROMPT, default_mix, describe, target_noun, train_size
from fairloop.agent.schema import AnalyzerDecision, ClassPlan
from fairloop.errors import ConfigError
from fairloop.strategies.base import Proposal

if TYPE_CHECKING:
    import numpy as np

    from fairloop.agent.schema import AnalyzerContext

#: Attributes a ``random`` proposal edits per class.
RANDOM_EDITS_PER_CLASS = 3


def split_budget(budget: int, parts: int) -> list[int]:
    """``budget`` images in ``parts`` near-equal shares (the first shares get the remainder)."""
    base, extra = divmod(max(int(budget), 0), parts)
    return [base + (k < extra) for k in range(parts)]


def _proposal(name: str, ctx: AnalyzerContext, descriptions: dict[int, list[str]], diagnosis: str, start: float,
              *, text_to_image: bool = False) -> Proposal:
    """The budget shared equally between the two classes, then between each class's descriptions."""
    plans = []
    for label, share in zip((1, 0), split_budget(ctx.max_images, 2)):
        for description, n in zip(descriptions[label], split_budget(share, len(descriptions[label]))):
            if n > 0:
                plans.append(ClassPlan(label=label, description=description, n_images=n))
    total = sum(p.n_images for p in plans)
    decision = AnalyzerDecision(diagnosis=diagnosis[:1500], counterfactuals_needed=total > 0, plans=plans,
                                negative_prompt=NEGATIVE_PROMPT, mix_ratio=default_mix(total, train_size(ctx)) if total else 0.0)
    return Proposal(decision=decision, backend=name, model=None, prompt="", raw=[], attempts=1, errors=[],
                    fell_back=False, seconds=time.perf_counter() - start, strategy=name, text_to_image=text_to_image)


class ManualMinStrategy:
    """Class-only text ("a photo of a man"), drawn as new faces: what the generator's own prior
    gives without any analysis (seed 000's minimal manual prompt)."""

    name = "manual-min"

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        descriptions = {label: [f"a photo of {target_noun(context.target, label)}"] for label in (1, 0)}
        return _proposal(self.name, context, descriptions, "Class-only text; no analysis.", start, text_to_image=True)


class ManualStrategy:
    """Hand-written descriptions from a file: one ``LABEL: description`` per line (LABEL 1 for the
    target present, 0 absent; ``#`` starts a comment). Each class's share of the budget is split
    equally among its lines; the images are edits of matched training images, as an analyzer's are."""

    name = "manual"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.descriptions = read_manual_prompts(self.path)

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        return _proposal(self.name, context, self.descriptions, f"Hand-written descriptions from {self.path.name}.",
                         start)


def read_manual_prompts(path: Path) -> dict[int, list[str]]:
    """``{1: [...], 0: [...]}`` from a ``LABEL: description`` file; each description is checked as an
    analyzer's is (plain text, bounded)."""
    fix = 'write one "1: a man without gray hair" or "0: a woman with gray hair" per line, at least one per class'
    if not path.is_file():
        raise ConfigError(f"--prompts {path} is not a file", fix)
    found: dict[int, list[str]] = {1: [], 0: []}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        label, sep, description = line.partition(":")
        if not sep or label.strip() not in ("0", "1"):
            raise ConfigError(f"{path}:{number} is not 'LABEL: description' with LABEL 0 or 1: {line[:80]!r}", fix)
        try:
            plan = ClassPlan(label=int(label), description=description.strip(), n_images=0)
        except ValidationError as error:
            raise ConfigError(f"{path}:{number}: {error.errors()[0]['msg']}", fix) from None
        found[plan.label].append(plan.description)
    if not found[0] or not found[1]:
        raise ConfigError(f"{path} has no description for class {0 if not found[0] else 1}", fix)
    return found


class RandomStrategy:
    """Edits of random attributes (never the target): per class, :data:`RANDOM_EDITS_PER_CLASS`
    attributes drawn from ``rng``, each shown present or absent at random. The reference that says
    how much of an arm's gain comes from any extra edited data at all."""

    name = "random"

    def propose(self, context: AnalyzerContext, rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        names = [a for a in context.attributes if a != context.target]
        if not names:
            raise ConfigError("the random strategy needs attributes besides the target", "use a dataset with attributes")
        descriptions: dict[int, list[str]] = {}
        picked = []
        for label in (1, 0):
            chosen = rng.choice(len(names), size=min(RANDOM_EDITS_PER_CLASS, len(names)), replace=False)
            descriptions[label] = []
            for k in chosen:
                present = bool(rng.integers(2))
                descriptions[label].append(describe(context.target, label, names[k], present))
                picked.append(f"{context.target}={label}: {names[k]}={int(present)}")
        return _proposal(self.name, context, descriptions, "Random attribute edits: " + ", ".join(picked) + ".", start)

"""What the analyzer sees and what it must answer (seed 000's prompt P and its output, made strict).

The analyzer's answer is model output: it is data, validated here, never executed and never used as
a path. Every string and list is bounded; attribute names are checked against the dataset by
:func:`validate_decision`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, field_validator

from fairloop.tools.metrics import FairBand

MAX_DESCRIPTION = 300
#: Characters a counterfactual description may hold: words, digits, spaces and light punctuation.
#: Slashes, backslashes, braces, backticks and the like never appear in a face description.
_DESCRIPTION_OK = re.compile(r"^[A-Za-z0-9 ,.;:'()\-_%!?]*$")
_SUSPICIOUS = re.compile(r"\b(ignore (all |the )?(previous|above)|system prompt|api[_ ]?key|rm -rf|sudo|http|www\.)", re.I)


class ClassPlan(BaseModel):
    """Counterfactual images for one class of the target."""

    label: int = Field(ge=0, le=1, description="the target value these images carry (1 = the target attribute present)")
    description: str = Field(min_length=3, max_length=MAX_DESCRIPTION, description="text prompt for the generator")
    n_images: int = Field(ge=0, le=5000, description="how many images to generate for this class")

    @field_validator("description")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not _DESCRIPTION_OK.match(value):
            raise ValueError("a description may hold only words, digits and light punctuation (no paths, code or markup)")
        if _SUSPICIOUS.search(value):
            raise ValueError("a description must describe a face, not give instructions")
        return value


class AnalyzerDecision(BaseModel):
    """The analyzer's structured answer; ``mix_ratio`` is the decision seed 000 leaves as future work."""

    diagnosis: str = Field(max_length=1500, description="why the model is biased, in a few sentences")
    counterfactuals_needed: bool = Field(description="false when the model is already fair enough")
    shortcut_attributes: list[str] = Field(default_factory=list, max_length=4,
                                           description="attributes the model wrongly relies on")
    change_attributes: list[str] = Field(default_factory=list, max_length=6,
                                         description="attributes the counterfactuals change")
    plans: list[ClassPlan] = Field(default_factory=list, max_length=8,
                                   description="one plan per class from an analyzer; strategies may give several")
    negative_prompt: str = Field(default="", max_length=MAX_DESCRIPTION)
    mix_ratio: float = Field(ge=0.0, le=0.9, description="fraction of counterfactual images in the fine-tuning set")


def validate_decision(decision: AnalyzerDecision, attributes: list[str], target: str, max_images: int) -> list[str]:
    """Problems that the schema alone cannot see; an empty list means the decision is usable."""
    problems = []
    for name in decision.shortcut_attributes + decision.change_attributes:
        if name not in attributes:
            problems.append(f"unknown attribute {name!r}; the attributes are: {', '.join(attributes)}")
    if target in decision.shortcut_attributes:
        problems.append(f"the target {target!r} itself cannot be a shortcut attribute")
    total = sum(plan.n_images for plan in decision.plans)
    if total > max_images:
        problems.append(f"{total} images asked for, but the budget of this iteration is {max_images}")
    if decision.counterfactuals_needed and (not decision.plans or total == 0):
        problems.append("counterfactuals_needed is true but no plan asks for images")
    if len({plan.label for plan in decision.plans}) != len(decision.plans):
        problems.append("two plans for the same class")
    if decision.negative_prompt and not _DESCRIPTION_OK.match(decision.negative_prompt):
        problems.append("the negative prompt may hold only words, digits and light punctuation")
    return problems


def fit_to_budget(decision: AnalyzerDecision, max_images: int) -> AnalyzerDecision:
    """``decision`` with its plans scaled down, in proportion, to ``max_images`` images in total (as
    it is when it fits). How many images to draw is sized from validation by whoever runs the plan;
    an answer over the budget still says how to split it, and sending it back for the count alone
    cost the packaged model a whole retry (~40 s), often answered with the same count again."""
    total = sum(plan.n_images for plan in decision.plans)
    if total <= max_images:
        return decision
    plans = [plan.model_copy(update={"n_images": plan.n_images * max(max_images, 0) // total})
             for plan in decision.plans]
    return decision.model_copy(update={"plans": plans})


@dataclass
class AnalyzerContext:
    """Seed 000's P = {task, accuracy, metrics, protected attribute, attributes, importance scores},
    plus the training split's group counts, recalled memory and the budget."""

    task: str                              # e.g. "classify Male from face images"
    target: str
    protected: str
    privileged_value: int
    attributes: list[str]                  # every attribute except the target
    metrics: dict[str, Any]                # FairnessReport.as_dict() on the validation split
    importances: list[tuple[str, float]]   # AttributeExplanation.as_list(), largest |score| first
    train_groups: dict[str, int]           # "Male=1, Gray_Hair=0" → count in the training split
    max_images: int                        # image budget of this iteration
    iteration: int = 1
    recalled: list[str] = field(default_factory=list)   # one line per recalled past iteration
    history: list[str] = field(default_factory=list)    # one line per earlier iteration of this run
    band: FairBand = field(default_factory=FairBand)    # the run's fair band
    weaknesses: list[dict[str, Any]] = field(default_factory=list)  # seed 001's ranked edits, when asked for

"""Caption perturbation (seed 001, LANCE): which edits to test a classifier with.

Each image gets a caption (from its attribute table, or from what the attribute oracle reads off
it, or from a BLIP captioner); a perturber proposes edits of the caption along LANCE's factors.
Every edit is checked before any image is drawn:

- **supported**: the factor and attribute are ones the generator can draw (``background`` and
  ``domain`` never are: they are reported as unsupported, not dropped silently);
- **keeps the class**: the target attribute is not edited, and the edited caption, read back by the
  prompt parser, does not say the other class;
- **changes something**: the source does not already have the new value;
- **says what it claims**: the edited caption, read back, states the edit;
- **minimal** (LANCE's caption-similarity filter, made exact): the edited caption, read back, changes
  nothing but the edited attribute (a hair colour may replace another).

Two perturbers: ``all`` (every attribute in each direction, deterministic: the exhaustive search a
vocabulary of 17 attributes allows) and ``llm`` (seed 001's: a language model proposes the edits of
each caption; grammar-constrained for the packaged model).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from fairloop.tools.prompt_parser import attribute_phrase, parse_prompt

FACTORS = ("subject", "adjective", "object", "background", "domain")
#: Factors no fairloop generator can realise: faces are drawn on a plain background in one style.
UNSUPPORTED_FACTORS = ("background", "domain")
#: Attributes worn or held: LANCE's "object" factor; the subject's sex is its "subject"; the rest are adjectives.
OBJECTS = ("Eyeglasses", "Wearing_Hat", "Wearing_Earrings", "Wearing_Lipstick", "Wearing_Necktie",
           "Wearing_Necklace", "Heavy_Makeup")
#: Why an edit is not used, in the order the checks run (answers that are not JSON go to ``errors``).
REASONS = ("unsupported", "changes class", "no change", "caption disagrees", "not minimal")
#: Edits the language model is asked for per caption.
EDITS_PER_CAPTION = 5
MAX_ATTEMPTS = 2


def factor_of(attribute: str) -> str:
    """LANCE's factor of a vocabulary attribute."""
    if attribute == "Male":
        return "subject"
    return "object" if attribute in OBJECTS else "adjective"


def direction(value: int) -> str:
    return "add" if value else "remove"


@dataclass(frozen=True)
class Edit:
    """One proposed edit of one caption."""

    factor: str
    attribute: str        # a vocabulary attribute, or the words of an unsupported change ("a beach")
    value: int
    caption: str          # the edited caption
    source_caption: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.attribute, self.value


@dataclass
class Perturbation:
    """The edits kept and what each filter removed, over all captions."""

    kept: list[Edit] = field(default_factory=list)
    rejected: list[tuple[Edit, str]] = field(default_factory=list)   # (edit, the filter that removed it)
    captions: int = 0
    backend: str = "all"
    seconds: float = 0.0
    raw: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def filters(self) -> dict[str, int]:
        """How many edits were proposed, and how many each filter removed, in order."""
        counts = Counter(reason for _, reason in self.rejected)
        return {"proposed": len(self.kept) + len(self.rejected),
                **{f: counts.get(f, 0) for f in REASONS},
                "kept": len(self.kept)}

    def unsupported(self) -> dict[str, int]:
        """Unsupported edits by factor and attribute: what a user's generator would have to draw."""
        return dict(Counter(f"{e.factor}: {e.attribute}" for e, r in self.rejected if r == "unsupported"))

    def edit_keys(self) -> list[tuple[str, int]]:
        """The distinct (attribute, value) edits kept, most often proposed first."""
        return [k for k, _ in Counter(e.key for e in self.kept).most_common()]


def caption_of(values: dict[str, int], vocabulary: list[str], mention: tuple[str, ...] = ()) -> str:
    """A short caption, as people write them: the noun, the hair, the age, what is present, and the
    attributes in ``mention`` whatever their value ("…, without eyeglasses" for a removal)."""
    from fairloop.scm.builder import write_caption

    shown = {k: v for k, v in values.items() if v == 1 or k in ("Male", "Young") or k in mention}
    return write_caption(shown, list(vocabulary))


def resolve_attribute(edit: Edit, source: dict[str, int], *, target: str, vocabulary: list[str]) -> Edit:
    """An edit whose attribute is free words ("age") named by the one vocabulary change its caption
    makes ("who is young"); any other edit as it is."""
    from fairloop.data.synthfaces import HAIR_STATES

    if edit.factor in UNSUPPORTED_FACTORS or edit.attribute in vocabulary:
        return edit
    said = parse_prompt(edit.caption, vocabulary).edits
    changed = {a: v for a, v in said.items() if a != target and a in source and source[a] != v}
    hair_on = [a for a in changed if a in HAIR_STATES and changed[a] == 1]
    if hair_on:  # a new hair colour also switches the old one off
        changed = {a: v for a, v in changed.items() if a not in HAIR_STATES} | {hair_on[0]: 1}
    if len(changed) != 1:
        return edit
    (name, value), = changed.items()
    return Edit(edit.factor, name, value, edit.caption, edit.source_caption)


def check_edit(edit: Edit, source: dict[str, int], *, target: str, vocabulary: list[str],
               supported: set[str]) -> str | None:
    """Why ``edit`` of a caption of ``source`` (its attribute values) cannot be used, or None."""
    from fairloop.data.synthfaces import HAIR_STATES

    if edit.factor in UNSUPPORTED_FACTORS or edit.attribute not in supported:
        return "unsupported"
    if edit.attribute == target:
        return "changes class"
    said = parse_prompt(edit.caption, vocabulary).edits
    if target in said and said[target] != source.get(target, said[target]):
        return "changes class"
    if source.get(edit.attribute) == edit.value:
        return "no change"
    if said.get(edit.attribute) != edit.value and not (edit.attribute in HAIR_STATES and edit.value == 0
                                                        and any(said.get(h) == 1 for h in HAIR_STATES)):
        return "caption disagrees"   # the edited caption does not say the edit it claims
    hair_edit = edit.attribute in HAIR_STATES
    for name, value in said.items():
        if name in (edit.attribute, target) or (hair_edit and name in HAIR_STATES):
            continue
        if name in source and source[name] != value:
            return "not minimal"
    return None


def all_edits(caption: str, source: dict[str, int], *, target: str, vocabulary: list[str]) -> list[Edit]:
    """Every single-attribute edit of ``source`` (its caption and attribute values): each attribute
    it states but the class, to the other value."""
    out = []
    for name in vocabulary:
        if name == target or name not in source:
            continue
        value = 1 - int(source[name])
        edited = caption_of({**_with_hair(source, name, value), name: value}, vocabulary, mention=(name,))
        out.append(Edit(factor_of(name), name, value, edited, caption))
    return out


def _with_hair(source: dict[str, int], name: str, value: int) -> dict[str, int]:
    """``source`` as its edited caption should state it when ``name`` is a hair state: switched on,
    the other states off; switched off, the hair named only by what it is not ("without blond hair")."""
    from fairloop.data.synthfaces import HAIR_STATES

    if name not in HAIR_STATES:
        return dict(source)
    if not value:
        return {k: v for k, v in source.items() if k not in HAIR_STATES}
    return {**source, **{h: int(h == name) for h in HAIR_STATES if h in source}}


def perturb_all(captioned: list[tuple[str, dict[str, int]]], *, target: str, vocabulary: list[str],
                supported: set[str]) -> Perturbation:
    """The exhaustive perturber over distinct (caption, values) pairs, every edit checked like a model's."""
    result = Perturbation(backend="all")
    start = time.perf_counter()
    for caption, source in distinct(captioned):
        result.captions += 1
        for edit in all_edits(caption, source, target=target, vocabulary=vocabulary):
            _file(result, edit, check_edit(edit, source, target=target, vocabulary=vocabulary, supported=supported))
    result.seconds = time.perf_counter() - start
    return result


def distinct(captioned: list[tuple[str, dict[str, int]]]) -> list[tuple[str, dict[str, int]]]:
    """Each (caption, values) pair once: a free-text caption may be the same for two classes."""
    return list({(caption, tuple(sorted(values.items()))): (caption, values) for caption, values in captioned}.values())


def _file(result: Perturbation, edit: Edit, reason: str | None) -> None:
    if reason is None:
        result.kept.append(edit)
    else:
        result.rejected.append((edit, reason))


# ---------------------------------------------------------------------------- the language model


class ProposedEdit(BaseModel):
    factor: Literal["subject", "adjective", "object", "background", "domain"]
    attribute: str = Field(max_length=60)
    value: int = Field(ge=0, le=1)
    caption: str = Field(max_length=240)


class PerturbAnswer(BaseModel):
    edits: list[ProposedEdit] = Field(max_length=8)


def system_prompt(target: str) -> str:
    return (
        "You stress-test an image classifier that predicts " + target + " from face photos. Given the caption of "
        "one photo, propose edits that change ONE thing about the photo each and keep everything else, so that "
        "the true answer for " + target + " stays the same. Use LANCE's factors: subject (who is shown), adjective "
        "(how they look: hair colour, age, expression, skin), object (what they wear or hold: glasses, hat, "
        "earrings, necktie, lipstick), background (the scene), domain (the style: sketch, painting). For an "
        "attribute of the vocabulary write its name exactly and value 1 to add it or 0 to remove it; for anything "
        "else write a few lowercase words. Write each edited caption in full. Never edit " + target + ". Reply with "
        "one JSON object: {\"edits\": [{\"factor\", \"attribute\", \"value\", \"caption\"}, ...]}.")


def user_prompt(caption: str, vocabulary: list[str], target: str, source: dict[str, int] | None = None) -> str:
    """The caption and what an edit can do to this person: add what they lack (value 1), remove
    what they have (value 0). A small model told only the vocabulary proposes edits that change nothing."""
    names = [v for v in vocabulary if v != target]
    if not source:
        return f"Caption: {caption}\nAttribute vocabulary: {', '.join(names)}\nPropose {EDITS_PER_CAPTION} different edits."
    has = [v for v in names if source.get(v) == 1]
    lacks = [v for v in names if source.get(v) == 0]
    return (f"Caption: {caption}\nThe person has (remove with value 0): {', '.join(has) or 'none'}\n"
            f"The person lacks (add with value 1): {', '.join(lacks) or 'none'}\n"
            f"Propose {EDITS_PER_CAPTION} different edits, each changing one of these.")


def answer_grammar(vocabulary: list[str], target: str, source: dict[str, int] | None = None) -> dict[str, Any]:
    """The answer's JSON schema for a grammar-constrained model, narrowed to what the request
    settles (as the analyzer's is): a subject, adjective or object edit names an attribute of the
    vocabulary (never the class) and, when the person's values are known, the value it does not
    have yet; a background or domain edit, a few lowercase words. The caption is checked afterwards."""
    from fairloop.llm import grammar_schema

    def item(factors: list[str], attribute: dict[str, Any], values: list[int]) -> dict[str, Any]:
        return {"type": "object", "required": ["factor", "attribute", "value", "caption"], "properties": {
            "factor": {"enum": factors}, "attribute": attribute, "value": {"enum": values},
            "caption": {"type": "string", "maxLength": 160}}}

    drawable = [f for f in FACTORS if f not in UNSUPPORTED_FACTORS]
    names = [v for v in vocabulary if v != target]
    if source:
        choices = [item(drawable, {"enum": [v for v in names if source.get(v) == 1 - value]}, [value]) for value in (0, 1)]
        choices = [c for c in choices if c["properties"]["attribute"]["enum"]]
    else:
        choices = [item(drawable, {"enum": names}, [0, 1])]
    edit = {"anyOf": [*choices, item(list(UNSUPPORTED_FACTORS), {"type": "string", "pattern": "^[a-z][a-z ]{0,39}$"},
                                     [0, 1])]}
    return grammar_schema({"type": "object", "required": ["edits"], "properties": {
        "edits": {"type": "array", "items": edit, "minItems": 1, "maxItems": EDITS_PER_CAPTION}}})


class LLMPerturber:
    """Seed 001's perturbation: a chat model proposes the edits of each caption."""

    def __init__(self, client: Any, *, backend: str, scrub: Any = None, constrained: bool = False) -> None:
        self._client, self.backend, self.constrained = client, backend, constrained
        self._scrub = scrub or (lambda text: text)

    def perturb(self, captioned: list[tuple[str, dict[str, int]]], *, target: str, vocabulary: list[str],
                supported: set[str], seed: int = 0, progress=None) -> Perturbation:
        """Edits for the distinct (caption, values) pairs, each checked; a caption whose answers stay
        unusable adds its problems to ``errors`` and no edits."""
        result = Perturbation(backend=self.backend)
        start = time.perf_counter()
        captions = distinct(captioned)
        for k, (caption, source) in enumerate(captions):
            result.captions += 1
            for edit in self._ask(caption, source, vocabulary, target, seed + k, result):
                _file(result, edit, check_edit(edit, source, target=target, vocabulary=vocabulary, supported=supported))
            if progress:
                progress("perturb", k + 1, len(captions))
        result.seconds = time.perf_counter() - start
        return result

    def _ask(self, caption: str, source: dict[str, int], vocabulary: list[str], target: str, seed: int,
             result: Perturbation) -> list[Edit]:
        from langchain_core.messages import HumanMessage, SystemMessage

        from fairloop.agent.analyzer import parse_answer
        from fairloop.llm import content_text

        messages = [SystemMessage(content=system_prompt(target)),
                    HumanMessage(content=user_prompt(caption, vocabulary, target, source))]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            client = (self._client.model_copy(update={"json_schema": answer_grammar(vocabulary, target, source),
                                                      "temperature": 0.0 if attempt == 1 else 0.6,
                                                      "seed": seed + attempt})
                      if self.constrained else self._client)
            try:
                text = self._scrub(content_text(getattr(client.invoke(messages), "content", "")))
            except Exception as error:  # noqa: BLE001 — a failing model is reported, not raised
                result.errors.append(self._scrub(f"model error: {type(error).__name__}: {error}")[:300])
                return []
            result.raw.append(text[:2000])
            try:
                answer = PerturbAnswer.model_validate(parse_answer(text))
            except (ValueError, ValidationError) as error:
                result.errors.append(f"{caption!r}: {str(error)[:200]}")
                continue
            return [resolve_attribute(Edit(e.factor, e.attribute.strip(), e.value, e.caption.strip(), caption), source,
                                      target=target, vocabulary=vocabulary) for e in answer.edits]
        return []


def make_perturber(kind: str, *, model: str | None = None, base_url: str | None = None) -> LLMPerturber:
    """An LLM perturber on the packaged local model ("local", grammar-constrained) or an endpoint ("openai")."""
    from fairloop.llm import make_json_model

    client, scrub, constrained = make_json_model(kind, model=model, base_url=base_url, max_tokens=500,
                                                 fix="use --perturb all (no model), or --llm local / --llm openai")
    return LLMPerturber(client, backend=kind, scrub=scrub, constrained=constrained)


def edit_phrase(attribute: str, value: int) -> str:
    """"with gray hair" / "without gray hair": how reports name an edit."""
    return attribute_phrase(attribute, bool(value))

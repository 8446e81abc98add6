"""Captions for SynthFaces attributes, and what a prompt intends.

The embedded generator learns text from captions written here, so one convention ties training,
editing and scoring together: **a caption names everything a face has.** It always says man or
woman; it names age and hair (both may be left out, and then they are free); and it names every
other attribute that is present. So an attribute outside gender, age and hair that a prompt does
not mention is meant to be absent — that is how :func:`intended_attributes` reads a prompt, and
how the quality checks score an image. Captions sometimes add "without X" for an absent
attribute, because the analyzer writes prompts that way.

Every phrase here is understood by :mod:`fairloop.tools.prompt_parser`; a test keeps it so.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES

#: Attributes whose absence is implied when a prompt does not mention them.
ACCESSORIES = tuple(a for a in ATTRIBUTES if a not in ("Male", "Young", *HAIR_STATES))

#: attribute → phrases that follow the noun when present ("a man {phrase}").
_PRESENT: dict[str, tuple[str, ...]] = {
    "Bangs": ("with bangs",),
    "Eyeglasses": ("wearing eyeglasses", "with glasses"),
    "Smiling": ("smiling", "with a smile"),
    "Mustache": ("with a mustache",),
    "Wearing_Hat": ("wearing a hat",),
    "Wearing_Earrings": ("wearing earrings",),
    "Wearing_Lipstick": ("wearing lipstick",),
    "Pale_Skin": ("with pale skin",),
    "Chubby": ("who is chubby", "with a round face"),
    "Wearing_Necktie": ("wearing a necktie", "wearing a tie"),
}
_ABSENT: dict[str, str] = {
    "Bangs": "without bangs", "Eyeglasses": "without eyeglasses", "Smiling": "with a neutral expression",
    "Mustache": "without a mustache", "Wearing_Hat": "without a hat", "Wearing_Earrings": "without earrings",
    "Wearing_Lipstick": "without lipstick", "Pale_Skin": "without pale skin", "Chubby": "without a round face",
    "Wearing_Necktie": "without a necktie", "Gray_Hair": "without gray hair", "Bald": "who is not bald",
}
_HAIR = {"Gray_Hair": ("with gray hair", "with grey hair", "gray-haired"),
         "Black_Hair": ("with black hair", "with dark hair"),
         "Blond_Hair": ("with blond hair", "with blonde hair"),
         "Brown_Hair": ("with brown hair",),
         "Bald": ("who is bald", "bald")}
_PREFIXES = ("a photo of", "a portrait of", "a realistic portrait photo of", "a face of", "")
_AGE = {1: ("young",), 0: ("old", "older", "elderly")}


def _hair_state(attributes: Mapping[str, int]) -> str | None:
    return next((h for h in HAIR_STATES if attributes.get(h)), None)


def _join(noun: str, phrases: list[str]) -> str:
    """"a man with gray hair, wearing a hat and smiling"."""
    if not phrases:
        return noun
    if len(phrases) == 1:
        return f"{noun} {phrases[0]}"
    return f"{noun} {', '.join(phrases[:-1])} and {phrases[-1]}"


def caption(attributes: Mapping[str, int]) -> str:
    """The canonical caption of a face: every phrase in a fixed order (edits and evaluation use it)."""
    return _compose(attributes, rng=None)


def training_caption(attributes: Mapping[str, int], rng: np.random.Generator) -> str:
    """A caption with varied wording and order; age or hair is left out 15 % of the time each."""
    return _compose(attributes, rng=rng)


def _compose(attributes: Mapping[str, int], rng: np.random.Generator | None) -> str:
    def pick(options):
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    def chance(p: float) -> bool:
        return rng is not None and rng.random() < p

    noun = "man" if attributes.get("Male") else "woman"
    adjectives = []
    if "Young" in attributes and not chance(0.15):
        adjectives.append(pick(_AGE[int(bool(attributes["Young"]))]))
    phrases = []
    hair = _hair_state(attributes)
    if hair and not chance(0.15):
        phrase = pick(_HAIR[hair])
        if phrase in ("bald", "gray-haired"):
            adjectives.append(phrase)
        else:
            phrases.append(phrase)
    phrases += [pick(_PRESENT[a]) for a in ACCESSORIES if attributes.get(a)]
    if rng is not None:
        rng.shuffle(phrases)
        absent = [a for a in _ABSENT if not attributes.get(a) and (a not in HAIR_STATES or hair)]
        for a in rng.permutation(absent)[: int(rng.integers(0, 3)) if rng.random() < 0.3 else 0]:
            phrases.append(_ABSENT[str(a)])
    article = "an" if (adjectives[0] if adjectives else noun)[0] in "aeiou" else "a"
    text = _join(" ".join([article, *adjectives, noun]), phrases)
    prefix = pick(_PREFIXES)
    return f"{prefix} {text}".strip()


def intended_attributes(prompt: str) -> dict[str, int]:
    """What a prompt asks of each SynthFaces attribute it determines (see the module docstring).

    Named attributes keep their value; a named hair colour or baldness turns the other hair states
    off; accessories it does not name are meant to be absent. Gender, age and an unnamed hair
    colour stay free, so they are not in the result.
    """
    from fairloop.tools.prompt_parser import parse_prompt

    edits = dict(parse_prompt(prompt, ATTRIBUTES).edits)
    intent = {a: 0 for a in ACCESSORIES}
    if any(edits.get(h) == 1 for h in HAIR_STATES):
        on = [h for h in HAIR_STATES if edits.get(h) == 1][-1]
        intent |= {h: int(h == on) for h in HAIR_STATES}
    intent |= edits
    return intent


__all__ = ["ACCESSORIES", "caption", "training_caption", "intended_attributes"]

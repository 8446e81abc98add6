"""Turn a counterfactual description into attribute edits, deterministically.

The ``render`` generator realises a prompt on SynthFaces exactly, so it needs to know what the
prompt asks for: "a woman with gray hair" → ``{Male: 0, Gray_Hair: 1}``; "a man without
eyeglasses" → ``{Male: 1, Eyeglasses: 0}``; seed 000's analyzer style "reducing the prominence of
GrayHair, Double Chin and Chubby attributes while maintaining the overall appearance as male" →
``{Gray_Hair: 0, Chubby: 0, Male: 1}``.

The parser splits the prompt into clauses, and inside a clause a negation cue ("without", "no",
"not", "reducing", "less", ...) makes every later mention negative. Attribute names are matched in
any spelling (``Gray_Hair``, ``Gray-Hair``, ``GrayHair``, "gray hair") and through common phrasings.
Words it does not know are ignored and reported, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Phrases → (attribute, value). Longer phrases are matched first, so "gray hair" beats "hair".
PHRASES: dict[str, tuple[str, int]] = {
    **{p: ("Male", 1) for p in ("man", "men", "male", "males", "boy", "gentleman", "masculine")},
    **{p: ("Male", 0) for p in ("woman", "women", "female", "females", "girl", "lady", "feminine")},
    **{p: ("Young", 1) for p in ("young", "younger", "youthful")},
    **{p: ("Young", 0) for p in ("old", "older", "elderly", "aged", "senior", "wrinkles", "wrinkled")},
    **{p: ("Gray_Hair", 1) for p in ("gray hair", "grey hair", "gray-haired", "grey-haired", "silver hair",
                                     "white hair", "graying hair", "greying hair")},
    **{p: ("Black_Hair", 1) for p in ("black hair", "dark hair", "black-haired", "dark-haired")},
    **{p: ("Blond_Hair", 1) for p in ("blond hair", "blonde hair", "blond", "blonde", "fair hair")},
    **{p: ("Brown_Hair", 1) for p in ("brown hair", "brown-haired", "brunette")},
    **{p: ("Bald", 1) for p in ("bald", "balding", "hairless")},
    **{p: ("Bangs", 1) for p in ("bangs", "fringe")},
    **{p: ("Eyeglasses", 1) for p in ("eyeglasses", "glasses", "spectacles")},
    **{p: ("Smiling", 1) for p in ("smiling", "smile", "smiles", "grinning")},
    **{p: ("Smiling", 0) for p in ("neutral expression", "serious expression", "frowning")},
    **{p: ("Mustache", 1) for p in ("mustache", "moustache")},
    **{p: ("Wearing_Hat", 1) for p in ("hat", "cap")},
    **{p: ("Wearing_Earrings", 1) for p in ("earrings", "earring")},
    **{p: ("Wearing_Lipstick", 1) for p in ("lipstick", "red lips")},
    **{p: ("Pale_Skin", 1) for p in ("pale skin", "pale-skinned", "pale", "fair skin", "light skin")},
    **{p: ("Chubby", 1) for p in ("chubby", "plump", "round face", "double chin")},
    **{p: ("Wearing_Necktie", 1) for p in ("necktie", "tie")},
}

NEGATIONS = ("without", "no", "not", "non", "never", "remove", "removing", "removed", "reduce", "reducing",
             "reduced", "less", "fewer", "lacking", "free of", "absence of", "minus", "instead of")
CLAUSE_BREAKS = ("while", "but", "whereas", "with", "yet", "so that", "keep", "keeps", "keeping", "maintain",
                 "maintaining", "ensure", "ensuring", "remain", "remains", "remaining", "retain", "retaining",
                 "preserve", "preserving", "still")


@dataclass
class ParsedPrompt:
    """Attribute edits a prompt asks for, and what the parser could not place."""

    edits: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.edits.items()) or "(no attribute named)"


def parse_prompt(prompt: str, vocabulary: list[str] | tuple[str, ...]) -> ParsedPrompt:
    """Edits for the attributes in ``vocabulary`` that ``prompt`` names, with their polarity."""
    vocab = set(vocabulary)
    phrases = dict(PHRASES)
    for name in vocab:  # attribute names in any spelling: Gray_Hair, Gray-Hair, GrayHair, gray hair
        for spelling in {name, name.replace("_", " "), name.replace("_", "-"), name.replace("_", "")}:
            phrases[spelling.lower()] = (name, 1)
    phrases = {p: v for p, v in phrases.items() if v[0] in vocab}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, phrases), key=len, reverse=True)) + r")\b")
    negation = re.compile(r"\b(" + "|".join(map(re.escape, NEGATIONS)) + r")\b")
    breaks = re.compile(r"[.;:!?]|\b(?:" + "|".join(map(re.escape, CLAUSE_BREAKS)) + r")\b")

    result = ParsedPrompt()
    text = prompt.lower().replace("’", "'")
    for clause in breaks.split(text):
        negated_from = min((m.start() for m in negation.finditer(clause)), default=len(clause) + 1)
        for match in pattern.finditer(clause):
            attribute, value = phrases[match.group(1)]
            if match.start() > negated_from:
                value = 1 - value
            if attribute in result.edits and result.edits[attribute] != value:
                result.conflicts.append(f"{attribute} asked as both {result.edits[attribute]} and {value}; kept {value}")
            result.edits[attribute] = value
    return result

"""Turn a counterfactual description into attribute edits, deterministically (and attributes back into phrases).

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
    **{p: ("Bald", 0) for p in ("full head of hair",)},
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
    **{p: ("Chubby", 0) for p in ("slim", "slender")},
    **{p: ("Wearing_Necktie", 1) for p in ("necktie", "tie")},
    # what the other CelebA attributes' phrases below say (the parser reads every phrase fairloop writes)
    **{p: ("5_o_Clock_Shadow", 1) for p in ("five o'clock shadow", "stubble")},
    **{p: ("Attractive", 0) for p in ("looks plain",)},
    **{p: ("Bags_Under_Eyes", 1) for p in ("bags under the eyes",)},
    **{p: ("Big_Lips", 0) for p in ("thin lips",)},
    **{p: ("Big_Nose", 0) for p in ("small nose",)},
    **{p: ("Blurry", 1) for p in ("blurry photo",)},
    **{p: ("Blurry", 0) for p in ("sharp photo",)},
    **{p: ("Bushy_Eyebrows", 0) for p in ("thin eyebrows",)},
    **{p: ("Heavy_Makeup", 1) for p in ("makeup",)},
    **{p: ("Mouth_Slightly_Open", 0) for p in ("mouth closed",)},
    **{p: ("Narrow_Eyes", 0) for p in ("wide open eyes",)},
    **{p: ("No_Beard", 1) for p in ("clean-shaven", "clean shaven")},
    **{p: ("No_Beard", 0) for p in ("beard", "bearded")},
    **{p: ("Wearing_Necklace", 1) for p in ("necklace",)},
}

NEGATIONS = ("without", "no", "not", "non", "never", "remove", "removing", "removed", "reduce", "reducing",
             "reduced", "less", "fewer", "lacking", "free of", "absence of", "minus", "instead of")
#: Words that open a new clause: a negation never reaches past them ("a man without gray hair, who is
#: young" asks for a young man; "without gray hair wearing eyeglasses" keeps the glasses).
CLAUSE_BREAKS = ("while", "but", "whereas", "with", "who", "whose", "wearing", "wears", "having", "has", "showing",
                 "plus", "in a", "yet", "so that", "keep", "keeps", "keeping", "maintain",
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


# --- the other way: attributes → phrases -------------------------------------------------------
#: attribute → (phrase when present, phrase when absent), written to follow a noun: "a man {...}".
ATTRIBUTE_PHRASES: dict[str, tuple[str, str]] = {
    "5_o_Clock_Shadow": ("with a five o'clock shadow", "without stubble"),
    "Arched_Eyebrows": ("with arched eyebrows", "without arched eyebrows"),
    "Attractive": ("who looks attractive", "who looks plain"),
    "Bags_Under_Eyes": ("with bags under the eyes", "without bags under the eyes"),
    "Bald": ("who is bald", "with a full head of hair"),
    "Bangs": ("with bangs", "without bangs"),
    "Big_Lips": ("with big lips", "with thin lips"),
    "Big_Nose": ("with a big nose", "with a small nose"),
    "Black_Hair": ("with black hair", "without black hair"),
    "Blond_Hair": ("with blond hair", "without blond hair"),
    "Blurry": ("in a blurry photo", "in a sharp photo"),
    "Brown_Hair": ("with brown hair", "without brown hair"),
    "Bushy_Eyebrows": ("with bushy eyebrows", "with thin eyebrows"),
    "Chubby": ("who is chubby", "who is slim"),
    "Double_Chin": ("with a double chin", "without a double chin"),
    "Eyeglasses": ("wearing eyeglasses", "without eyeglasses"),
    "Goatee": ("with a goatee", "without a goatee"),
    "Gray_Hair": ("with gray hair", "without gray hair"),
    "Heavy_Makeup": ("wearing heavy makeup", "without makeup"),
    "High_Cheekbones": ("with high cheekbones", "without high cheekbones"),
    "Male": ("who is a man", "who is a woman"),
    "Mouth_Slightly_Open": ("with the mouth slightly open", "with the mouth closed"),
    "Mustache": ("with a mustache", "without a mustache"),
    "Narrow_Eyes": ("with narrow eyes", "with wide open eyes"),
    "No_Beard": ("who is clean-shaven", "with a beard"),
    "Oval_Face": ("with an oval face", "without an oval face"),
    "Pale_Skin": ("with pale skin", "without pale skin"),
    "Pointy_Nose": ("with a pointy nose", "without a pointy nose"),
    "Receding_Hairline": ("with a receding hairline", "without a receding hairline"),
    "Rosy_Cheeks": ("with rosy cheeks", "without rosy cheeks"),
    "Sideburns": ("with sideburns", "without sideburns"),
    "Smiling": ("who is smiling", "with a neutral expression"),
    "Straight_Hair": ("with straight hair", "without straight hair"),
    "Wavy_Hair": ("with wavy hair", "without wavy hair"),
    "Wearing_Earrings": ("wearing earrings", "without earrings"),
    "Wearing_Hat": ("wearing a hat", "without a hat"),
    "Wearing_Lipstick": ("wearing lipstick", "without lipstick"),
    "Wearing_Necklace": ("wearing a necklace", "without a necklace"),
    "Wearing_Necktie": ("wearing a necktie", "without a necktie"),
    "Young": ("who is young", "who is old"),
}


def attribute_words(name: str) -> str:
    """"Gray_Hair" → "gray hair"."""
    return " ".join(name.replace("_", " ").split()).lower()


def attribute_phrase(name: str, present: bool) -> str:
    """"with gray hair" / "without gray hair"; unknown attributes: "with X present" / "without X"."""
    if name in ATTRIBUTE_PHRASES:
        return ATTRIBUTE_PHRASES[name][0 if present else 1]
    return f"with {attribute_words(name)} present" if present else f"without {attribute_words(name)}"

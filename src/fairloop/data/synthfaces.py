"""SynthFaces: procedural 64×64 faces with CelebA attribute names, the embedded dataset.

Why it exists: fairloop must run offline with no dataset download, and its loop needs an exact
counterfactual oracle. A face here is a pure function of ``(attributes, identity)``: the identity
seed fixes every nuisance factor (pose, face size, skin tone within its class, hair style,
background, colours, the person's individual jaw and brows), so the same person can be re-rendered
with one attribute changed and nothing else.

The attribute table is sampled in a fixed causal order, with realistic dependencies (documented in
:data:`DEPENDENCIES`). A :class:`Scenario` injects a shortcut into the training split only: the
spurious attribute agrees with the target in ``correlation`` of the training rows, while validation
and test are balanced over the four target × spurious groups.

The target's true cue is deliberately subtle: men have a slightly squarer jaw and thicker, lower
brows, each with individual variation, while the default shortcut (gray hair) colours a large area.
With ``cues="subtle"`` (:data:`CUES`) age, smiles, lipstick, chubbiness and moustaches are drawn the
same way, faint and varying from person to person, so those targets have a shortcut that bites too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairloop.errors import ConfigError, DataError
from fairloop.io import work_folder

ATTRIBUTES = (
    "Male", "Young", "Gray_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bald", "Bangs",
    "Eyeglasses", "Smiling", "Mustache", "Wearing_Hat", "Wearing_Earrings", "Wearing_Lipstick",
    "Pale_Skin", "Chubby", "Wearing_Necktie",
)
HAIR_COLORS = ("Gray_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair")
HAIR_STATES = (*HAIR_COLORS, "Bald")  # exactly one of these is 1 for every face

#: How each attribute is sampled, in order. Shown in the README and ``fairloop data synth --help``.
DEPENDENCIES = {
    "Male": "P = 0.5",
    "hair": "exactly one of Gray/Black/Blond/Brown_Hair or Bald; Bald only on men (12 %); "
            "gray 20 %; blond more common on women (30 %) than men (12 %)",
    "Young": "P = 0.2 with gray hair or bald, 0.75 otherwise",
    "Pale_Skin": "P = 0.15",
    "Bangs": "P = 0.3 for women, 0.1 for men; never when bald",
    "Eyeglasses": "P = 0.12 if young, 0.3 otherwise",
    "Smiling": "P = 0.5",
    "Mustache": "men only: P = 0.15 if young, 0.3 otherwise",
    "Wearing_Hat": "P = 0.08",
    "Wearing_Earrings": "P = 0.3 for women, 0.03 for men",
    "Wearing_Lipstick": "P = 0.35 for women, 0.01 for men",
    "Chubby": "P = 0.07 if young, 0.2 otherwise",
    "Wearing_Necktie": "P = 0.15 for men, 0.01 for women",
}

IMAGE_SIZE = 64
_CANVAS = 128  # drawn at twice the size, then downsampled with antialiasing
#: How renders are stored: CelebA's .jpg, without chroma subsampling, which blurs 1-pixel details.
JPEG_SETTINGS = {"quality": 95, "subsampling": 0}
#: How attributes show in a render. ``salient``: every attribute but ``Male`` is plain to see (what the
#: embedded generator and the attribute oracle learned). ``subtle``: the attributes in
#: :data:`SUBTLE_TARGETS` show faintly, with individual variation, as ``Male`` always does, so a
#: salient shortcut (hair colour, glasses, a hat, pale skin) bites when one of them is the target.
CUES = ("salient", "subtle")
SUBTLE_TARGETS = ("Young", "Smiling", "Wearing_Lipstick", "Chubby", "Mustache")


def default_cues(target: str) -> str:
    """The cue style a scenario gets unless told: ``subtle`` when its target is one of
    :data:`SUBTLE_TARGETS` (so its shortcut bites), else ``salient`` (what the embedded generator knows)."""
    return "subtle" if target in SUBTLE_TARGETS else "salient"


def check_cues(cues: str) -> str:
    """``cues`` itself when it names a style; a ConfigError naming the styles otherwise."""
    if cues not in CUES:
        raise ConfigError(f"unknown SynthFaces cue style {cues!r}", f"use one of {', '.join(CUES)}")
    return cues


# --------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Scenario:
    """A shortcut injected into the training split: ``P(spurious == target) = correlation`` there."""

    target: str = "Male"
    spurious: str = "Gray_Hair"
    correlation: float = 0.95

    def validate(self) -> Scenario:
        for role, name in (("target", self.target), ("spurious", self.spurious)):
            if name not in ATTRIBUTES:
                raise ConfigError(f"unknown {role} attribute {name!r} for SynthFaces",
                                  f"use one of {', '.join(ATTRIBUTES)}")
        if self.target == self.spurious:
            raise ConfigError("the target and the spurious attribute are the same",
                              "choose a different --spurious attribute")
        if self.target in HAIR_STATES and self.spurious in HAIR_STATES:
            # one categorical hair draw: both at 1 is impossible, so the groups could not be filled
            raise ConfigError(f"{self.target} and {self.spurious} are both hair states, and a face has exactly one",
                              "choose a spurious attribute that is not one of " + ", ".join(HAIR_STATES))
        if not 0.0 <= self.correlation <= 1.0:
            raise ConfigError(f"--correlation {self.correlation} is not a probability",
                              "use a value in [0, 1]; 0.5 gives an unbiased training split")
        return self


#: Each attribute's causal parents in the sampler below: SynthFaces' true causal graph. The hair
#: states share one categorical draw (:func:`hair_probabilities`) whose only parent is ``Male``.
PARENTS: dict[str, tuple[str, ...]] = {
    "Male": (), **{name: ("Male",) for name in HAIR_STATES}, "Young": ("Gray_Hair", "Bald"), "Pale_Skin": (),
    "Bangs": ("Male", "Bald"), "Eyeglasses": ("Young",), "Smiling": (), "Mustache": ("Male", "Young"),
    "Wearing_Hat": (), "Wearing_Earrings": ("Male",), "Wearing_Lipstick": ("Male",), "Chubby": ("Young",),
    "Wearing_Necktie": ("Male",),
}


def attribute_probability(name: str, values: Mapping[str, np.ndarray]) -> np.ndarray | float:
    """P(``name`` = 1 | its parents in ``values``) for every attribute but the hair states, as
    :data:`DEPENDENCIES` says it in words: the sampler's and the causal model's one mechanism."""
    male = np.asarray(values["Male"]).astype(bool) if "Male" in PARENTS[name] else None
    young = np.asarray(values["Young"]).astype(bool) if "Young" in PARENTS[name] else None
    if name == "Male":
        return 0.5
    if name == "Young":
        return np.where((np.asarray(values["Gray_Hair"]) | np.asarray(values["Bald"])).astype(bool), 0.2, 0.75)
    if name == "Bangs":
        return np.where(np.asarray(values["Bald"]) == 1, 0.0, np.where(male, 0.1, 0.3))
    if name == "Eyeglasses":
        return np.where(young, 0.12, 0.3)
    if name == "Mustache":
        return np.where(male, np.where(young, 0.15, 0.3), 0.0)
    if name == "Chubby":
        return np.where(young, 0.07, 0.2)
    by_sex = {"Wearing_Earrings": (0.03, 0.3), "Wearing_Lipstick": (0.01, 0.35), "Wearing_Necktie": (0.15, 0.01)}
    if name in by_sex:
        return np.where(male, *by_sex[name])
    return {"Pale_Skin": 0.15, "Smiling": 0.5, "Wearing_Hat": 0.08}[name]


def hair_probabilities(male: np.ndarray) -> np.ndarray:
    """P(hair state) per row, over :data:`HAIR_STATES` in order."""
    male = np.asarray(male).astype(bool)
    probs = np.empty((len(male), len(HAIR_STATES)))
    probs[:, 0] = 0.20                              # gray
    probs[:, 1] = np.where(male, 0.30, 0.25)        # black
    probs[:, 2] = np.where(male, 0.12, 0.30)        # blond
    probs[:, 3] = np.where(male, 0.26, 0.25)        # brown
    probs[:, 4] = np.where(male, 0.12, 0.0)         # bald
    return probs


def sample_attributes(n: int, rng: np.random.Generator, fixed: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Sample ``n`` attribute rows in causal order; columns in ``fixed`` are set, not sampled.

    Fixed values act as interventions: children are sampled given them, so a forced
    ``Gray_Hair = 1`` also makes the person older on average and never bald.
    """
    fixed = {k: np.asarray(v, dtype=np.int8) for k, v in (fixed or {}).items()}
    out: dict[str, np.ndarray] = {}
    for name in PARENTS:
        if name in HAIR_STATES:
            if name == HAIR_STATES[0]:
                _sample_hair(n, rng, out["Male"], fixed, out)
            continue
        values = fixed.get(name)
        if values is None:
            values = (rng.random(n) < attribute_probability(name, out)).astype(np.int8)
        out[name] = values
    return pd.DataFrame({name: out[name] for name in ATTRIBUTES})


def _sample_hair(n: int, rng: np.random.Generator, male: np.ndarray, fixed: dict, out: dict) -> None:
    """One categorical draw over :data:`HAIR_STATES`, honouring fixed 1s and 0s."""
    probs = hair_probabilities(male)
    for j, name in enumerate(HAIR_STATES):
        if name in fixed:
            probs[:, j] = np.where(fixed[name] == 1, 1e9, np.where(fixed[name] == 0, 0.0, probs[:, j]))
    probs[probs.sum(axis=1) == 0, 1] = 1.0  # every state forbidden (e.g. all fixed to 0): black hair
    probs /= probs.sum(axis=1, keepdims=True)
    choice = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=len(HAIR_STATES) - 1)
    for j, name in enumerate(HAIR_STATES):
        out[name] = (choice == j).astype(np.int8)


def scenario_table(n: int, scenario: Scenario, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                   extra_val: int = 0) -> pd.DataFrame:
    """The full attribute table: ``split`` and ``identity`` columns plus every attribute.

    Training rows follow the scenario's correlation; validation and test rows are split as evenly
    as possible over the four (target, spurious) groups. ``extra_val`` more validation rows come
    from a stream of their own, after the others, so every other row is the same as without them:
    1,800 validation images read a repaired model's EOD about 0.025 fairer than it is, 10,800 do
    not (README, "The main job in minutes").
    """
    scenario.validate()
    if n < 40:
        raise ConfigError(f"--n {n} is too small for train/val/test splits with four groups each",
                          "use --n 40 or more (the default is 12000)")
    if extra_val < 0:
        raise ConfigError(f"--extra-val {extra_val} is not a number of images", "use 0 (none) or e.g. --extra-val 7200")
    rng = np.random.default_rng(seed)
    sizes = [int(round(n * f)) for f in fractions[:2]]
    sizes.append(n - sum(sizes))
    parts = []
    for split, size in zip(("train", "val", "test"), sizes):
        if split == "train":
            target = (rng.random(size) < 0.5).astype(np.int8)
            agree = rng.random(size) < scenario.correlation
            spurious = np.where(agree, target, 1 - target).astype(np.int8)
            parts.append(_split_rows("train", target, spurious, scenario, rng))
        else:
            parts.append(_balanced_rows(split, size, scenario, rng))
    table = pd.concat(parts, ignore_index=True)
    table.insert(1, "identity", rng.integers(0, 2**31 - 1, size=len(table), dtype=np.int64))
    if extra_val:
        extra_rng = np.random.default_rng([seed, 1])
        extra = _balanced_rows("val", extra_val, scenario, extra_rng)
        extra.insert(1, "identity", extra_rng.integers(0, 2**31 - 1, size=extra_val, dtype=np.int64))
        table = pd.concat([table, extra], ignore_index=True)
    table.index = [f"{i + 1:06d}.jpg" for i in range(len(table))]
    table.index.name = "image_id"
    return table


def _balanced_rows(split: str, size: int, scenario: Scenario, rng: np.random.Generator) -> pd.DataFrame:
    """``size`` rows spread as evenly as possible over the four (target, spurious) groups, shuffled."""
    groups = np.arange(size) % 4
    rng.shuffle(groups)
    return _split_rows(split, (groups // 2).astype(np.int8), (groups % 2).astype(np.int8), scenario, rng)


def _split_rows(split: str, target: np.ndarray, spurious: np.ndarray, scenario: Scenario,
                rng: np.random.Generator) -> pd.DataFrame:
    part = sample_attributes(len(target), rng, {scenario.target: target, scenario.spurious: spurious})
    part.insert(0, "split", split)
    return part


# -------------------------------------------------------------------------------------- rendering

_HAIR_RGB = {"Gray_Hair": (178, 178, 182), "Black_Hair": (28, 22, 22), "Blond_Hair": (228, 196, 108),
             "Brown_Hair": (104, 62, 32)}
_PALE_SKIN = np.array([250, 228, 214])
_LIGHT_SKIN, _DARK_SKIN = np.array([236, 192, 160]), np.array([112, 72, 46])


def render_face(attributes: Mapping[str, int], identity: int, size: int = IMAGE_SIZE, cues: str = "salient"):
    """Render one face as a ``size``×``size`` RGB ``PIL.Image``; pure in ``(attributes, identity, cues)``.

    Every random draw happens in the same order whatever the attributes, so flipping one attribute
    changes only what that attribute draws. ``cues`` is one of :data:`CUES`.
    """
    from PIL import Image, ImageDraw

    subtle = check_cues(cues) == "subtle"

    a = {name: bool(attributes.get(name, 0)) for name in ATTRIBUTES}
    r = np.random.default_rng(int(identity))
    u = r.random  # one uniform in [0, 1)

    def jitter(rgb, amount=14):
        return tuple(int(np.clip(c + (u() - 0.5) * 2 * amount, 0, 255)) for c in rgb)

    # identity: every draw below happens for every face, in this order
    bg_top, bg_bottom = (jitter((110 + u() * 100, 110 + u() * 100, 110 + u() * 100), 40) for _ in range(2))
    cx, cy = 64 + (u() - 0.5) * 12, 60 + (u() - 0.5) * 10
    scale = 0.9 + u() * 0.18
    angle = (u() - 0.5) * 16
    tone = u()
    hair_style = int(u() * 3)  # 0 short, 1 medium, 2 long
    hair_shade = (u() - 0.5) * 24
    jaw_noise, brow_noise, brow_height_noise = r.normal(0, 0.35, 3)
    eye_gap, eye_y, nose_len, mouth_w = 17 + u() * 4, u() * 4, 9 + u() * 5, 15 + u() * 5
    shirt, tie, hat = jitter((u() * 255, u() * 255, u() * 255), 0), jitter((150 + u() * 90, 20 + u() * 60, 30 + u() * 90), 0), jitter((u() * 200, u() * 200, u() * 200), 0)
    frame = jitter((30 + u() * 40, 20 + u() * 40, 20 + u() * 40), 0)
    lipstick = jitter((200, 25, 55), 25)
    earring = (235, 200, 60) if u() < 0.6 else (215, 215, 225)
    brightness = 0.9 + u() * 0.2
    pale_jitter = (u() - 0.5) * 12  # drawn for every face, so Pale_Skin shifts no other draw
    # drawn after every draw above, so salient renders stay what they were: how strongly this person
    # shows each subtle cue (the attribute's value plus individual variation, as the male cue has)
    noise = r.normal(0, 0.35, 5)
    age, smile = _cue_strength(not a["Young"], noise[0]), _cue_strength(a["Smiling"], noise[1])
    lipstick_shade, chubbiness = _cue_strength(a["Wearing_Lipstick"], noise[2]), _cue_strength(a["Chubby"], noise[3])
    stache_shade = _cue_strength(a["Mustache"], noise[4])
    skin = _PALE_SKIN + pale_jitter if a["Pale_Skin"] else _LIGHT_SKIN + (_DARK_SKIN - _LIGHT_SKIN) * tone
    skin = tuple(int(c) for c in np.clip(skin, 0, 255))

    hair_state = next((h for h in HAIR_COLORS if a[h]), None)
    if hair_state is None and not a["Bald"]:
        hair_state = "Brown_Hair"  # a row with no hair state at all (a hand-made table): render brown
    hair = None if a["Bald"] and hair_state is None else tuple(int(np.clip(c + hair_shade, 0, 255)) for c in _HAIR_RGB[hair_state])
    masculinity = float(a["Male"])
    w = 26 * scale * ((1 + 0.08 * chubbiness) if subtle else (1.12 if a["Chubby"] else 1.0))
    h = 34 * scale
    darker = tuple(int(c * 0.62) for c in skin)

    layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    # long hair falls behind the shoulders
    if hair and hair_style == 2:
        d.rounded_rectangle([cx - w - 7, cy - h * 0.7, cx + w + 7, cy + h + 14], radius=18, fill=hair)
    # neck, shirt, collar, tie
    d.rectangle([cx - w * 0.38, cy + h * 0.6, cx + w * 0.38, cy + h + 14], fill=skin)
    d.pieslice([cx - w * 1.9, cy + h + 6, cx + w * 1.9, cy + h + 70], 180, 360, fill=shirt)
    if a["Wearing_Necktie"]:
        top = cy + h + 8
        d.polygon([(cx - 4, top), (cx + 4, top), (cx + 7, top + 24), (cx, top + 32), (cx - 7, top + 24)], fill=tie)
    # ears
    for side in (-1, 1):
        d.ellipse([cx + side * w - 5, cy - 6, cx + side * w + 5, cy + 10], fill=skin)
    # face: upper half an ellipse, lower half a superellipse whose squareness is the male cue
    jaw_power = 2.0 + 1.1 * float(np.clip(masculinity + jaw_noise, -0.3, 1.6))
    d.polygon(_face_outline(cx, cy, w, h, jaw_power), fill=skin)
    if subtle:  # a faint blush on fuller cheeks
        for side in (-1, 1):
            d.ellipse([cx + side * w * 0.62 - 6, cy + 6, cx + side * w * 0.62 + 6, cy + 16],
                      fill=_blend(skin, (230, 120, 120), 0.12 * max(chubbiness, 0.0)))
    elif a["Chubby"]:
        d.arc([cx - w * 0.45, cy + h * 0.72, cx + w * 0.45, cy + h * 1.05], 20, 160, fill=darker, width=2)
        for side in (-1, 1):
            d.ellipse([cx + side * w * 0.62 - 6, cy + 6, cx + side * w * 0.62 + 6, cy + 16], fill=_blend(skin, (230, 120, 120), 0.25))
    # wrinkles: forehead lines and nasolabial folds
    if subtle or not a["Young"]:
        wrinkle = _blend(skin, darker, 0.5 * max(age, 0.0)) if subtle else darker
        for k in range(2):
            y = cy - h * 0.52 + k * 5
            d.arc([cx - w * 0.5, y - 3, cx + w * 0.5, y + 5], 200, 340, fill=wrinkle, width=2)
        for side in (-1, 1):
            d.line([(cx + side * 8, cy + 7), (cx + side * 13, cy + 19)], fill=wrinkle, width=2)
    # eyes and brows (brow thickness and height are part of the male cue)
    ey = cy - 4 + eye_y
    for side in (-1, 1):
        ex = cx + side * eye_gap / 2 * scale
        d.ellipse([ex - 5, ey - 3, ex + 5, ey + 3], fill=(245, 245, 245))
        d.ellipse([ex - 2.5, ey - 2.5, ex + 2.5, ey + 2.5], fill=(40, 30, 25))
        brow = 1.6 + 1.6 * float(np.clip(masculinity + brow_noise, -0.3, 1.5))
        by = ey - 8 + 1.5 * float(np.clip(masculinity + brow_height_noise, -0.5, 1.5))
        brow_rgb = hair if hair and hair_state != "Gray_Hair" else (70, 60, 55)
        d.line([(ex - 6, by + 1), (ex + 6, by - side * 0.5)], fill=brow_rgb, width=max(1, round(brow)))
    # nose
    d.line([(cx, ey + 3), (cx - 2, ey + 3 + nose_len), (cx + 2, ey + 3 + nose_len)], fill=darker, width=2)
    # mouth
    my = cy + 17 * scale
    natural_lips = _blend(darker, (170, 80, 80), 0.35)
    if subtle:  # closed lips, tinted by lipstick, whose corners rise with the smile
        lips = _blend(natural_lips, lipstick, 0.5 * max(lipstick_shade, 0.0))
        lift = 4 * smile
        d.line([(cx + t * mouth_w / 2, my + lift * (0.3 - t * t)) for t in np.linspace(-1, 1, 9)], fill=lips, width=3,
               joint="curve")
    else:
        lips = lipstick if a["Wearing_Lipstick"] else natural_lips
        if a["Smiling"]:
            d.chord([cx - mouth_w / 2, my - 5, cx + mouth_w / 2, my + 7], 0, 180, fill=lips)
            d.chord([cx - mouth_w / 2 + 3, my - 3, cx + mouth_w / 2 - 3, my + 3], 0, 180, fill=(250, 250, 250))
        else:
            d.line([(cx - mouth_w / 2, my), (cx + mouth_w / 2, my)], fill=lips, width=4 if a["Wearing_Lipstick"] else 3)
    if (stache_shade > 0) if subtle else a["Mustache"]:
        stache = _blend(hair, (90, 90, 95), 0.3) if hair else (60, 45, 35)
        if subtle:
            stache = _blend(skin, stache, 0.55 * stache_shade)
        d.polygon([(cx - mouth_w / 2 - 2, my - 2), (cx - 3, my - 10), (cx + 3, my - 10), (cx + mouth_w / 2 + 2, my - 2),
                   (cx, my - 5)], fill=stache)
    # hair on top: a cap down to the temples, longer styles reach the ears; bangs cover the forehead
    if hair:
        hair_bottom = cy - h * 0.15 + 10 * hair_style
        d.chord([cx - w - 3, cy - h - 6, cx + w + 3, cy + h * 0.4], 180, 360, fill=hair)
        for side in (-1, 1):
            x0, x1 = sorted((cx + side * (w + 3), cx + side * (w - 5)))
            d.rectangle([x0, cy - h * 0.45, x1, hair_bottom], fill=hair)
        if a["Bangs"]:
            points = [(cx - w * 0.85, cy - h * 0.6)]
            for k in range(7):
                points.append((cx - w * 0.85 + (k + 0.5) * w * 1.7 / 7, cy - h * 0.28 + (3 if k % 2 else -1)))
            points.append((cx + w * 0.85, cy - h * 0.6))
            d.polygon(points, fill=hair)
    else:
        d.ellipse([cx - w * 0.4, cy - h * 0.85, cx - w * 0.1, cy - h * 0.7], fill=_blend(skin, (255, 255, 255), 0.35))
    if a["Wearing_Hat"]:
        d.chord([cx - w * 0.95, cy - h - 16, cx + w * 0.95, cy - h * 0.25], 180, 360, fill=hat)
        d.rectangle([cx - w - 8, cy - h * 0.62, cx + w + 8, cy - h * 0.5], fill=hat)
    if a["Eyeglasses"]:
        for side in (-1, 1):
            ex = cx + side * eye_gap / 2 * scale
            d.ellipse([ex - 8, ey - 7, ex + 8, ey + 7], outline=frame, width=3)
        d.line([(cx - eye_gap / 2 * scale + 8, ey), (cx + eye_gap / 2 * scale - 8, ey)], fill=frame, width=3)
    if a["Wearing_Earrings"]:
        for side in (-1, 1):
            d.ellipse([cx + side * (w + 1) - 3.5, cy + 10, cx + side * (w + 1) + 3.5, cy + 17], fill=earring)

    canvas = _gradient(bg_top, bg_bottom)
    canvas.alpha_composite(layer.rotate(angle, resample=Image.BICUBIC, center=(cx, cy)))
    img = canvas.convert("RGB").resize((size, size), Image.LANCZOS)
    return img.point(lambda v: min(255, int(v * brightness)))


def _cue_strength(present: bool, noise: float) -> float:
    """How strongly a subtle cue shows: 1 for the attribute, 0 without it, blurred by the person's own
    ``noise`` (about 7 % of people on either side read as the other value from this cue alone)."""
    return float(np.clip(float(present) + noise, -0.3, 1.4))


def _face_outline(cx: float, cy: float, w: float, h: float, jaw_power: float, steps: int = 48) -> list[tuple[float, float]]:
    points = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        c, s = math.cos(t), math.sin(t)
        p = jaw_power if s > 0 else 2.0  # s > 0 is the lower half (image y grows downwards)
        x = w * math.copysign(abs(c) ** (2 / p), c)
        y = h * math.copysign(abs(s) ** (2 / p), s)
        points.append((cx + x, cy + y))
    return points


def _blend(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b))


def _gradient(top, bottom):
    from PIL import Image

    ramp = np.linspace(0, 1, _CANVAS)[:, None, None]
    rgb = (np.array(top)[None, None, :] * (1 - ramp) + np.array(bottom)[None, None, :] * ramp)
    rgb = np.broadcast_to(rgb, (_CANVAS, _CANVAS, 3)).astype(np.uint8)
    alpha = np.full((_CANVAS, _CANVAS, 1), 255, dtype=np.uint8)
    return Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")


# ------------------------------------------------------------------------------------ writing


def write_synthfaces(out: str | Path, *, n: int = 12000, scenario: Scenario = Scenario(), seed: int = 0,
                     cues: str = "salient", extra_val: int = 0, force: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Write SynthFaces to ``out`` in CelebA's on-disk format; return the folder.

    The folder is built beside ``out`` and moved into place at the end, so an interrupted run never
    leaves a half-written dataset that looks complete. ``list_identity_synthfaces.txt`` records each
    image's identity seed: the key to re-rendering it with one attribute changed.
    """
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(f"{out} already exists and is not empty",
                            "choose another --out, or pass --force to replace it")
    check_cues(cues)
    table = scenario_table(n, scenario, seed, extra_val=extra_val)
    tmp = work_folder(out)
    try:
        images = tmp / "img_align_celeba"
        images.mkdir()
        attrs = table[list(ATTRIBUTES)]
        for i, (image_id, row) in enumerate(zip(table.index, attrs.to_dict("records"))):
            render_face(row, int(table["identity"].iat[i]), cues=cues).save(images / image_id, **JPEG_SETTINGS)
            if progress:
                progress(i + 1, len(table))
        _write_celeba_tables(tmp, table)
        meta = {"dataset": "SynthFaces", "version": 1, "n": n, "extra_val": extra_val, "seed": seed,
                "scenario": asdict(scenario),
                "cues": cues, "image_size": IMAGE_SIZE, "dependencies": DEPENDENCIES,
                "groups": _group_counts(table, scenario)}
        (tmp / "synthfaces.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_celeba_tables(folder: Path, table: pd.DataFrame) -> None:
    signs = np.where(table[list(ATTRIBUTES)].to_numpy() == 1, " 1", "-1")
    lines = [str(len(table)), " ".join(ATTRIBUTES)]
    lines += [f"{image_id} " + " ".join(row) for image_id, row in zip(table.index, signs)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    codes = table["split"].map({"train": 0, "val": 1, "test": 2})
    (folder / "list_eval_partition.txt").write_text("".join(f"{i} {c}\n" for i, c in zip(table.index, codes)))
    (folder / "list_identity_synthfaces.txt").write_text("".join(f"{i} {s}\n" for i, s in zip(table.index, table["identity"])))


def _group_counts(table: pd.DataFrame, scenario: Scenario) -> dict[str, dict[str, int]]:
    counts = table.groupby(["split", scenario.target, scenario.spurious]).size()
    return {split: {f"{scenario.target}={t},{scenario.spurious}={s}": int(c) for (sp, t, s), c in counts.items() if sp == split}
            for split in ("train", "val", "test")}


def render_pool(n: int, seed: int, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` renders (uint8 N×64×64×3) from the natural attribute distribution, with no scenario and
    random identities, and their attribute table: the unbiased pool that the embedded generator and
    the attribute oracle learn from."""
    rng = np.random.default_rng(seed)
    table = sample_attributes(n, rng)[list(ATTRIBUTES)]
    identities = rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, (row, identity) in enumerate(zip(table.to_dict("records"), identities)):
        images[i] = np.asarray(render_face(row, int(identity)))
        if progress:
            progress(i + 1, n)
    return images, table


def is_synthfaces(root: str | Path) -> bool:
    """Whether ``root`` was written by ``fairloop data synth`` (the attribute oracle's domain)."""
    return (Path(root) / "list_identity_synthfaces.txt").is_file()


def read_cues(root: str | Path) -> str:
    """The cue style a SynthFaces folder was rendered with (folders from before styles existed: salient)."""
    meta = Path(root) / "synthfaces.json"
    if not meta.is_file():
        return "salient"
    try:
        cues = json.loads(meta.read_text()).get("cues", "salient")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{meta} cannot be read ({exc})",
                        "re-create the folder with 'fairloop data synth', or restore synthfaces.json") from None
    return check_cues(cues)


def read_identities(root: str | Path) -> pd.Series:
    """Identity seeds of a SynthFaces folder, indexed by image id (for exact counterfactuals)."""
    path = Path(root) / "list_identity_synthfaces.txt"
    if not is_synthfaces(root):
        raise DataError(f"{root} is not a SynthFaces folder (no list_identity_synthfaces.txt)",
                        "exact re-rendering needs a folder written by 'fairloop data synth'")
    ids = pd.read_csv(path, sep=" ", header=None, index_col=0).iloc[:, 0]
    ids.index = ids.index.astype(str)
    return ids

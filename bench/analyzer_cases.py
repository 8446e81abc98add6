"""The analyzer's fixed evaluation set: 12 analysis cases with their right answers.

Each case is seed 000's prompt P (metrics on validation, LIME importances, training-split counts)
for a dataset and bias, plus what a correct analysis says: which attribute(s) are the shortcut,
which value of each shortcut the counterfactuals of each class must show, and how many images are
sensible. ``shortcuts == []`` means the right answer is "no counterfactuals needed". Metrics follow
AIF360's convention with the protected value 1 privileged (DI = unprivileged / privileged rate).
"""

from __future__ import annotations

CELEBA = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Black_Hair",
          "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Heavy_Makeup", "Male", "Mustache", "No_Beard",
          "Pale_Skin", "Smiling", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necktie", "Young"]
SYNTH = ["Male", "Young", "Gray_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bald", "Bangs", "Eyeglasses",
         "Smiling", "Mustache", "Wearing_Hat", "Wearing_Earrings", "Wearing_Lipstick", "Wearing_Necktie", "Chubby",
         "Pale_Skin"]
BIRDS = ["Water_Background", "Land_Background", "Long_Beak", "Webbed_Feet", "Bright_Plumage", "Perching"]


def biased(di, eod, aod, wga, worst, acc=0.85):
    return {"accuracy": acc, "disparate_impact": di, "statistical_parity_difference": round((di - 1) * 0.5, 3),
            "equal_opportunity_difference": eod, "average_odds_difference": aod, "worst_group_accuracy": wga,
            "worst_group": worst, "undefined": {}}


def groups(target, attr, aligned, minority):
    """Counts of a training split where ``attr`` = ``target`` in ``aligned`` rows of each class."""
    return {f"{target}=1, {attr}=1": aligned, f"{target}=1, {attr}=0": minority,
            f"{target}=0, {attr}=0": aligned, f"{target}=0, {attr}=1": minority}


FAIR = {"accuracy": 0.93, "disparate_impact": 0.97, "statistical_parity_difference": -0.015,
        "equal_opportunity_difference": -0.01, "average_odds_difference": -0.008, "worst_group_accuracy": 0.9,
        "worst_group": "", "undefined": {}}

CASES = [
    dict(name="synthfaces Male / Gray_Hair, strong", dataset="synthfaces", target="Male", protected="Gray_Hair",
         attributes=[a for a in SYNTH if a != "Male"],
         metrics=biased(0.39, -0.47, -0.41, 0.52, "Male=1, Gray_Hair=0", 0.79),
         importances=[("Wearing_Lipstick", -0.38), ("Gray_Hair", 0.28), ("Blond_Hair", -0.27), ("Mustache", 0.24)],
         train_groups=groups("Male", "Gray_Hair", 3990, 210), max_images=6000,
         shortcuts=["Gray_Hair"], wanted={1: {"Gray_Hair": 0}, 0: {"Gray_Hair": 1}}, images=(2000, 6000)),
    dict(name="synthfaces Male / Gray_Hair, already fair", dataset="synthfaces", target="Male",
         protected="Gray_Hair", attributes=[a for a in SYNTH if a != "Male"], metrics=dict(FAIR),
         importances=[("Wearing_Lipstick", -0.4), ("Mustache", 0.3), ("Gray_Hair", 0.01)],
         train_groups=groups("Male", "Gray_Hair", 2100, 2100), max_images=6000, shortcuts=[], wanted={},
         images=(0, 0)),
    dict(name="celeba Blond_Hair / Male", dataset="celeba", target="Blond_Hair", protected="Male",
         attributes=[a for a in CELEBA if a != "Blond_Hair"],
         metrics=biased(3.2, 0.52, 0.3, 0.41, "Blond_Hair=1, Male=1", 0.95),
         importances=[("Male", -0.33), ("Heavy_Makeup", 0.2), ("Wearing_Lipstick", 0.18), ("Black_Hair", -0.15)],
         train_groups={"Blond_Hair=1, Male=1": 1387, "Blond_Hair=1, Male=0": 22880,
                       "Blond_Hair=0, Male=1": 66874, "Blond_Hair=0, Male=0": 71629},
         max_images=5000, shortcuts=["Male"], wanted={1: {"Male": 1}, 0: {"Male": 0}}, images=(1000, 5000)),
    dict(name="celeba Smiling / Wearing_Lipstick", dataset="celeba", target="Smiling",
         protected="Wearing_Lipstick", attributes=[a for a in CELEBA if a != "Smiling"],
         metrics=biased(0.55, -0.3, -0.27, 0.6, "Smiling=1, Wearing_Lipstick=0"),
         importances=[("Wearing_Lipstick", 0.31), ("Big_Lips", 0.12), ("Bangs", 0.04)],
         train_groups=groups("Smiling", "Wearing_Lipstick", 3000, 300), max_images=3000,
         shortcuts=["Wearing_Lipstick"], wanted={1: {"Wearing_Lipstick": 0}, 0: {"Wearing_Lipstick": 1}},
         images=(1000, 3000)),
    dict(name="celeba Young / Male (men predicted old)", dataset="celeba", target="Young", protected="Male",
         attributes=[a for a in CELEBA if a != "Young"],
         metrics=biased(1.6, 0.25, 0.21, 0.55, "Young=1, Male=1"),
         importances=[("Male", -0.29), ("Bags_Under_Eyes", -0.2), ("Gray_Hair", -0.18)],
         train_groups={"Young=1, Male=1": 900, "Young=1, Male=0": 3100, "Young=0, Male=1": 1800,
                       "Young=0, Male=0": 200}, max_images=4000,
         shortcuts=["Male"], wanted={1: {"Male": 1}, 0: {"Male": 0}}, images=(800, 4000)),
    dict(name="synthfaces Male / Eyeglasses", dataset="synthfaces", target="Male", protected="Eyeglasses",
         attributes=[a for a in SYNTH if a != "Male"],
         metrics=biased(0.45, -0.38, -0.33, 0.58, "Male=1, Eyeglasses=0"),
         importances=[("Eyeglasses", 0.35), ("Mustache", 0.22), ("Wearing_Lipstick", -0.2)],
         train_groups=groups("Male", "Eyeglasses", 3800, 400), max_images=6000,
         shortcuts=["Eyeglasses"], wanted={1: {"Eyeglasses": 0}, 0: {"Eyeglasses": 1}}, images=(2000, 6000)),
    dict(name="synthfaces Male / Wearing_Hat, absence pushes to class 1", dataset="synthfaces", target="Male",
         protected="Wearing_Hat", attributes=[a for a in SYNTH if a != "Male"],
         metrics=biased(1.7, 0.28, 0.25, 0.6, "Male=0, Wearing_Hat=0"),
         importances=[("Wearing_Hat", -0.3), ("Mustache", 0.25), ("Wearing_Earrings", -0.2)],
         train_groups={"Male=1, Wearing_Hat=0": 3900, "Male=1, Wearing_Hat=1": 300,
                       "Male=0, Wearing_Hat=1": 3900, "Male=0, Wearing_Hat=0": 300}, max_images=6000,
         shortcuts=["Wearing_Hat"], wanted={1: {"Wearing_Hat": 1}, 0: {"Wearing_Hat": 0}}, images=(2000, 6000)),
    dict(name="synthfaces Male / Gray_Hair and Wearing_Hat, two shortcuts", dataset="synthfaces", target="Male",
         protected="Gray_Hair", attributes=[a for a in SYNTH if a != "Male"],
         metrics=biased(0.42, -0.44, -0.38, 0.5, "Male=1, Gray_Hair=0"),
         importances=[("Gray_Hair", 0.31), ("Wearing_Hat", 0.29), ("Mustache", 0.2), ("Wearing_Lipstick", -0.18)],
         train_groups=groups("Male", "Gray_Hair", 3900, 300) | groups("Male", "Wearing_Hat", 3700, 500),
         max_images=6000, shortcuts=["Gray_Hair", "Wearing_Hat"],
         wanted={1: {"Gray_Hair": 0, "Wearing_Hat": 0}, 0: {"Gray_Hair": 1, "Wearing_Hat": 1}},
         images=(2000, 6000)),
    dict(name="celeba Male / Heavy_Makeup, slight, inside the band", dataset="celeba", target="Male",
         protected="Heavy_Makeup", attributes=[a for a in CELEBA if a != "Male"],
         metrics={**FAIR, "disparate_impact": 0.91, "equal_opportunity_difference": -0.03,
                  "average_odds_difference": -0.02, "statistical_parity_difference": -0.04},
         importances=[("Heavy_Makeup", -0.12), ("No_Beard", -0.3), ("Wearing_Lipstick", -0.25)],
         train_groups=groups("Male", "Heavy_Makeup", 2000, 1600), max_images=4000, shortcuts=[], wanted={},
         images=(0, 0)),
    dict(name="birds Waterbird / Water_Background", dataset="csv", target="Waterbird",
         protected="Water_Background", attributes=BIRDS,
         metrics=biased(0.22, -0.6, -0.5, 0.38, "Waterbird=1, Water_Background=0", 0.87),
         importances=[("Water_Background", 0.42), ("Webbed_Feet", 0.2), ("Long_Beak", 0.1)],
         train_groups=groups("Waterbird", "Water_Background", 3500, 180), max_images=5000,
         shortcuts=["Water_Background"], wanted={1: {"Water_Background": 0}, 0: {"Water_Background": 1}},
         images=(1500, 5000)),
    dict(name="birds Waterbird, already fair after mitigation", dataset="csv", target="Waterbird",
         protected="Water_Background", attributes=BIRDS, metrics=dict(FAIR),
         importances=[("Webbed_Feet", 0.35), ("Long_Beak", 0.2), ("Water_Background", 0.02)],
         train_groups=groups("Waterbird", "Water_Background", 3500, 3400), max_images=5000, shortcuts=[],
         wanted={}, images=(0, 0)),
    dict(name="celeba Attractive / Pale_Skin", dataset="celeba", target="Attractive", protected="Pale_Skin",
         attributes=[a for a in CELEBA if a != "Attractive"],
         metrics=biased(0.58, -0.27, -0.22, 0.57, "Attractive=1, Pale_Skin=0"),
         importances=[("Pale_Skin", 0.24), ("Young", 0.22), ("Heavy_Makeup", 0.18), ("Bags_Under_Eyes", -0.1)],
         train_groups={"Attractive=1, Pale_Skin=1": 2300, "Attractive=1, Pale_Skin=0": 700,
                       "Attractive=0, Pale_Skin=0": 2600, "Attractive=0, Pale_Skin=1": 400}, max_images=3000,
         shortcuts=["Pale_Skin"], wanted={1: {"Pale_Skin": 0}, 0: {"Pale_Skin": 1}}, images=(800, 3000)),
]

"""Weakness finding and reinforcement (seed 001, LANCE): what a classifier is weak at, found without
being told the bias.

``captions`` → ``perturb`` (edits along LANCE's factors, checked) → ``find`` (counterfactuals of
validation sources, ΔAcc and flip rate with paired bootstrap CIs, ranked) → ``reinforce``
(counterfactuals of the weak edits from training sources, a fine-tune, scored on test sources).
:func:`discover` is the Python API of ``fairloop weaknesses``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairloop.errors import ConfigError
from fairloop.weakness.find import Weakness, WeaknessReport, find_weaknesses, split_sources
from fairloop.weakness.perturb import Edit, Perturbation, check_edit, perturb_all

PERTURBERS = ("all", "llm")


def supported_attributes(generator, attributes: list[str]) -> set[str]:
    """What the generator can draw: SynthFaces' attributes for its own backends, any for ``sd``."""
    from fairloop.data.synthfaces import ATTRIBUTES

    return set(attributes) if generator.name == "sd" else set(attributes) & set(ATTRIBUTES)


def discover(classifier, dataset, generator, *, target: str, out_dir: Path, perturber=None, captions_from: str = "table",
             captioner=None, oracle=None, n_captions: int = 200, per_edit: int = 40, split: str = "val",
             image_size: int = 64, seed: int = 0, max_edits: int | None = None, progress=None) -> WeaknessReport:
    """The weakness report of ``classifier`` for ``target``: ``n_captions`` images of ``split``
    captioned (``captions_from``: table, oracle or blip with ``captioner``), perturbed (``perturber``:
    an :class:`~fairloop.weakness.perturb.LLMPerturber`, or None for every single-attribute edit),
    and every kept edit scored on up to ``per_edit`` sources of ``split``. ``oracle`` (the attribute
    oracle) reads captions and, for a generator that is not exact, checks every pair."""
    from fairloop.weakness.captions import caption_values, oracle_values, table_values
    from fairloop.weakness.perturb import caption_of

    supported = supported_attributes(generator, dataset.attributes)
    vocabulary = [a for a in dataset.attributes if a in supported or a == target]
    ids = [str(i) for i in dataset.split(split).table.index]
    rng = np.random.default_rng(seed)
    ids = list(rng.permutation(ids)[:n_captions])
    if captions_from in ("table", "oracle"):
        if captions_from == "oracle" and oracle is None:
            raise ConfigError("captions from the attribute oracle need the oracle",
                              "use --captions table, or a SynthFaces-like dataset the packaged oracle reads")
        values = (table_values(dataset, ids, vocabulary) if captions_from == "table"
                  else oracle_values(oracle, dataset, ids, target))
        captioned = [(caption_of(v, vocabulary), v) for v in values]
    elif captions_from == "blip":
        if captioner is None:
            raise ConfigError("captions from BLIP need a captioning model", "pass --captioner FOLDER")
        texts = captioner.captions([str(p) for p in dataset.table.loc[ids, "path"]])
        captioned = list(zip(texts, caption_values(texts, vocabulary, dataset.table.loc[ids, target].to_numpy(), target)))
    else:
        raise ConfigError(f"unknown caption source {captions_from!r}", "use --captions table, oracle or blip")
    if perturber is None:
        perturbation = perturb_all(captioned, target=target, vocabulary=vocabulary, supported=supported)
    else:
        perturbation = perturber.perturb(captioned, target=target, vocabulary=vocabulary, supported=supported,
                                         seed=seed, progress=progress)
    return find_weaknesses(classifier, dataset, generator, perturbation, target=target, out_dir=out_dir, split=split,
                           per_edit=per_edit, image_size=image_size, oracle=oracle, seed=seed, max_edits=max_edits,
                           progress=progress, caption_source=captions_from)


__all__ = ["PERTURBERS", "Edit", "Perturbation", "Weakness", "WeaknessReport", "check_edit", "discover",
           "find_weaknesses", "perturb_all", "split_sources", "supported_attributes"]

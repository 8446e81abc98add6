"""What counterfactual edits start from, so that the images look like the group they fill.

An edit keeps everything about its source that its prompt does not name. That is what makes it a
counterfactual, but it also carries the *source* group's other attributes into the group the images
fill. In SynthFaces 75 % of men without gray hair are young and only 20 % of gray-haired men are, so
"a man without gray hair" made from gray-haired men is mostly old, and the classifier keeps a proxy
of the shortcut (young ⇒ woman) that the test split punishes.

:func:`plan_sources` therefore matches the strongest such proxy to the real members of the filled
group in the training split. It matches by **selection** first: that share of the images start
from sources that already have the proxy's value (each such source serves up to ``MAX_REUSE``
images, with its own seed each). Only what selection cannot cover is matched by **editing** the
proxy as well, named in the prompt ("…, who is young"): an edit that changes two attributes is
twice as hard for a diffusion model (in the loop, 46–52 % of them passed the oracle check against
83–86 % of one-attribute edits). An attribute that never varies in one of the two groups is fixed
by the edit itself (hair colours exclude each other), not a proxy, and the protected attribute is
never one (its rate in the training split is the bias itself). With fewer than ``MIN_GROUP`` real
members, or no attribute apart by ``MIN_GAP``, sources are drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairloop.tools.prompt_parser import attribute_phrase, parse_prompt

#: Real members of the filled group needed to estimate its attribute rates.
MIN_GROUP = 30
#: Smallest rate difference between the filled group and the sources that counts as a proxy.
MIN_GAP = 0.15
#: An attribute whose rate is within this of 0 or 1 in either group does not vary there.
MIN_VARIATION = 0.02
#: How many images of a proxy-matched plan one source with the proxy's value may start.
MAX_REUSE = 3


@dataclass(frozen=True)
class SourceBatch:
    """One generator request: a prompt and the ``n`` images it edits (none: text-to-image)."""

    prompt: str
    n: int
    source_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxyMatch:
    """How a plan's sources were matched to the group they fill on one proxy attribute."""

    attribute: str
    value: int            # the value the matched images get
    group_rate: float     # share with the attribute among real members of the filled group
    source_rate: float    # the same among the sources the edit could start from
    selected: int         # images that start from a source with ``value``
    changed: int          # images that get ``value`` by the edit as well
    n: int

    def note(self, description: str) -> str:
        return (f"{self.attribute} travels with the edit of '{description}': {self.group_rate:.0%} of the real "
                f"group have it, {self.source_rate:.0%} of the sources; {self.selected} of {self.n} images start "
                f"from sources with {self.attribute}={self.value}, {self.changed} more get it by the edit")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"attribute": self.attribute, "value": self.value, "group_rate": round(self.group_rate, 4),
                "source_rate": round(self.source_rate, 4), "selected": self.selected, "changed": self.changed,
                "n": self.n}


def plan_sources(table: pd.DataFrame, *, target: str, label: int, description: str, n: int,
                 vocabulary: list[str], rng: np.random.Generator, protected: str | None = None,
                 match_proxy: bool = True) -> tuple[list[SourceBatch], ProxyMatch | None]:
    """Source images for ``n`` edits of class ``label`` towards ``description``, as generator batches.

    Sources are rows of the class that the edit really changes; ``n`` beyond their number cycles
    through them. The ``protected`` attribute is never matched: the training split's rate of it is
    the bias, and what the images show of it is the analyzer's decision. ``match_proxy`` False
    draws the sources at random among them. The second result says which proxy was matched, if any."""
    edits = parse_prompt(description, vocabulary).edits
    pool = table[table[target] == label]
    changes = {a: v for a, v in edits.items() if a != target and a in pool.columns}
    sources = pool
    if changes:
        differs = (pool[list(changes)] != pd.Series(changes)).any(axis=1)
        sources = pool[differs] if differs.any() else pool
    if n <= 0 or sources.empty:
        return [SourceBatch(description, max(n, 0))], None
    if not match_proxy:
        return [SourceBatch(description, n, _draw(sources.index, n, rng))], None
    group = pool[(pool[list(changes)] == pd.Series(changes)).all(axis=1)] if changes else pool.iloc[:0]
    candidates = [a for a in vocabulary if a in table.columns and a not in (target, protected) and a not in edits]
    proxy = _strongest_proxy(group, sources, candidates)
    if proxy is not None:
        name, value = proxy
        variant = f"{description}, {attribute_phrase(name, bool(value))}"
        if parse_prompt(variant, vocabulary).edits != {**edits, name: value}:
            proxy = None  # the phrase would not say what it means: keep the plan as it is
    if proxy is None:
        return [SourceBatch(description, n, _draw(sources.index, n, rng))], None

    has_value = sources[name] == value
    group_rate = float(group[name].mean())
    wanted = round((group_rate if value else 1 - group_rate) * n)
    selected = _draw(sources.index[has_value], min(wanted, MAX_REUSE * int(has_value.sum())), rng)
    changed = wanted - len(selected)
    others = _draw(sources.index[~has_value], n - len(selected), rng)
    match = ProxyMatch(name, value, group_rate, float(sources[name].mean()), len(selected), changed, n)
    batches = [SourceBatch(description, n - changed, selected + others[changed:]),
               SourceBatch(variant, changed, others[:changed])]
    return [b for b in batches if b.n], match


def _draw(index: pd.Index, n: int, rng: np.random.Generator) -> tuple[str, ...]:
    """``n`` ids from ``index``: without repeats while it lasts, then cycling through it again."""
    if n <= 0 or index.empty:
        return ()
    return tuple(np.resize(rng.permutation(index.to_numpy()), n))


def _strongest_proxy(group: pd.DataFrame, sources: pd.DataFrame, candidates: list[str]) -> tuple[str, int] | None:
    """The attribute whose rate in ``group`` (real members of the filled group) is furthest from its
    rate among the ``sources``, with the value the images need more of, when it varies in both and
    is ``MIN_GAP`` apart; ``None`` when none is, or the group is too small to tell."""
    if len(group) < MIN_GROUP:
        return None
    best = None
    for name in candidates:
        group_rate, source_rate = float(group[name].mean()), float(sources[name].mean())
        if min(group_rate, 1 - group_rate, source_rate, 1 - source_rate) < MIN_VARIATION:
            continue
        gap = group_rate - source_rate
        if abs(gap) >= MIN_GAP and (best is None or abs(gap) > abs(best[1])):
            best = (name, gap)
    return None if best is None else (best[0], int(best[1] > 0))


@dataclass(frozen=True)
class CausalMatch:
    """How a plan's sources became counterfactuals through a causal model (:func:`plan_scm_sources`)."""

    intervention: dict[str, int]
    changed: dict[str, float]   # share of the images in which each other attribute changed with it
    prompts: int                # distinct edit prompts the changes needed
    unreadable: int             # images whose changes no prompt could say: made from the plan's text alone
    mechanisms: str
    n: int

    def note(self, description: str) -> str:
        moved = ", ".join(f"{k} {v:.0%}" for k, v in sorted(self.changed.items(), key=lambda kv: -kv[1])[:5]) or "nothing"
        return (f"'{description}' by abduction–action–prediction ({self.mechanisms}): do("
                f"{', '.join(f'{k}={v}' for k, v in self.intervention.items())}) also changed {moved} of {self.n} "
                f"images; {self.prompts} edit prompts" + (f", {self.unreadable} images from the plan's text" if self.unreadable else ""))

    def as_dict(self) -> dict[str, object]:
        return {"matching": "scm", "intervention": self.intervention, "changed": self.changed, "prompts": self.prompts,
                "unreadable": self.unreadable, "mechanisms": self.mechanisms, "n": self.n}


def plan_scm_sources(table: pd.DataFrame, scm, *, target: str, label: int, description: str, n: int,
                     vocabulary: list[str], rng: np.random.Generator) -> tuple[list[SourceBatch], CausalMatch | None]:
    """Sources for ``n`` edits of class ``label`` towards ``description``, each its own counterfactual:
    the attributes the description names are intervened on (do), the class is held, and whatever
    they cause is recomputed for that person from the causal model ``scm``
    (:class:`~fairloop.scm.StructuralCausalModel`). Sources whose counterfactuals share their
    changes share one edit prompt that names every change. This replaces proxy matching: a
    descendant changes because its cause did, person by person, not to match a group rate."""
    from fairloop.agent.analyzer import target_noun

    edits = parse_prompt(description, vocabulary).edits
    do = {a: v for a, v in edits.items() if a != target and a in scm.attributes}
    pool = table[table[target] == label]
    sources = pool[(pool[list(do)] != pd.Series(do)).any(axis=1)] if do else pool
    if n <= 0 or sources.empty or not do:
        return [SourceBatch(description, max(n, 0), _draw(sources.index, n, rng))], None
    ids = _draw(sources.index, n, rng)
    rows = table.loc[list(ids)].reset_index(drop=True)
    cf = scm.counterfactual(rows, do, rng, hold=(target,))
    groups: dict[tuple[tuple[str, int], ...], list[str]] = {}
    for k, source_id in enumerate(ids):
        changes = tuple((a, int(cf.rows.at[k, a])) for a in scm.attributes if cf.changed.at[k, a])
        groups.setdefault(changes, []).append(source_id)
    batches, unreadable = [], 0
    plain: list[str] = []
    for changes, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        prompt = ", ".join([target_noun(target, label) + " " + attribute_phrase(*_first(changes)),
                            *(attribute_phrase(a, bool(v)) for a, v in changes[1:])])
        if parse_prompt(prompt, vocabulary).edits != {target: label, **dict(changes)}:
            plain += members  # the phrases would not say what they mean: the plan's own text
            continue
        batches.append(SourceBatch(prompt, len(members), tuple(members)))
    if plain:
        unreadable = len(plain)
        batches.append(SourceBatch(description, len(plain), tuple(plain)))
    match = CausalMatch(do, cf.downstream_rates(set(do)), len(batches), unreadable, scm.source, n)
    return batches, match


def _first(changes: tuple[tuple[str, int], ...]) -> tuple[str, bool]:
    name, value = changes[0]
    return name, bool(value)

"""What counterfactual edits start from, so that the images look like the group they fill.

An edit keeps everything about its source that its prompt does not name. That is what makes it a
counterfactual, but it also carries the *source* group's other attributes into the group the images
fill. In SynthFaces 75 % of men without gray hair are young and only 20 % of gray-haired men are, so
"a man without gray hair" made from gray-haired men is mostly old, and the classifier keeps a proxy
of the shortcut (young ⇒ woman) that the test split punishes.

:func:`plan_sources` therefore matches the strongest such proxy to the real members of the filled
group in the training split: it gives that share of the sources the proxy's other value as well,
named in their prompt ("…, who is young"). An attribute that never varies in one of the two groups
is fixed by the edit itself (hair colours exclude each other), not a proxy, and the protected
attribute is never one (its rate in the training split is the bias itself). With fewer than
``MIN_GROUP`` real members, or no attribute apart by ``MIN_GAP``, the plan is left as it is.
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
    value: int            # the value given to the changed sources
    group_rate: float     # share with the attribute among real members of the filled group
    source_rate: float    # the same among the chosen sources, before the change
    changed: int          # sources that also get ``value``
    n: int

    def note(self, description: str) -> str:
        return (f"{self.attribute} travels with the edit of '{description}': {self.group_rate:.0%} of the real "
                f"group have it, {self.source_rate:.0%} of the sources; {self.changed} of {self.n} images also "
                f"get {self.attribute}={self.value}")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"attribute": self.attribute, "value": self.value, "group_rate": round(self.group_rate, 4),
                "source_rate": round(self.source_rate, 4), "changed": self.changed, "n": self.n}


def plan_sources(table: pd.DataFrame, *, target: str, label: int, description: str, n: int,
                 vocabulary: list[str], rng: np.random.Generator,
                 protected: str | None = None) -> tuple[list[SourceBatch], ProxyMatch | None]:
    """Source images for ``n`` edits of class ``label`` towards ``description``, as generator batches.

    Sources are rows of the class that the edit really changes; ``n`` beyond their number cycles
    through them. The ``protected`` attribute is never matched: the training split's rate of it is
    the bias, and what the images show of it is the analyzer's decision. The second result says
    which proxy was matched, if any."""
    edits = parse_prompt(description, vocabulary).edits
    pool = table[table[target] == label]
    changes = {a: v for a, v in edits.items() if a != target and a in pool.columns}
    sources = pool
    if changes:
        differs = (pool[list(changes)] != pd.Series(changes)).any(axis=1)
        sources = pool[differs] if differs.any() else pool
    if n <= 0 or sources.empty:
        return [SourceBatch(description, max(n, 0))], None
    chosen = rng.choice(sources.index.to_numpy(), size=min(n, len(sources)), replace=False)
    ids = np.resize(chosen, n)
    group = pool[(pool[list(changes)] == pd.Series(changes)).all(axis=1)] if changes else pool.iloc[:0]
    candidates = [a for a in vocabulary if a in table.columns and a not in (target, protected) and a not in edits]
    proxy = _strongest_proxy(group, sources, table.loc[ids], candidates)
    if proxy is not None:
        variant = f"{description}, {attribute_phrase(proxy.attribute, bool(proxy.value))}"
        if parse_prompt(variant, vocabulary).edits != {**edits, proxy.attribute: proxy.value}:
            proxy = None  # the phrase would not say what it means: keep the plan as it is
    if proxy is None:
        return [SourceBatch(description, n, tuple(ids))], None
    values = table.loc[ids, proxy.attribute].to_numpy()
    movable = np.flatnonzero(values != proxy.value)
    change = np.zeros(n, bool)
    change[rng.choice(movable, size=proxy.changed, replace=False)] = True
    batches = [SourceBatch(description, int((~change).sum()), tuple(ids[~change])),
               SourceBatch(variant, int(change.sum()), tuple(ids[change]))]
    return [b for b in batches if b.n], proxy


def _strongest_proxy(group: pd.DataFrame, sources: pd.DataFrame, chosen: pd.DataFrame,
                     candidates: list[str]) -> ProxyMatch | None:
    """The attribute whose rate in ``group`` (real members of the filled group) is furthest from its
    rate among the ``chosen`` sources, when it varies in both the group and the ``sources`` it was
    chosen from; ``None`` when none is ``MIN_GAP`` apart or the group is too small to tell."""
    if len(group) < MIN_GROUP:
        return None
    best = None
    for name in candidates:
        group_rate, pool_rate = float(group[name].mean()), float(sources[name].mean())
        if min(group_rate, 1 - group_rate, pool_rate, 1 - pool_rate) < MIN_VARIATION:
            continue
        source_rate = float(chosen[name].mean())
        gap = group_rate - source_rate
        if abs(gap) >= MIN_GAP and (best is None or abs(gap) > abs(best[1])):
            best = (name, gap, group_rate, source_rate)
    if best is None:
        return None
    name, gap, group_rate, source_rate = best
    value = int(gap > 0)
    movable = int((chosen[name] != value).sum())
    changed = min(round(abs(gap) * len(chosen)), movable)
    if changed == 0:
        return None
    return ProxyMatch(name, value, group_rate, source_rate, changed, len(chosen))

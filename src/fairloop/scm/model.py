"""A structural causal model over binary face attributes, with explicit exogenous noise.

Every node is ``value = f(parents, U)`` with ``U ~ Uniform(0, 1)`` and ``f`` the inverse CDF of a
conditional probability table: a binary attribute is 1 when ``U < P(1 | parents)``; a group of
attributes of which exactly one holds (SynthFaces' hair states) takes the state whose cumulative
probability interval holds ``U``. That makes Pearl's three steps exact and cheap:

* **abduction** — ``U`` given what a person shows is uniform on the interval of their value;
* **action** — do(X := x) replaces X's mechanism (on a group, do(state := 1) picks the state, and
  do(state := 0) leaves everyone without it as they are and redraws, for those with it, one of the
  other states in proportion to its probability given the parents);
* **prediction** — descendants are recomputed in causal order from the new parents and the same ``U``.

So a counterfactual keeps everything the intervention does not cause to change, and a cause's
change moves its effects the way the mechanism says (removing gray hair makes 69 % of old SynthFaces
people young, since ``P(Young) = 0.2`` with gray hair and 0.75 without).

Mechanisms are either SynthFaces' true ones (:meth:`StructuralCausalModel.synthfaces`, nothing
fitted) or conditional probability tables counted on a table over any graph (:meth:`fit`, with
add-one smoothing towards the variable's overall rate).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairloop.errors import ConfigError
from fairloop.scm.graph import CausalGraph

#: Pseudo-counts pulling a sparse cell of a fitted table towards the variable's overall rate.
SMOOTHING = 2.0
#: Most causes a fitted variable may have: its table has 2 ** causes cells, and sparse cells fall
#: back to the variable's overall rate through the smoothing.
MAX_PARENTS = 12


@dataclass(frozen=True)
class Node:
    """One mechanism: ``states`` (one attribute, or a group of which exactly one is 1), its
    ``parents`` and ``table``: parents' values → probabilities over outcomes. Outcomes of a binary
    node are (1, 0), so ``U < P(1)`` means 1; a group's are its states in order."""

    name: str
    states: tuple[str, ...]
    parents: tuple[str, ...]
    table: Mapping[tuple[int, ...], np.ndarray]

    @property
    def is_group(self) -> bool:
        return len(self.states) > 1

    def probabilities(self, values: pd.DataFrame) -> np.ndarray:
        """(rows, outcomes) probabilities given the parents' values in ``values``."""
        keys = values[list(self.parents)].to_numpy(dtype=np.int64) if self.parents else np.zeros((len(values), 0), int)
        out = np.empty((len(values), len(self._outcomes())))
        for key in {tuple(k) for k in keys.tolist()}:
            mask = (keys == np.asarray(key, dtype=np.int64)).all(axis=1) if key else np.ones(len(values), bool)
            out[mask] = self.table[key]
        return out

    def outcome(self, values: pd.DataFrame) -> np.ndarray:
        """The outcome index each row shows (binary: 0 when the attribute is 1, as outcomes are (1, 0))."""
        if self.is_group:
            return values[list(self.states)].to_numpy().argmax(axis=1)
        return 1 - values[self.states[0]].to_numpy(dtype=np.int64)

    def write(self, values: pd.DataFrame, outcome: np.ndarray) -> None:
        if self.is_group:
            for j, state in enumerate(self.states):
                values[state] = (outcome == j).astype(np.int8)
        else:
            values[self.states[0]] = (outcome == 0).astype(np.int8)

    def _outcomes(self) -> tuple[str, ...]:
        return self.states if self.is_group else (self.states[0], "not " + self.states[0])


def _outcome_at(probs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The inverse-CDF outcome of each row's noise."""
    return (probs.cumsum(axis=1) <= noise[:, None]).sum(axis=1).clip(max=probs.shape[1] - 1)


@dataclass(frozen=True)
class Counterfactual:
    """Counterfactual rows and what the intervention changed beyond itself."""

    rows: pd.DataFrame        # the counterfactual attribute rows (same index as the sources)
    changed: pd.DataFrame     # bool, True where a value differs from the source's

    def downstream_rates(self, intervened: set[str]) -> dict[str, float]:
        """Share of rows in which each variable other than the intervened ones changed."""
        rates = self.changed.drop(columns=[c for c in self.changed.columns if c in intervened]).mean()
        return {k: round(float(v), 4) for k, v in rates.items() if v > 0}


class StructuralCausalModel:
    """Nodes in causal order. Build with :meth:`synthfaces` or :meth:`fit`."""

    def __init__(self, nodes: list[Node], *, source: str) -> None:
        self.nodes = nodes
        self.source = source   # "SynthFaces' true mechanisms" or what the tables were counted on
        self._node_of = {state: node for node in nodes for state in node.states}

    @property
    def attributes(self) -> list[str]:
        return [s for node in self.nodes for s in node.states]

    @property
    def graph(self) -> CausalGraph:
        return CausalGraph.of(self.attributes, [(p, s) for node in self.nodes for s in node.states for p in node.parents])

    # -------------------------------------------------------------------------------- building
    @classmethod
    def synthfaces(cls) -> StructuralCausalModel:
        """SynthFaces' own sampler as an SCM: its true graph and exact mechanisms, nothing fitted."""
        from fairloop.data.synthfaces import HAIR_STATES, PARENTS, attribute_probability, hair_probabilities

        nodes = []
        for name, parents in PARENTS.items():
            if name in HAIR_STATES[1:]:
                continue
            if name in HAIR_STATES:
                table = {(m,): hair_probabilities(np.array([m]))[0] for m in (0, 1)}
                nodes.append(Node("hair", HAIR_STATES, parents, table))
                continue
            table = {}
            for key in itertools.product((0, 1), repeat=len(parents)):
                p = float(np.asarray(attribute_probability(name, {k: np.array([v]) for k, v in zip(parents, key)})).ravel()[0])
                table[key] = np.array([p, 1 - p])
            nodes.append(Node(name, (name,), parents, table))
        return cls(nodes, source="SynthFaces' true mechanisms (nothing fitted)")

    @classmethod
    def fit(cls, table: pd.DataFrame, graph: CausalGraph, *, groups: tuple[tuple[str, ...], ...] = (),
            source: str = "") -> StructuralCausalModel:
        """Conditional probability tables counted on ``table`` over ``graph``'s attribute variables
        (variables that are not columns of ``table`` — an LLM's free variables — are left out, and
        so are their edges). ``groups`` are attributes of which every row has exactly one (a group
        gets the union of its members' parents); the graph must be acyclic."""
        columns = [v for v in graph.variables if v in table.columns]
        graph = graph.restricted(columns)
        groups = tuple(g for g in groups if all(s in columns for s in g) and (table[list(g)].sum(axis=1) == 1).all())
        grouped = {s: g for g in groups for s in g}
        try:
            order = collapse_groups(graph, grouped).topological_order()
        except ValueError as error:
            raise ConfigError(f"cannot fit a causal model: {error}", "give an acyclic graph") from None
        crowded = [v for v in columns if len(graph.parents(v)) > MAX_PARENTS]
        if crowded:
            raise ConfigError(f"{crowded[0]} has {len(graph.parents(crowded[0]))} causes in the graph; a table over "
                              f"more than {MAX_PARENTS} cannot be counted reliably", "give it fewer causes")
        nodes = []
        data = table[columns].astype(np.int64)
        for name in order:
            states = grouped.get(name, (name,))
            parents = tuple(dict.fromkeys(p for s in states for p in graph.parents(s) if p not in states))
            nodes.append(Node(" / ".join(states) if len(states) > 1 else name, states, parents,
                              _count_table(data, states, parents)))
        return cls(nodes, source=source or f"tables counted on {len(table):,} rows over the given graph")

    # ----------------------------------------------------------------------------- using it
    def sample(self, n: int, rng: np.random.Generator) -> pd.DataFrame:
        """``n`` rows drawn from the model (observational)."""
        values = pd.DataFrame(index=range(n), columns=self.attributes, dtype=np.int8)
        for node in self.nodes:
            node.write(values, _outcome_at(node.probabilities(values), rng.random(n)))
        return values.astype(np.int8)

    def abduct(self, rows: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Each node's noise drawn from its posterior given the rows: uniform on the interval of
        the outcome each row shows."""
        noise = {}
        for node in self.nodes:
            probs = node.probabilities(rows)
            cum = np.concatenate([np.zeros((len(rows), 1)), probs.cumsum(axis=1)], axis=1)
            k = node.outcome(rows)
            low, high = cum[np.arange(len(rows)), k], cum[np.arange(len(rows)), k + 1]
            noise[node.name] = low + (high - low) * rng.random(len(rows))
        return noise

    def counterfactual(self, rows: pd.DataFrame, do: Mapping[str, int], rng: np.random.Generator, *,
                       hold: tuple[str, ...] = ()) -> Counterfactual:
        """What each row would show under do(``do``): abduction, action, prediction. ``hold``
        keeps variables at their value whatever their causes do (the class a counterfactual must
        stay in)."""
        unknown = [a for a in [*do, *hold] if a not in self._node_of]
        if unknown:
            raise ConfigError(f"the causal model has no variable {unknown[0]!r}",
                              f"use one of {', '.join(self.attributes)}")
        missing = [a for a in self.attributes if a not in rows.columns]
        if missing:
            raise ConfigError(f"the rows lack the model's attribute {missing[0]!r}", "pass full attribute rows")
        source = rows[self.attributes].astype(np.int64)
        noise = self.abduct(source, rng)
        values = source.copy()
        for node in self.nodes:
            intervened = {s: int(v) for s, v in do.items() if s in node.states}
            if any(s in hold for s in node.states) and not intervened:
                continue
            probs = node.probabilities(values)
            if intervened:
                outcome = _outcome_at(_act(node, probs, intervened), noise[node.name])
                if node.is_group and not any(intervened.values()):
                    # do(state := 0) changes only those who had it: they draw among the other states
                    had = np.isin(node.outcome(source), [node.states.index(s) for s in intervened])
                    outcome = np.where(had, _outcome_at(_act(node, probs, intervened), rng.random(len(values))),
                                       node.outcome(source))
            else:  # only rows whose causes moved are recomputed (exact even where the source was improbable)
                moved = values[list(node.parents)].ne(source[list(node.parents)]).any(axis=1).to_numpy()
                outcome = np.where(moved, _outcome_at(probs, noise[node.name]), node.outcome(source))
            node.write(values, outcome)
        values = values.astype(np.int8)
        return Counterfactual(values, values.ne(source.astype(np.int8)))


def _act(node: Node, probs: np.ndarray, intervened: dict[str, int]) -> np.ndarray:
    """Probabilities after do(): a binary node or a group state set to 1 is certain; a group state
    set to 0 is removed and the others renormalised."""
    probs = probs.copy()
    if not node.is_group:
        value = next(iter(intervened.values()))
        probs[:] = (1.0, 0.0) if value else (0.0, 1.0)
        return probs
    ones = [s for s, v in intervened.items() if v]
    if ones:
        probs[:] = np.array([float(s == ones[0]) for s in node.states])
        return probs
    for s in intervened:
        probs[:, node.states.index(s)] = 0.0
    total = probs.sum(axis=1, keepdims=True)
    if (total == 0).any():
        raise ConfigError(f"do({', '.join(f'{s}=0' for s in intervened)}) leaves {node.name} no state",
                          "set one state to 1 instead")
    return probs / total


def collapse_groups(graph: CausalGraph, grouped: dict[str, tuple[str, ...]]) -> CausalGraph:
    """``graph`` with each group's states as one node (named by its first state): a group is one
    variable, so edges between its states vanish and a cycle through it becomes visible."""
    rep = {s: g[0] for s, g in grouped.items()}
    name = lambda v: rep.get(v, v)
    return CausalGraph.of([name(v) for v in graph.variables],
                          [(name(a), name(b)) for a, b in graph.edges if name(a) != name(b)])


def _count_table(data: pd.DataFrame, states: tuple[str, ...], parents: tuple[str, ...]) -> dict[tuple[int, ...], np.ndarray]:
    """Outcome probabilities per parent configuration, smoothed towards the overall rates (one
    bincount over the rows, whatever the number of configurations)."""
    if len(states) > 1:
        outcome = data[list(states)].to_numpy().argmax(axis=1)
        k = len(states)
    else:
        outcome = 1 - data[states[0]].to_numpy()
        k = 2
    overall = np.bincount(outcome, minlength=k) / max(len(outcome), 1)
    bits = data[list(parents)].to_numpy(dtype=np.int64) if parents else np.zeros((len(data), 0), np.int64)
    config = bits @ (1 << np.arange(len(parents) - 1, -1, -1, dtype=np.int64)) if parents else np.zeros(len(data), np.int64)
    counts = np.bincount(config * k + outcome, minlength=(2 ** len(parents)) * k).reshape(-1, k)
    table = (counts + SMOOTHING * overall) / (counts.sum(axis=1, keepdims=True) + SMOOTHING)
    return {key: table[j] for j, key in enumerate(itertools.product((0, 1), repeat=len(parents)))}

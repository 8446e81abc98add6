"""Causal graphs over named variables: cycles named, interventions, distances, drawings.

A graph an LLM writes is data to be checked, not trusted: seed 003's own example "DAG" has a
cycle (F → P, P → F). :meth:`CausalGraph.find_cycle` names one so the model can be told which edge
to drop, and everything downstream (topological order, abduction) runs only on acyclic graphs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Edge = tuple[str, str]


@dataclass(frozen=True)
class CausalGraph:
    """Variables and directed edges (cause, effect). Order is kept as given, duplicates dropped."""

    variables: tuple[str, ...]
    edges: tuple[Edge, ...]

    @classmethod
    def of(cls, variables: Iterable[str], edges: Iterable[Iterable[str]]) -> CausalGraph:
        """A graph from any iterables; variables named only by an edge are added after the others."""
        names = list(dict.fromkeys(variables))
        pairs: list[Edge] = []
        for edge in edges:
            cause, effect = tuple(edge)
            pairs.append((str(cause), str(effect)))
            names += [v for v in (cause, effect) if v not in names]
        return cls(tuple(names), tuple(dict.fromkeys(pairs)))

    def parents(self, name: str) -> tuple[str, ...]:
        return tuple(cause for cause, effect in self.edges if effect == name)

    def children(self, name: str) -> tuple[str, ...]:
        return tuple(effect for cause, effect in self.edges if cause == name)

    def find_cycle(self) -> list[str] | None:
        """One directed cycle as ``[a, b, …, a]`` (a self-loop is ``[a, a]``), or ``None``."""
        state: dict[str, int] = {}  # 1: on the current path, 2: finished
        path: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            path.append(node)
            for child in self.children(node):
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if child not in state and (found := visit(child)):
                    return found
            path.pop()
            state[node] = 2
            return None

        for node in self.variables:
            if node not in state and (found := visit(node)):
                return found
        return None

    def topological_order(self) -> list[str]:
        """Every variable after its causes (Kahn's algorithm, stable in the given order);
        ``ValueError`` naming a cycle when there is one."""
        cycle = self.find_cycle()
        if cycle:
            raise ValueError(f"the graph has a cycle: {' → '.join(cycle)}")
        indegree = {v: len(self.parents(v)) for v in self.variables}
        order: list[str] = []
        ready = [v for v in self.variables if indegree[v] == 0]
        while ready:
            node = ready.pop(0)
            order.append(node)
            for child in self.children(node):
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        return order

    def descendants(self, name: str) -> set[str]:
        """Everything ``name`` causes, directly or through others (not ``name`` itself)."""
        seen: set[str] = set()
        todo = list(self.children(name))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += self.children(node)
        seen.discard(name)
        return seen

    def intervened(self, names: Iterable[str]) -> CausalGraph:
        """The graph after do(names): every edge into an intervened variable removed."""
        cut = set(names)
        return CausalGraph(self.variables, tuple(e for e in self.edges if e[1] not in cut))

    def restricted(self, names: Iterable[str]) -> CausalGraph:
        """The subgraph over ``names`` (the order of this graph's variables kept)."""
        keep = set(names)
        return CausalGraph(tuple(v for v in self.variables if v in keep),
                           tuple(e for e in self.edges if e[0] in keep and e[1] in keep))

    def as_dict(self) -> dict[str, list]:
        return {"variables": list(self.variables), "edges": [list(e) for e in self.edges]}

    def to_dot(self, highlight: Iterable[str] = ()) -> str:
        """Graphviz DOT text; ``highlight`` (the intervened variables) drawn as boxes."""
        marked = set(highlight)
        lines = ["digraph scm {", "  rankdir=LR;"]
        for v in self.variables:
            lines.append(f'  "{v}"' + (" [shape=box, style=bold]" if v in marked else "") + ";")
        lines += [f'  "{a}" -> "{b}";' for a, b in self.edges]
        return "\n".join(lines + ["}"])

    def draw(self, path, *, highlight: Iterable[str] = (), title: str = "") -> None:
        """A PNG of :meth:`figure` at ``path``, written atomically."""
        import matplotlib.pyplot as plt

        from fairloop.io import atomic_write

        fig = self.figure(highlight=highlight, title=title)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    def figure(self, *, highlight: Iterable[str] = (), title: str = ""):
        """A matplotlib figure of the graph: variables in columns by causal depth, intervened ones
        boxed (no Graphviz binary needed); a cyclic graph is drawn in the given order."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        depth = _depths(self)
        columns: dict[int, list[str]] = {}
        for v in self.variables:
            columns.setdefault(depth[v], []).append(v)
        xy = {v: (d, -row + (len(vs) - 1) / 2) for d, vs in columns.items() for row, v in enumerate(vs)}
        height = max((len(vs) for vs in columns.values()), default=1)
        fig, ax = plt.subplots(figsize=(2.6 * max(len(columns), 1) + 1, 0.55 * height + 1.2))
        marked = set(highlight)
        for a, b in self.edges:  # an edge that skips a column bends, so it never reads as passing through a node
            bend = 0.3 if abs(depth[b] - depth[a]) != 1 else 0.0
            ax.annotate("", xy=xy[b], xytext=xy[a], arrowprops={"arrowstyle": "-|>", "color": "#555", "shrinkA": 28,
                                                                 "shrinkB": 28, "lw": 1,
                                                                 "connectionstyle": f"arc3,rad={bend}"})
        for v, (x, y) in xy.items():
            ax.text(x, y, v, ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "square" if v in marked else "round", "fc": "#fde2c8" if v in marked else "#e8eef7",
                          "ec": "#333" if v in marked else "#8aa", "lw": 1.5 if v in marked else 0.8})
        ax.set_xlim(-0.6, max(len(columns) - 1, 0) + 0.6)
        ax.set_ylim(-height / 2 - 0.3, height / 2 + 0.3)
        ax.axis("off")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return fig


def _depths(graph: CausalGraph) -> dict[str, int]:
    """Longest path from a root to each variable (0 for roots); cyclic graphs use the given order."""
    try:
        order = graph.topological_order()
    except ValueError:
        return {v: 0 for v in graph.variables}
    depth: dict[str, int] = {}
    for v in order:
        depth[v] = max((depth[p] + 1 for p in graph.parents(v)), default=0)
    return depth


def structural_hamming_distance(found: CausalGraph, truth: CausalGraph) -> int:
    """Edge additions, deletions and reversals that turn ``found`` into ``truth`` over the
    variables of both (a reversed edge counts once, as usual)."""
    a, b = set(found.edges), set(truth.edges)
    reversed_ = {(x, y) for x, y in a - b if (y, x) in b}
    missing = {(x, y) for x, y in b - a if (y, x) not in a}
    extra = a - b - reversed_
    return len(extra) + len(missing) + len(reversed_)

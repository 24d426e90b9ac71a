"""The dependency graph of one session: which variable depends on which, kept acyclic,
with transitive queries and the topological order that change propagation follows.

Pure data over variable ids; the store names them in messages, and its synchronous
methods on one loop make each change atomic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEPENDENCY_TYPES = ("data", "constraint", "optimization")


@dataclass(frozen=True, slots=True)
class Edge:
    """``dependent`` depends on ``dependency``.

    >>> Edge("var_eff_3", "var_base_1").type
    'data'
    """

    dependent: str
    dependency: str
    type: str = "data"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # What the store accounts for this edge in its session's memory budget.
    size: int = field(default=0, compare=False)


class CycleError(ValueError):
    """Adding an edge would close a cycle; ``path`` is the cycle as ids, first == last.

    >>> graph = DependencyGraph()
    >>> graph.add(Edge("b", "a"))
    True
    >>> graph.add(Edge("a", "b"))
    Traceback (most recent call last):
    ...
    dspex_rx.core.graph.CycleError: a -> b -> a
    """

    def __init__(self, path: list[str]) -> None:
        super().__init__(" -> ".join(path))
        self.path = path


class DependencyGraph:
    """Edges both ways (what a variable depends on, what depends on it), always acyclic.

    >>> graph = DependencyGraph()
    >>> graph.add(Edge("c", "b")), graph.add(Edge("b", "a"))
    (True, True)
    >>> [(node, depth) for node, depth, _ in graph.dependencies("c", transitive=True)]
    [('b', 1), ('a', 2)]
    >>> graph.downstream(["a"]), graph.path("c", "a")
    (['b', 'c'], ['c', 'b', 'a'])
    """

    def __init__(self) -> None:
        self._out: dict[str, dict[str, Edge]] = {}  # dependent -> dependency -> edge
        self._in: dict[str, dict[str, Edge]] = {}  # dependency -> dependent -> edge
        self._count = 0
        self.bytes = 0  # the sum of the edges' ``size``

    def __len__(self) -> int:
        return self._count

    def copy(self) -> DependencyGraph:
        """An independent graph with the same edges (to try changes on before making them).

        Example: ``graph.copy().add(Edge("x", "y"))`` leaves ``graph`` unchanged.
        """
        clone = DependencyGraph()
        clone._out = {node: dict(edges) for node, edges in self._out.items()}
        clone._in = {node: dict(edges) for node, edges in self._in.items()}
        clone._count, clone.bytes = self._count, self.bytes
        return clone

    def edges(self) -> list[Edge]:
        """Every edge.

        Example: ``len(graph.edges())`` equals ``len(graph)``.
        """
        return [edge for edges in self._out.values() for edge in edges.values()]

    def edge(self, dependent: str, dependency: str) -> Edge | None:
        """The edge ``dependent -> dependency``, or None.

        Example: ``graph.edge("b", "a")`` is the ``Edge`` added for b -> a, else None.
        """
        return self._out.get(dependent, {}).get(dependency)

    def path(self, start: str, goal: str) -> list[str] | None:
        """A chain ``start -> ... -> goal`` along "depends on" edges, or None.

        Example: ``graph.path("c", "a")`` is ``["c", "b", "a"]`` when c -> b -> a.
        """
        if start == goal:
            return [start]
        parents: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in self._out.get(node, {}):
                if nxt in parents:
                    continue
                parents[nxt] = node
                if nxt == goal:
                    chain = [goal]
                    while chain[-1] != start:
                        chain.append(parents[chain[-1]])
                    return chain[::-1]
                queue.append(nxt)
        return None

    def add(self, edge: Edge) -> bool:
        """Add an edge (replacing type/metadata of an existing one); returns False if it
        was already there unchanged. Raises ``CycleError`` if it would close a cycle.

        Example: ``graph.add(Edge("b", "a", "data"))`` is True the first time, then False.
        """
        existing = self._out.get(edge.dependent, {}).get(edge.dependency)
        if existing == edge:
            return False
        if existing is None:
            back = self.path(edge.dependency, edge.dependent)
            if back is not None:
                raise CycleError([edge.dependent, *back])
            self._count += 1
        else:
            self.bytes -= existing.size
        self.bytes += edge.size
        self._out.setdefault(edge.dependent, {})[edge.dependency] = edge
        self._in.setdefault(edge.dependency, {})[edge.dependent] = edge
        return True

    def remove(self, dependent: str, dependency: str) -> bool:
        """Remove an edge; returns whether it existed.

        Example: ``graph.remove("b", "a")`` is True if b -> a was there.
        """
        edge = self._out.get(dependent, {}).pop(dependency, None)
        if edge is None:
            return False
        self._count -= 1
        self.bytes -= edge.size
        self._in[dependency].pop(dependent, None)
        self._prune(dependent)
        self._prune(dependency)
        return True

    def drop(self, node: str) -> None:
        """Remove a node and every edge touching it.

        Example: ``graph.drop("var_a_1")`` removes that node's edges, both ways.
        """
        for dependency in list(self._out.get(node, {})):
            self.remove(node, dependency)
        for dependent in list(self._in.get(node, {})):
            self.remove(dependent, node)

    def _prune(self, node: str) -> None:
        if not self._out.get(node):
            self._out.pop(node, None)
        if not self._in.get(node):
            self._in.pop(node, None)

    def _walk(
        self, node: str, step: Callable[[str], Mapping[str, Edge]], transitive: bool
    ) -> list[tuple[str, int, Edge]]:
        seen = {node}
        found: list[tuple[str, int, Edge]] = []
        frontier = [node]
        depth = 0
        while frontier:
            depth += 1
            nxt = []
            for current in frontier:
                for other, edge in step(current).items():
                    if other not in seen:
                        seen.add(other)
                        found.append((other, depth, edge))
                        nxt.append(other)
            if not transitive:
                break
            frontier = nxt
        return found

    def dependencies(self, node: str, transitive: bool = False) -> list[tuple[str, int, Edge]]:
        """What ``node`` depends on: (id, depth, edge that reached it), breadth first.

        Example: ``[dep for dep, _, _ in graph.dependencies("c", transitive=True)]`` is
        ``["b", "a"]`` when c -> b -> a.
        """
        return self._walk(node, lambda n: self._out.get(n, {}), transitive)

    def dependents(self, node: str, transitive: bool = False) -> list[tuple[str, int, Edge]]:
        """What depends on ``node``: (id, depth, edge that reached it), breadth first.

        Example: ``[d for d, _, _ in graph.dependents("a")]`` is ``["b"]`` when c -> b -> a.
        """
        return self._walk(node, lambda n: self._in.get(n, {}), transitive)

    def downstream(self, changed: Iterable[str]) -> list[str]:
        """Every variable that transitively depends on any of ``changed`` (not those
        themselves), in topological order: each after everything it depends on.

        Example: ``graph.downstream(["a"])`` is ``["b", "c"]`` when c -> b -> a.
        """
        roots = set(changed)
        reach: set[str] = set()
        stack = list(roots)
        while stack:
            for dependent in self._in.get(stack.pop(), {}):
                if dependent not in reach:
                    reach.add(dependent)
                    stack.append(dependent)
        # Kahn's algorithm on the reached subgraph: a node is ready once every one of its
        # dependencies inside that subgraph has been placed.
        remaining = {n: sum(1 for dep in self._out.get(n, {}) if dep in reach) for n in reach}
        queue = deque(sorted(n for n, count in remaining.items() if count == 0))
        order: list[str] = []
        while queue:
            node = queue.popleft()
            order.append(node)
            for dependent in sorted(self._in.get(node, {})):
                if dependent in remaining:
                    remaining[dependent] -= 1
                    if remaining[dependent] == 0:
                        queue.append(dependent)
        return [n for n in order if n not in roots]

    def downstream_with_sources(
        self, changed: Iterable[str], max_sources: int | None = None
    ) -> list[tuple[str, list[str], bool]]:
        """``downstream(changed)`` with, for each node, the changed variables it depends on
        (transitively), in the order given, and whether that list was cut short: with
        ``max_sources``, only the first ``max_sources`` are kept (so a batch of thousands
        feeding a long chain costs thousands of names per node, not per pair).

        >>> graph = DependencyGraph()
        >>> graph.add(Edge("c", "b")), graph.add(Edge("b", "a"))
        (True, True)
        >>> graph.downstream_with_sources(["a", "x"])
        [('b', ['a'], False), ('c', ['a'], False)]
        """

        roots = list(dict.fromkeys(changed))
        order = self.downstream(roots)
        rank = {root: i for i, root in enumerate(roots)}
        cap = max_sources if max_sources is not None else len(roots)
        # Per node: its sources with the lowest ranks (exactly the first ``cap`` of the
        # full set: any of those is also among the first ``cap`` of the dependency it
        # came through), and whether the full set was larger.
        sources: dict[str, tuple[list[str], bool]] = {root: ([root], False) for root in roots}
        for node in order:  # topological: every dependency's sources are known already
            found: set[str] = set()
            cut = False
            for dependency in self._out.get(node, {}):
                known, truncated = sources.get(dependency, ((), False))
                found.update(known)
                cut = cut or truncated
            found.discard(node)
            ranked = sorted(found, key=rank.__getitem__)
            sources[node] = (ranked[:cap], cut or len(ranked) > cap)
        return [(node, *sources[node]) for node in order]

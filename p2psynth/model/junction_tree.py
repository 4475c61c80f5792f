"""Junction tree over the attributes of a domain, built from the measured cliques.

Exact inference in a graphical model whose factors are the measured attribute
sets needs a chordal cover of their interaction graph: every measured clique
must fit inside one node of a tree of cliques that has the running
intersection property. The steps are the textbook ones (Koller and Friedman,
"Probabilistic Graphical Models", 2009, chapters 9 and 10):

1. Interaction graph: one vertex per domain attribute, an edge between two
   attributes that appear together in some measured clique.
2. Greedy variable elimination. Three cost functions are tried (min-fill,
   weighted min-fill and min-weight, where weights are numbers of cells) and
   the order whose largest clique has the fewest cells wins, then the fewest
   cells in total. No single heuristic wins on every graph, and each run costs
   microseconds next to one message-passing pass. Ties inside a heuristic go to
   the attribute that comes first in the domain, so the tree is a function of
   the domain and the set of measured cliques alone.
3. Maximal cliques of the triangulated graph, sorted by their attribute
   positions in the domain.
4. A maximum spanning tree of the clique graph weighted by separator size
   (Kruskal, ties to the smaller clique indices). For a chordal graph every such
   tree has the running intersection property. Cliques with nothing in common
   are joined through empty separators, so the result is always one tree.

Exact inference costs memory and time in proportion to the number of cells of
the cliques, and triangulating a graph with cycles can create cliques far
larger than any measured one. ``build_junction_tree`` therefore rejects a tree
whose largest clique or total working memory exceeds the caller's caps, and
the error lists the offending cliques.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from p2psynth.domain import Domain
from p2psynth.errors import ModelError

logger = logging.getLogger(__name__)

# Float64 arrays of the size of all cliques that estimation keeps at once:
# clique log-potentials, upward accumulators and calibrated marginals, plus
# temporaries of the largest clique. Used only to estimate memory before fitting.
_FULL_COPIES = 3
_LARGEST_CLIQUE_COPIES = 4
_BYTES_PER_CELL = 8


@dataclass(frozen=True)
class JunctionTree:
    """Cliques of a triangulated attribute graph, arranged as a rooted tree.

    Attributes inside every clique and separator are in domain order, so a
    separator's axes are a subsequence of its clique's axes. ``order`` lists
    clique indices so that each parent comes before its children; its first
    entry is the root, whose parent is -1.
    """

    domain: Domain
    cliques: tuple[tuple[str, ...], ...]
    parents: tuple[int, ...]
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        self._validate()

    @property
    def root(self) -> int:
        return self.order[0]

    def children(self, clique: int) -> tuple[int, ...]:
        return tuple(c for c in self.order if self.parents[c] == clique)

    def separator(self, clique: int) -> tuple[str, ...]:
        """Return the attributes that ``clique`` shares with its parent (empty for the root)."""
        parent = self.parents[clique]
        if parent < 0:
            return ()
        shared = set(self.cliques[parent])
        return tuple(a for a in self.cliques[clique] if a in shared)

    def shape(self, clique: int) -> tuple[int, ...]:
        return self.domain.shape(self.cliques[clique])

    def cells(self, clique: int) -> int:
        return math.prod(self.shape(clique))

    def total_cells(self) -> int:
        return sum(self.cells(c) for c in range(len(self.cliques)))

    def containing(self, attributes: Iterable[str]) -> int | None:
        """Return the smallest clique (fewest cells) that contains all ``attributes``, or None."""
        wanted = set(attributes)
        best: int | None = None
        for index, clique in enumerate(self.cliques):
            if wanted <= set(clique) and (best is None or self.cells(index) < self.cells(best)):
                best = index
        return best

    def _validate(self) -> None:
        """Raise ModelError unless the cliques form a rooted tree with the running intersection property."""
        count = len(self.cliques)
        if len(self.parents) != count or sorted(self.order) != list(range(count)):
            raise ModelError(
                f"junction tree has {count} cliques, {len(self.parents)} parents and order "
                f"{list(self.order)}; every clique needs exactly one parent entry and one place in the order"
            )
        covered = {a for clique in self.cliques for a in clique}
        if covered != set(self.domain.attributes):
            raise ModelError(
                f"junction tree cliques cover {sorted(covered)} but the domain has "
                f"{list(self.domain.attributes)}; every attribute must be in some clique"
            )
        position = {c: i for i, c in enumerate(self.order)}
        for clique, parent in enumerate(self.parents):
            if (parent < 0) != (clique == self.order[0]):
                raise ModelError(f"junction tree clique {clique} has parent {parent}; only the root has none")
            if parent >= 0 and position[parent] >= position[clique]:
                raise ModelError(f"junction tree order puts clique {clique} before its parent {parent}")

        # Running intersection: the cliques holding an attribute form a connected subtree,
        # which holds when exactly one of them has a parent outside that set.
        for attribute in self.domain.attributes:
            holders = {c for c, clique in enumerate(self.cliques) if attribute in clique}
            tops = [c for c in holders if self.parents[c] not in holders]
            if len(tops) != 1:
                raise ModelError(
                    f"junction tree cliques holding {attribute!r} are not connected "
                    f"(cliques {sorted(holders)}); the tree lacks the running intersection property"
                )


def build_junction_tree(
    domain: Domain,
    measured_cliques: Iterable[Sequence[str]],
    *,
    max_clique_cells: int,
    max_memory_bytes: int,
) -> JunctionTree:
    """Triangulate the interaction graph of ``measured_cliques`` and return a junction tree.

    Every attribute of ``domain`` is in the tree, measured or not. Raises
    ModelError when an attribute is not in the domain, when the largest clique
    has more than ``max_clique_cells`` cells, or when the estimated working
    memory of estimation exceeds ``max_memory_bytes``.
    """
    index = {name: i for i, name in enumerate(domain.attributes)}
    sizes = [int(s) for s in domain.sizes]
    edges: set[tuple[int, int]] = set()
    for clique in measured_cliques:
        for name in clique:
            if name not in index:
                raise ModelError(
                    f"measured clique {tuple(clique)} names attribute {name!r}, which is not in the domain "
                    f"{list(domain.attributes)}; measure only the network schema's attributes"
                )
        positions = sorted({index[name] for name in clique})
        edges.update((a, b) for i, a in enumerate(positions) for b in positions[i + 1 :])

    candidates = []
    for heuristic in ("min_fill", "weighted_min_fill", "min_weight"):
        cliques = _eliminate(len(sizes), edges, sizes, heuristic)
        cells = [math.prod(sizes[v] for v in clique) for clique in cliques]
        candidates.append((max(cells), sum(cells), heuristic, cliques))
    largest, total, heuristic, cliques = min(candidates, key=lambda c: (c[0], c[1]))
    logger.debug(
        "elimination by %s: %d cliques, largest %d cells, total %d cells", heuristic, len(cliques), largest, total
    )

    named = tuple(tuple(domain.attributes[v] for v in clique) for clique in cliques)
    _check_caps(domain, named, max_clique_cells=max_clique_cells, max_memory_bytes=max_memory_bytes)
    parents, order = _spanning_tree(cliques, sizes)
    return JunctionTree(domain=domain, cliques=named, parents=parents, order=order)


def estimated_memory_bytes(domain: Domain, cliques: Sequence[Sequence[str]]) -> int:
    """Return an estimate of the peak bytes that fitting a model over ``cliques`` allocates."""
    cells = [math.prod(domain.shape(c)) for c in cliques]
    return _BYTES_PER_CELL * (_FULL_COPIES * sum(cells) + _LARGEST_CLIQUE_COPIES * max(cells, default=0))


def _eliminate(count: int, edges: set[tuple[int, int]], sizes: list[int], heuristic: str) -> list[tuple[int, ...]]:
    """Run greedy variable elimination and return the maximal cliques, sorted."""
    neighbours = [set() for _ in range(count)]
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)

    remaining = set(range(count))
    created: list[frozenset[int]] = []
    while remaining:
        vertex = min(remaining, key=lambda v: (*_elimination_cost(v, neighbours, sizes, heuristic), v))
        family = neighbours[vertex] | {vertex}
        created.append(frozenset(family))
        for a in neighbours[vertex]:
            neighbours[a] |= neighbours[vertex] - {a}
            neighbours[a].discard(vertex)
        remaining.discard(vertex)
        neighbours[vertex] = set()

    maximal = {c for c in created if not any(c < other for other in created)}
    return sorted(tuple(sorted(c)) for c in maximal)


def _elimination_cost(vertex: int, neighbours: list[set[int]], sizes: list[int], heuristic: str) -> tuple[int, int]:
    """Return the (primary, secondary) cost of eliminating ``vertex`` next under ``heuristic``."""
    adjacent = sorted(neighbours[vertex])
    fill = 0
    weighted_fill = 0
    for i, a in enumerate(adjacent):
        for b in adjacent[i + 1 :]:
            if b not in neighbours[a]:
                fill += 1
                weighted_fill += sizes[a] * sizes[b]
    weight = sizes[vertex] * math.prod(sizes[a] for a in adjacent)
    if heuristic == "min_fill":
        return fill, weight
    if heuristic == "weighted_min_fill":
        return weighted_fill, weight
    return weight, fill


def _spanning_tree(cliques: list[tuple[int, ...]], sizes: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return (parents, order) of a maximum spanning tree over separator sizes, rooted at clique 0."""
    count = len(cliques)
    sets = [set(c) for c in cliques]
    candidates = []
    for i in range(count):
        for j in range(i + 1, count):
            shared = sets[i] & sets[j]
            cells = math.prod(sizes[v] for v in shared)
            candidates.append((-len(shared), -cells, i, j))
    candidates.sort()

    # Kruskal with a union-find forest; ``group[i]`` points towards the representative of i's tree.
    group = list(range(count))

    def find(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    adjacency: list[list[int]] = [[] for _ in range(count)]
    for _, _, i, j in candidates:
        ri, rj = find(i), find(j)
        if ri != rj:
            group[max(ri, rj)] = min(ri, rj)
            adjacency[i].append(j)
            adjacency[j].append(i)

    # Breadth-first from clique 0 gives each parent a place before its children.
    parents = [-1] * count
    order = [0]
    seen = {0}
    for clique in order:
        for other in sorted(adjacency[clique]):
            if other not in seen:
                seen.add(other)
                parents[other] = clique
                order.append(other)
    return tuple(parents), tuple(order)


def _check_caps(
    domain: Domain, cliques: Sequence[tuple[str, ...]], *, max_clique_cells: int, max_memory_bytes: int
) -> None:
    """Raise ModelError naming the cliques when the tree is too large to fit."""
    cells = {clique: math.prod(domain.shape(clique)) for clique in cliques}
    advice = (
        "measure fewer or narrower attribute pairs (pairs that close cycles make the largest cliques), "
        "coarsen the widest attributes in the schema, or raise the cap if the machine has the memory"
    )
    too_large = sorted((c for c in cliques if cells[c] > max_clique_cells), key=lambda c: -cells[c])
    if too_large:
        listed = "; ".join(f"{' x '.join(c)} = {cells[c]:,} cells" for c in too_large)
        raise ModelError(
            f"the junction tree needs cliques larger than max_clique_cells={max_clique_cells:,}: {listed}. "
            f"To fit, {advice}"
        )

    needed = estimated_memory_bytes(domain, cliques)
    if needed > max_memory_bytes:
        largest = sorted(cliques, key=lambda c: -cells[c])[:5]
        listed = "; ".join(f"{' x '.join(c)} = {cells[c]:,} cells" for c in largest)
        raise ModelError(
            f"fitting this junction tree needs about {needed:,} bytes, more than "
            f"max_memory_bytes={max_memory_bytes:,}; {len(cliques)} cliques with "
            f"{sum(cells.values()):,} cells in total, the largest: {listed}. To fit, {advice}"
        )

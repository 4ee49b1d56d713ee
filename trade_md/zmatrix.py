"""The Z-matrix of a bonded molecule: the order in which atoms are placed and the references of each.

The longest heavy-atom path (the backbone; ends chosen deterministically, the path starts at its lower-index end)
is placed first, then the remaining heavy atoms breadth first, then the hydrogens in the order of their heavy
atoms. Atom ``i`` is placed by a bond to an earlier atom ``j``, an angle ``i-j-k`` with ``k`` an earlier neighbour
of ``j`` (the earliest), and a dihedral ``i-j-k-l``: ``l`` is an earlier neighbour of ``j`` other than ``k`` when
one exists (a stiff, improper-like torsion, e.g. the second and third methyl hydrogen, or Cβ against the backbone,
which encodes the chirality of Cα), otherwise an earlier neighbour of ``k`` (a proper torsion such as φ, ψ or a
methyl rotor). For alanine dipeptide φ and ψ are features. :class:`trade_md.ic.InternalCoordinates` turns a
Z-matrix into the Cartesian <-> internal-coordinate map.

>>> ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], [True] * 4).rows
((0, -1, -1, -1), (1, 0, -1, -1), (2, 1, 0, -1), (3, 2, 1, 0))
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trade_md.errors import InputError

__all__ = ["ZMatrix"]


def _bfs(start: int, adjacency: dict[int, list[int]]) -> dict[int, int | None]:
    parents: dict[int, int | None] = {start: None}
    queue = deque([start])
    while queue:
        atom = queue.popleft()
        for other in adjacency[atom]:
            if other not in parents:
                parents[other] = atom
                queue.append(other)
    return parents


def _farthest(start: int, adjacency: dict[int, list[int]]) -> tuple[int, dict[int, int | None]]:
    parents = _bfs(start, adjacency)
    depth = {start: 0}
    for atom in parents:  # insertion order is BFS order
        if parents[atom] is not None:
            depth[atom] = depth[parents[atom]] + 1
    far = min(parents, key=lambda a: (-depth[a], a))
    return far, parents


@dataclass(frozen=True)
class ZMatrix:
    """Placement order of a molecule: ``rows[m] = (atom, j, k, l)``, ``-1`` where a seed atom has no reference.

    Row 0 is ``(a0, -1, -1, -1)``, row 1 ``(a1, a0, -1, -1)``, row 2 ``(a2, j, k, -1)`` with ``{j, k} = {a0, a1}``;
    later rows have all four atoms. ``n_atoms`` equals the number of rows.
    """

    rows: tuple[tuple[int, int, int, int], ...]

    @property
    def n_atoms(self) -> int:
        return len(self.rows)

    @property
    def order(self) -> list[int]:
        """Atom indices in placement order."""
        return [row[0] for row in self.rows]

    def placement_plan(self) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """The rows after the seeds grouped into generations that can be placed together: a row's generation is one
        more than the latest of its references' (the seeds are generation 0). Returns the rows in placement order
        (generation by generation, each in row order), the positions in that order of each row's references
        ``[[j...], [k...], [l...]]`` (the seeds at 0, 1, 2), the size of each generation, and every atom's position.
        Alanine dipeptide's 19 rows after the seeds fall into 6 generations, the tetrapeptide's 39 into 12."""
        rank = {row[0]: m for m, row in enumerate(self.rows)}
        generation = [0, 0, 0]
        for _, j, k, l in self.rows[3:]:
            generation.append(1 + max(generation[rank[j]], generation[rank[k]], generation[rank[l]]))
        order = [0, 1, 2] + sorted(range(3, len(self.rows)), key=lambda m: (generation[m], m))
        position = {m: p for p, m in enumerate(order)}
        refs = [[position[rank[self.rows[m][c]]] for m in order[3:]] for c in (1, 2, 3)]
        sizes = [generation.count(g) for g in range(1, max(generation) + 1)]
        return order[3:], refs, sizes, [position[rank[atom]] for atom in range(self.n_atoms)]

    @classmethod
    def from_bonds(cls, n_atoms: int, bonds: Iterable[tuple[int, int]], heavy: Sequence[bool]) -> ZMatrix:
        """Build the Z-matrix of one connected molecule from its bond list; heavy[i] is False for hydrogens."""
        if n_atoms < 3:
            raise InputError(f"internal coordinates need at least 3 atoms, got {n_atoms}")
        adjacency: dict[int, list[int]] = {i: [] for i in range(n_atoms)}
        for a, b in bonds:
            a, b = int(a), int(b)
            if a == b or not (0 <= a < n_atoms and 0 <= b < n_atoms):
                raise InputError(f"bond ({a}, {b}) is not between two distinct atoms of {n_atoms}")
            if b not in adjacency[a]:
                adjacency[a].append(b)
                adjacency[b].append(a)
        for neighbours in adjacency.values():
            neighbours.sort()
        if len(_bfs(0, adjacency)) != n_atoms:
            raise InputError("the topology is not one connected molecule (missing bonds or several molecules); "
                             "internal coordinates need a single bonded molecule, e.g. a PDB with CONECT records "
                             "or a topology from a force-field template, without solvent")
        heavy_atoms = [i for i in range(n_atoms) if heavy[i]]
        heavy_adjacency = {i: [j for j in adjacency[i] if heavy[j]] for i in heavy_atoms}
        if heavy_atoms:
            end, _ = _farthest(min(heavy_atoms), heavy_adjacency)
            other, parents = _farthest(end, heavy_adjacency)
            path = [other]
            while parents[path[-1]] is not None:
                path.append(parents[path[-1]])
            if path[-1] < path[0]:
                path.reverse()
        else:
            path = [0]
        order = list(path)
        placed = set(order)
        queue = deque(order)
        while queue:  # remaining heavy atoms, breadth first from the backbone
            atom = queue.popleft()
            for other in heavy_adjacency.get(atom, []):
                if other not in placed:
                    placed.add(other)
                    order.append(other)
                    queue.append(other)
        queue = deque(order)
        while queue:  # hydrogens (and anything reachable only through them)
            atom = queue.popleft()
            for other in adjacency[atom]:
                if other not in placed:
                    placed.add(other)
                    order.append(other)
                    queue.append(other)
        rank = {atom: position for position, atom in enumerate(order)}
        rows: list[tuple[int, int, int, int]] = []
        for position, atom in enumerate(order):
            earlier = sorted((a for a in adjacency[atom] if rank[a] < position), key=rank.__getitem__)
            if position == 0:
                rows.append((atom, -1, -1, -1))
                continue
            j = earlier[0]
            if position == 1:
                rows.append((atom, j, -1, -1))
                continue
            j_neighbours = sorted((a for a in adjacency[j] if rank[a] < position and a != atom), key=rank.__getitem__)
            k = j_neighbours[0]
            if position == 2:
                rows.append((atom, j, k, -1))
                continue
            siblings = [a for a in j_neighbours if a != k]
            if siblings:
                l = siblings[0]
            else:
                l = min((a for a in adjacency[k] if rank[a] < position and a != j), key=rank.__getitem__)
            rows.append((atom, j, k, l))
        return cls(tuple(rows))

    @classmethod
    def from_topology(cls, topology: Any) -> ZMatrix:
        """Build from an ``openmm.app.Topology`` (bonds from the topology, hydrogens from the elements)."""
        atoms = list(topology.atoms())
        bonds = [(bond[0].index, bond[1].index) for bond in topology.bonds()]
        if not bonds:
            raise InputError("the topology has no bonds; load the molecule through a force-field template or a "
                             "PDB with CONECT records so that bonds are known")
        heavy = [atom.element is None or atom.element.symbol != "H" for atom in atoms]
        return cls.from_bonds(len(atoms), bonds, heavy)

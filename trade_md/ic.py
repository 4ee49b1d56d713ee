"""Internal coordinates: the Cartesian <-> feature map of a molecule with exact log|det J|.

The placement order comes from a Z-matrix (:class:`trade_md.zmatrix.ZMatrix`). The module is longer than 400 lines
because the map, its inverse with the exact log-det, the normalisation fitted to data and the chirality reference
share one set of Z-matrix buffers and change together.

Rigid-body convention: the first three atoms ``a0, a1, a2`` (a bonded chain) fix the frame; ``a0`` is at the origin,
``a1`` on the +x axis, ``a2`` in the xy-plane with y > 0. Their coordinates are two bond lengths and one angle,
so there are ``3N - 6`` internal coordinates: ``N - 1`` bonds, ``N - 2`` angles, ``N - 3`` dihedrals. Linear
groups (a reference angle near pi, e.g. alkynes or nitriles) make dihedrals undefined and are not supported.
:meth:`InternalCoordinates.inverse` places molecules in that canonical frame (:func:`canonical_frame`).

Densities: the flow's density over internal coordinates ``q`` is turned into a density of Cartesian positions
``x [atoms, 3]`` with respect to Lebesgue measure divided by rigid motions (uniform orientation, Haar measure of
total mass 1; translation measure 1), i.e. the measure in which the Boltzmann density is ``exp(-u(x)) / Z`` up to
a constant (``8 pi^2 V``). The Jacobian of the full map (translation, orientation, ``q``) -> ``x`` factorises as
``(orientation density) * rho(q)`` with

    rho(q) = b1^2 * b2^2 sin(a2) * prod_{i >= 3} b_i^2 sin(a_i)

(seed terms: ``a1`` is at distance ``b1`` from ``a0`` in any direction, ``a2`` at distance ``b2`` from its
reference at angle ``a2``; every later atom in spherical coordinates about ``j``). The Jacobian of the map from
``q`` to the ``3N - 6`` free canonical-frame coordinates alone is ``b2 * prod b_i^2 sin(a_i)``; it misses the
rigid-body factor ``b1^2 b2 sin(a2)`` and is NOT the one used for densities. Both are tested against autograd.

Constrained bonds (``(i, j, length nm)``, e.g. HBonds from the System): their lengths are force-field constants,
not features; :meth:`InternalCoordinates.inverse` re-inserts them. The density then lives on the constraint
manifold, with ``rho`` evaluated at the constrained lengths (no Fixman/metric correction). Constraints between atoms
that are not a Z-matrix bond (HAngles, rigid water, ring closures) are rejected.

Normalisation: each modelled bond and angle is mapped affinely onto ``[-1, 1]`` from the training data range
``mean +- width_sigmas * std`` (default 6 standard deviations, widened to include the observed extremes, bonds
clipped at 0 and angles to ``[0, pi]``), stored as buffers (state dict) and in :meth:`InternalCoordinates.config`;
its constant log-det is part of every log-det. Dihedrals stay on ``[-pi, pi)``, except, with ``dihedral_windows``,
the stiff ones: a dihedral whose training values stay within ``+- pi/2`` of their circular mean (the window
``mean +- width_sigmas * std``, widened to the observed extremes, is narrower than half the circle; impropers, ring
torsions, peptide bonds) is unwrapped around that mean and normalised onto ``[-1, 1]`` like an angle, so that the
flow's spline bins resolve it as finely as they resolve angles; values outside the window are outside the model's
support.

Chirality: a chiral centre is an atom with four bonded neighbours whose substituent branches differ (Cα of all
amino acids but glycine). Its handedness is the sign of the triple product of the first three neighbours' bond
vectors (neighbours sorted by atom index; :func:`trade_md.features.chiral_centres` and
:func:`trade_md.features.handedness`); the reference signs come from the input structure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trade_md.errors import InputError
from trade_md.features import chiral_centres, handedness
from trade_md.splines import Domain
from trade_md.thermo import to_nm
from trade_md.zmatrix import ZMatrix

__all__ = ["DEFAULT_WIDTH_SIGMAS", "InternalCoordinates", "canonical_frame"]

DEFAULT_WIDTH_SIGMAS = 6.0
"""Half width of the normalisation interval of bonds and angles, in training-data standard deviations."""
DIHEDRAL_WINDOW_LIMIT = math.pi / 2
"""Largest half width (rad) of a dihedral's normalisation window: wider dihedrals stay circular."""
_MIN_BOND_STD = 1e-5
"""A bond that fluctuates less than this (nm) in the training data was constrained in the MD."""


# ------------------------------------------------------------------ geometry (torch, batched)


def _norm(v: Tensor) -> Tensor:
    return torch.sqrt((v * v).sum(dim=-1))


def _angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Angle ``a-b-c`` at ``b`` in ``[0, pi]`` (atan2 form: accurate near 0 and pi)."""
    u, v = a - b, c - b
    return torch.atan2(_norm(torch.linalg.cross(u, v)), (u * v).sum(dim=-1))


def _dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """IUPAC dihedral ``a-b-c-d`` in ``[-pi, pi]``."""
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = _norm(b2) * (b1 * n2).sum(dim=-1)
    return torch.atan2(y, (n1 * n2).sum(dim=-1))


def _place(j: Tensor, k: Tensor, l: Tensor, bond: Tensor, angle: Tensor, torsion: Tensor) -> Tensor:
    """Position of atom ``i`` from its references: ``|i-j| = bond``, angle ``i-j-k``, dihedral ``i-j-k-l``."""
    axis = j - k
    axis = axis / _norm(axis).unsqueeze(-1)
    normal = torch.linalg.cross(k - l, axis)
    normal = normal / _norm(normal).unsqueeze(-1)
    binormal = torch.linalg.cross(normal, axis)
    sin_angle = torch.sin(angle)
    local = (
        -bond * torch.cos(angle),
        bond * sin_angle * torch.cos(torsion),
        bond * sin_angle * torch.sin(torsion),
    )
    return j + local[0].unsqueeze(-1) * axis + local[1].unsqueeze(-1) * binormal + local[2].unsqueeze(-1) * normal


def canonical_frame(x: Tensor, seeds: Sequence[int]) -> Tensor:
    """``x [n, atoms, 3]`` moved so that atom ``seeds[0]`` is at the origin, ``seeds[1]`` on +x, ``seeds[2]`` in
    the xy-plane with y > 0 (the frame of :meth:`InternalCoordinates.inverse`)."""
    origin = x[:, seeds[0]]
    e1 = x[:, seeds[1]] - origin
    e1 = e1 / _norm(e1).unsqueeze(-1)
    v = x[:, seeds[2]] - origin
    e2 = v - (v * e1).sum(dim=-1, keepdim=True) * e1
    e2 = e2 / _norm(e2).unsqueeze(-1)
    e3 = torch.linalg.cross(e1, e2)
    rotation = torch.stack([e1, e2, e3], dim=-1)  # [n, 3, 3], columns are the new axes
    return (x - origin.unsqueeze(1)) @ rotation

# ------------------------------------------------------------------ the transform


class InternalCoordinates(nn.Module):
    """Cartesian positions ``x [n, atoms, 3]`` nm <-> normalised internal-coordinate features ``z [n, d]``.

    Features: modelled bonds, then angles (each affinely normalised onto ``[-1, 1]``), then dihedrals
    (``[-pi, pi)``); ``d = 3N - 6 - (number of constrained bonds)``. ``forward`` returns ``log|det dz/dx|`` and
    ``inverse`` ``log|det dx/dz|`` with respect to the rigid-motion-reduced Cartesian measure (module docstring).

    zmatrix: the placement; constrained_bonds: ``(i, j, length nm)``; bond_range ``[n_modelled_bonds, 2]`` nm and
    angle_range ``[N - 2, 2]`` rad: normalisation intervals; centres ``[m, 4]`` and signs ``[m]``: chirality reference.
    Use :meth:`from_data` to get the ranges and the chirality from training positions.
    """

    def __init__(
        self,
        zmatrix: ZMatrix,
        bond_range: Sequence[Sequence[float]],
        angle_range: Sequence[Sequence[float]],
        constrained_bonds: Sequence[tuple[int, int, float]] = (),
        centres: Sequence[Sequence[int]] = (),
        signs: Sequence[float] = (),
        width_sigmas: float = DEFAULT_WIDTH_SIGMAS,
        dihedral_range: Sequence[Sequence[float] | None] | None = None,
    ) -> None:
        super().__init__()
        self.zmatrix = zmatrix
        self.width_sigmas = float(width_sigmas)
        rows = zmatrix.rows
        n = zmatrix.n_atoms
        # all N - 1 bonds (row 1..), N - 2 angles (row 2..), N - 3 dihedrals (row 3..), in placement order
        bond_pairs = [(row[0], row[1]) for row in rows[1:]]
        constraint_lengths = {}
        for i, j, length in constrained_bonds:
            constraint_lengths[frozenset((int(i), int(j)))] = float(length)
        bond_keys = [frozenset(pair) for pair in bond_pairs]
        unmatched = set(constraint_lengths) - set(bond_keys)
        if unmatched:
            pairs = sorted(tuple(sorted(key)) for key in unmatched)
            raise InputError(f"constraints between atoms {pairs[:5]} are not Z-matrix bonds (angle constraints, rigid "
                             "water or ring closures); internal coordinates support bond constraints only: use "
                             "constraints=None or 'HBonds'")
        constrained_mask = [key in constraint_lengths for key in bond_keys]
        self._constrained_bonds = [(int(i), int(j), float(length)) for i, j, length in constrained_bonds]
        self.n_atoms = n
        self.n_constrained = sum(constrained_mask)
        n_modelled = len(bond_pairs) - self.n_constrained
        bond_range_t = torch.as_tensor(np.asarray(bond_range, dtype=np.float64).reshape(-1, 2))
        angle_range_t = torch.as_tensor(np.asarray(angle_range, dtype=np.float64).reshape(-1, 2))
        if bond_range_t.shape[0] != n_modelled or angle_range_t.shape[0] != n - 2:
            raise InputError(f"normalisation ranges have {bond_range_t.shape[0]} bonds and {angle_range_t.shape[0]} "
                             f"angles; this Z-matrix needs {n_modelled} and {n - 2}")
        if bool((bond_range_t[:, 1] <= bond_range_t[:, 0]).any() | (angle_range_t[:, 1] <= angle_range_t[:, 0]).any()):
            raise InputError("normalisation ranges must have low < high")
        def index(values: Any) -> Tensor:
            return torch.tensor(values, dtype=torch.long)

        self.register_buffer("bond_atoms", index(bond_pairs).reshape(-1, 2), persistent=False)
        self.register_buffer("modelled_bond", torch.tensor([not c for c in constrained_mask]), persistent=False)
        source = np.cumsum([not c for c in constrained_mask]) - 1
        self.register_buffer("bond_source", index(np.clip(source, 0, None).tolist()), persistent=False)
        self.register_buffer("angle_atoms", index([(r[0], r[1], r[2]) for r in rows[2:]]).reshape(-1, 3),
                             persistent=False)
        self.register_buffer("dihedral_atoms", index([r for r in rows[3:]]).reshape(-1, 4), persistent=False)
        fixed = [constraint_lengths.get(key, 0.0) for key in bond_keys]
        self.register_buffer("constrained_lengths", torch.tensor(fixed, dtype=torch.float64))
        self.register_buffer("bond_range", bond_range_t.clone())
        self.register_buffer("angle_range", angle_range_t.clone())
        centres_t = index([list(c) for c in centres]).reshape(-1, 4)
        self.register_buffer("chiral_centres", centres_t)
        self.register_buffer("chiral_signs", torch.tensor(list(signs), dtype=torch.float64).reshape(-1))
        if self.chiral_signs.shape[0] != centres_t.shape[0]:
            raise InputError("one reference sign per chiral centre is needed")
        inverse_order = [0] * n
        for position, atom in enumerate(zmatrix.order):
            inverse_order[atom] = position
        self.register_buffer("inverse_order", index(inverse_order), persistent=False)
        self._rank = {atom: position for position, atom in enumerate(zmatrix.order)}
        plan_rows, refs, self._plan_sizes, atoms = zmatrix.placement_plan()   # for cartesian: placement generations
        self.register_buffer("_plan_rows", index(plan_rows), persistent=False)
        self.register_buffer("_plan_refs", index(refs).reshape(3, -1), persistent=False)
        self.register_buffer("_plan_atoms", index(atoms), persistent=False)
        windows = [None] * max(n - 3, 0) if dihedral_range is None else list(dihedral_range)
        if len(windows) != max(n - 3, 0) or any(w is not None and not (-2 * math.pi < w[0] < w[1] < 2 * math.pi
                                                and w[1] - w[0] <= 2 * DIHEDRAL_WINDOW_LIMIT + 1e-9) for w in windows):
            raise InputError(f"dihedral_range needs {n - 3} entries, each null or [low, high] rad with low < high and "
                             f"high - low <= {2 * DIHEDRAL_WINDOW_LIMIT:.4f}")
        window_t = torch.tensor([[-math.pi, math.pi] if w is None else [float(w[0]), float(w[1])] for w in windows],
                                dtype=torch.float64).reshape(-1, 2)     # [-pi, pi]: a circular one (not used)
        self.register_buffer("dihedral_range", window_t, persistent=False)       # rebuilt from config()
        self.register_buffer("windowed", torch.tensor([w is not None for w in windows], dtype=torch.bool),
                             persistent=False)
        self._dihedral_range = [None if w is None else [float(w[0]), float(w[1])] for w in windows]   # for config()
        self._has_windows = any(w is not None for w in windows)       # constants: no device sync on the hot path
        self._window_log_scale = sum(math.log(2.0 / (w[1] - w[0])) for w in windows if w is not None)
        self.domains = ([Domain.interval(-1.0, 1.0)] * (n_modelled + n - 2)) + [
            Domain.interval(-1.0, 1.0) if w is not None else Domain.circular() for w in windows]

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_data(
        cls,
        zmatrix: ZMatrix,
        training_positions: Any,
        constrained_bonds: Sequence[tuple[int, int, float]] = (),
        *,
        reference_positions: Any = None,
        centres: Sequence[tuple[int, int, int, int]] = (),
        width_sigmas: float = DEFAULT_WIDTH_SIGMAS,
        dihedral_windows: bool = False,
    ) -> InternalCoordinates:
        """Normalisation from ``training_positions [n, atoms, 3]`` nm (n >= 2), with ``dihedral_windows`` also of
        the stiff dihedrals (module docs); chirality reference signs at ``centres`` from ``reference_positions
        [atoms, 3]`` nm (default: the first training frame), checked against the majority of the training frames."""
        positions = torch.as_tensor(to_nm(training_positions))
        if positions.dim() != 3 or positions.shape[1:] != (zmatrix.n_atoms, 3) or positions.shape[0] < 2:
            raise InputError(f"training positions must have shape [n >= 2, {zmatrix.n_atoms}, 3] nm, got "
                             f"{list(positions.shape)}")
        if not bool(torch.isfinite(positions).all()):
            raise InputError("training positions contain NaN or inf; remove those frames")
        if width_sigmas <= 0:
            raise InputError(f"width_sigmas must be > 0, got {width_sigmas}")
        probe = cls(zmatrix, [[0.0, 1.0]] * (zmatrix.n_atoms - 1 - _count_matched(zmatrix, constrained_bonds)),
                    [[0.0, math.pi]] * (zmatrix.n_atoms - 2), constrained_bonds)
        bonds, angles, dihedrals = probe.raw(positions)
        bonds = bonds[:, probe.modelled_bond]
        bond_std = bonds.std(dim=0)
        tight = torch.nonzero(bond_std < _MIN_BOND_STD).flatten().tolist()
        if tight:
            pair = probe.bond_atoms[probe.modelled_bond][tight[0]].tolist()
            raise InputError(f"bond {pair} barely fluctuates in the training data (std {float(bond_std[tight[0]]):.1e} "
                             "nm): the MD constrained it; pass the same constraints (e.g. the system's HBonds) so "
                             "that constrained bonds are not modelled")
        bond_low = torch.minimum(bonds.mean(0) - width_sigmas * bond_std, bonds.min(0).values).clamp(min=0.0)
        bond_high = torch.maximum(bonds.mean(0) + width_sigmas * bond_std, bonds.max(0).values)
        angle_std = angles.std(dim=0).clamp(min=1e-3)
        angle_low = torch.minimum(angles.mean(0) - width_sigmas * angle_std, angles.min(0).values).clamp(min=0.0)
        angle_high = torch.maximum(angles.mean(0) + width_sigmas * angle_std, angles.max(0).values).clamp(max=math.pi)
        reference = positions[:1] if reference_positions is None else torch.as_tensor(to_nm(reference_positions))
        reference = reference.reshape(1, zmatrix.n_atoms, 3)
        centre_t = torch.tensor([list(c) for c in centres], dtype=torch.long).reshape(-1, 4)
        signs = handedness(reference, centre_t)[0] if len(centres) else torch.zeros(0, dtype=torch.float64)
        if len(centres):
            agreement = (handedness(positions, centre_t) == signs).double().mean(dim=0)
            if bool((agreement < 0.5).any()):
                raise InputError("most training frames have the opposite handedness from the reference structure at "
                                 f"chiral centre(s) {centre_t[agreement < 0.5, 0].tolist()}; check that the data "
                                 "belong to this structure (not a mirror image)")
        return cls(
            zmatrix,
            torch.stack([bond_low, bond_high], dim=-1).tolist(),
            torch.stack([angle_low, angle_high], dim=-1).tolist(),
            constrained_bonds,
            centres,
            signs.tolist(),
            width_sigmas,
            _dihedral_windows(dihedrals, width_sigmas) if dihedral_windows else None,
        )

    @classmethod
    def of_system(
        cls, system: Any, training_positions: Any, *, width_sigmas: float = DEFAULT_WIDTH_SIGMAS,
        dihedral_windows: bool = False,
    ) -> InternalCoordinates:
        """The transform of a molecule: its Z-matrix, its bond constraints, its stereocentres (reference signs from
        ``system.positions``) and the normalisation of ``training_positions [n, atoms, 3]`` nm (:meth:`from_data`).

        system: anything with ``.topology`` (openmm Topology) and ``.positions`` ([atoms, 3] nm or a quantity), plus
        ``.constrained_bonds()`` (a ``MolecularSystem``) or ``.system`` (an ``openmm.System``) for bond constraints.
        """
        topology = system.topology
        atoms = list(topology.atoms())
        bonds = [(bond[0].index, bond[1].index) for bond in topology.bonds()]
        elements = [atom.element.symbol if atom.element is not None else atom.name for atom in atoms]
        return cls.from_data(
            ZMatrix.from_topology(topology),
            training_positions,
            _constrained_bonds(system),
            reference_positions=to_nm(system.positions).reshape(len(atoms), 3),
            centres=chiral_centres(len(atoms), bonds, elements),
            width_sigmas=width_sigmas,
            dihedral_windows=dihedral_windows,
        )

    def config(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_config` rebuilds the transform (the state dict holds the same ranges)."""
        return {
            "type": "internal",
            "zmatrix": [list(row) for row in self.zmatrix.rows],
            "bond_range": self.bond_range.tolist(),
            "angle_range": self.angle_range.tolist(),
            "constrained_bonds": [list(c) for c in self._constrained_bonds],
            "chiral_centres": self.chiral_centres.tolist(),
            "chiral_signs": self.chiral_signs.tolist(),
            "width_sigmas": self.width_sigmas,
            "dihedral_range": self._dihedral_range,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InternalCoordinates:
        return cls(
            ZMatrix(tuple(tuple(int(v) for v in row) for row in config["zmatrix"])),
            config["bond_range"],
            config["angle_range"],
            [(int(i), int(j), float(length)) for i, j, length in config["constrained_bonds"]],
            config["chiral_centres"],
            config["chiral_signs"],
            config["width_sigmas"],
            config.get("dihedral_range"),
        )

    @property
    def n_dof(self) -> int:
        """Number of features ``3N - 6 - n_constrained``."""
        return len(self.domains)

    @property
    def constrained_bonds(self) -> list[tuple[int, int, float]]:
        return list(self._constrained_bonds)

    # ---------------------------------------------------------------- raw internal coordinates

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All internal coordinates of ``x [n, atoms, 3]``: bonds ``[n, N-1]`` nm, angles ``[n, N-2]`` rad and
        dihedrals ``[n, N-3]`` rad in ``[-pi, pi)``, in placement order (constrained bonds included)."""
        self._check_positions(x)
        b, a, d = self.bond_atoms, self.angle_atoms, self.dihedral_atoms
        bonds = _norm(x[:, b[:, 0]] - x[:, b[:, 1]])
        angles = _angle(x[:, a[:, 0]], x[:, a[:, 1]], x[:, a[:, 2]])
        dihedrals = _dihedral(x[:, d[:, 0]], x[:, d[:, 1]], x[:, d[:, 2]], x[:, d[:, 3]])
        dihedrals = torch.where(dihedrals >= math.pi, dihedrals - 2.0 * math.pi, dihedrals)
        return bonds, angles, dihedrals

    def cartesian(self, bonds: Tensor, angles: Tensor, dihedrals: Tensor) -> Tensor:
        """Canonical-frame positions ``[n, atoms, 3]`` nm from all internal coordinates (shapes as in :meth:`raw`)."""
        rows = self.zmatrix.rows
        zeros = torch.zeros_like(bonds[:, 0])
        placed = [torch.stack([zeros, zeros, zeros], dim=-1), torch.stack([bonds[:, 0], zeros, zeros], dim=-1)]
        b2, a2 = bonds[:, 1], angles[:, 0]
        if rows[2][1] == rows[1][0]:  # a2 bonded to a1: angle a0-a1-a2 opens from the -x direction
            third = torch.stack([bonds[:, 0] - b2 * torch.cos(a2), b2 * torch.sin(a2), zeros], dim=-1)
        else:  # a2 bonded to a0
            third = torch.stack([b2 * torch.cos(a2), b2 * torch.sin(a2), zeros], dim=-1)
        placed = torch.stack(placed + [third], dim=1)                     # [n, 3, 3]: the seeds
        plan, refs, start = self._plan_rows, self._plan_refs, 0
        bonds, angles, dihedrals = bonds[:, plan - 1], angles[:, plan - 2], dihedrals[:, plan - 3]
        for size in self._plan_sizes:  # a generation at once (ZMatrix.placement_plan): its references are placed
            part, start = slice(start, start + size), start + size
            j, k, l = (placed.index_select(1, refs[c, part]) for c in range(3))
            placed = torch.cat([placed, _place(j, k, l, bonds[:, part], angles[:, part], dihedrals[:, part])], dim=1)
        return placed.index_select(1, self._plan_atoms)

    def log_rho(self, bonds: Tensor, angles: Tensor) -> Tensor:
        """``log rho(q)`` ``[n]``: log of the Cartesian volume per internal-coordinate volume (module docstring)."""
        return 2.0 * torch.log(bonds).sum(dim=-1) + torch.log(torch.sin(angles)).sum(dim=-1)

    # ---------------------------------------------------------------- normalisation

    def _affine(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ranges = torch.cat([self.bond_range, self.angle_range]).to(like.dtype)
        low, width = ranges[:, 0], ranges[:, 1] - ranges[:, 0]
        return low, width, torch.log(2.0 / width).sum() + self._window_log_scale

    def _window(self, dihedrals: Tensor, inverse: bool) -> Tensor:
        """Dihedral features from dihedrals ``[n, N-3]`` rad: the windowed ones onto ``[-1, 1]`` (unwrapped around
        their window's centre), the rest unchanged; ``inverse``: features back to dihedrals."""
        if not self._has_windows:
            return dihedrals
        window = self.dihedral_range.to(dihedrals.dtype)
        low, width = window[:, 0], window[:, 1] - window[:, 0]
        if inverse:
            mapped = low + (dihedrals + 1.0) * width / 2.0
        else:
            centre = low + width / 2.0
            unwrapped = centre + torch.remainder(dihedrals - centre + math.pi, 2.0 * math.pi) - math.pi
            mapped = 2.0 * (unwrapped - low) / width - 1.0
        return torch.where(self.windowed, mapped, dihedrals)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [n, atoms, 3]`` nm -> ``(z [n, d], log|det dz/dx| [n])``."""
        bonds, angles, dihedrals = self.raw(x)
        low, width, log_scale = self._affine(x)
        scaled = torch.cat([bonds[:, self.modelled_bond], angles], dim=-1)
        z = torch.cat([2.0 * (scaled - low) / width - 1.0, self._window(dihedrals, inverse=False)], dim=-1)
        fixed = self.constrained_lengths.to(x.dtype)
        bonds = torch.where(self.modelled_bond, bonds, fixed)
        return z, log_scale - self.log_rho(bonds, angles)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [n, d]`` -> ``(x [n, atoms, 3]`` nm in the canonical frame, ``log|det dx/dz| [n])``."""
        if z.dim() != 2 or z.shape[1] != self.n_dof:
            raise InputError(f"internal-coordinate features must have shape [n, {self.n_dof}], got {list(z.shape)}")
        low, width, log_scale = self._affine(z)
        n_scaled = low.shape[0]
        scaled = low + (z[:, :n_scaled] + 1.0) * width / 2.0
        n_modelled = n_scaled - self.angle_range.shape[0]
        n_bonds = self.constrained_lengths.shape[0]
        bonds = scaled[:, :n_modelled][:, self.bond_source] if n_modelled else z.new_zeros(z.shape[0], n_bonds)
        bonds = torch.where(self.modelled_bond, bonds, self.constrained_lengths.to(z.dtype))
        angles = scaled[:, n_modelled:]
        x = self.cartesian(bonds, angles, self._window(z[:, n_scaled:], inverse=True))
        return x, self.log_rho(bonds, angles) - log_scale

    # ---------------------------------------------------------------- chirality

    def chirality_flags(self, x: Tensor) -> Tensor:
        """``bool [n]``: True where any chiral centre of ``x [n, atoms, 3]`` has the wrong handedness."""
        self._check_positions(x)
        if self.chiral_centres.shape[0] == 0:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        signs = handedness(x.detach(), self.chiral_centres)
        return (signs != self.chiral_signs.to(signs.dtype)).any(dim=-1)

    def wrong_chirality_fraction(self, x: Tensor) -> float:
        """Fraction of the frames in ``x [n, atoms, 3]`` with at least one wrong-handed centre."""
        return float(self.chirality_flags(x).double().mean())

    def _check_positions(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise InputError(f"positions must have shape [n, {self.n_atoms}, 3] nm, got {list(x.shape)}")


def _dihedral_windows(dihedrals: Tensor, width_sigmas: float) -> list[list[float] | None]:
    """Per dihedral of ``dihedrals [n, N-3]`` rad: the window ``[low, high]`` rad (circular mean ``+- max(width_sigmas
    * std, largest deviation)``) when its half width is below :data:`DIHEDRAL_WINDOW_LIMIT`, else None (circular)."""
    centre = torch.atan2(torch.sin(dihedrals).mean(0), torch.cos(dihedrals).mean(0))
    deviation = torch.remainder(dihedrals - centre + math.pi, 2.0 * math.pi) - math.pi
    half = torch.maximum(width_sigmas * deviation.std(0), deviation.abs().max(0).values)
    return [[float(c - h), float(c + h)] if h < DIHEDRAL_WINDOW_LIMIT else None
            for c, h in zip(centre.tolist(), half.tolist())]


def _count_matched(zmatrix: ZMatrix, constrained_bonds: Sequence[tuple[int, int, float]]) -> int:
    bonds = {frozenset((row[0], row[1])) for row in zmatrix.rows[1:]}
    return sum(frozenset((int(i), int(j))) in bonds for i, j, _ in constrained_bonds)


def _constrained_bonds(system: Any) -> list[tuple[int, int, float]]:
    """``(i, j, nm)`` from ``system.constrained_bonds()`` or the constraints of an ``openmm.System``."""
    if hasattr(system, "constrained_bonds"):
        return [(int(i), int(j), float(length)) for i, j, length in system.constrained_bonds()]
    openmm_system = getattr(system, "system", None)
    if openmm_system is None or not hasattr(openmm_system, "getNumConstraints"):
        return []
    constraints = []
    for index in range(openmm_system.getNumConstraints()):
        i, j, length = openmm_system.getConstraintParameters(index)
        constraints.append((int(i), int(j), float(to_nm(length))))
    return constraints

"""φ basins of every backbone residue, for peptides of any length: the ``phi_basins`` entry of a reference summary
(:func:`trade_md.analysis.remd.analyse_reference`) and the reference values an evaluation compares with.

A peptide's :class:`Backbone` is its φ dihedrals in chain order (:func:`trade_md.features.phi_dihedrals`, labelled
like ``"ALA 2"``), each with the ψ of the same residue where there is one. For each φ_i the MBAR reference gives
P(φ_i > 0) and ΔF_i = F(φ_i > 0) − F(φ_i < 0) = −k_B T ln(P(φ_i > 0) / P(φ_i < 0)) at every summary temperature, with
block-bootstrap errors (:func:`phi_basin_summary`). A dipeptide (exactly one φ and one ψ) keeps besides them the
top-level keys it always had (``p_phi_positive``, ``delta_f``, ``ramachandran``, ...), with the same values;
:func:`reference_value` reads one residue's value back for an evaluation, from those top-level keys for a molecule
with one φ (summaries written before ``phi_basins`` existed and umbrella summaries have only them), else from
``phi_basins`` by the residue's label.

>>> positions = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, -1]]])
>>> backbone = Backbone(("ALA 2",), np.array([[0, 1, 2, 3]]), (None,), None)
>>> backbone.phi(positions).round(4).tolist(), backbone.main, backbone.ramachandran_angles(positions, 0)
([[-1.5708]], 0, None)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trade_md.analysis.mbar import MBAREstimator
from trade_md.analysis.metrics import ramachandran_histogram
from trade_md.features import dihedral_angles, phi_dihedrals, psi_dihedrals
from trade_md.formats.files import json_safe
from trade_md.formats.reference import Reference, round_significant
from trade_md.thermo import kT

__all__ = ["CONVENTION", "Backbone", "phi_basin_summary", "reference_value"]

CONVENTION = (
    "per backbone φ_i = C(i−1)–N–CA–C of the residue labels[i] (chain order; atoms phi_atoms[i]): p_positive = "
    "P(φ_i > 0), delta_f = F(φ_i>0) − F(φ_i<0) = −k_B T ln(P(φ_i>0)/P(φ_i<0)) in kJ/mol, delta_f_kT in k_B T, "
    "with standard errors as `sem` (null: a basin without weight); lists [residue][temperature]; "
    "direct_p_positive_ladder [residue][ladder state]: unweighted fraction of each ladder temperature's samples; "
    "statistical_inefficiency_iterations [residue]: of the φ_i > 0 indicator averaged over the states (largest over "
    "runs); ramachandran [residue][temperature] (molecules with more than one φ; a dipeptide's is the top-level "
    "`ramachandran`): (φ_i, ψ_i) histograms as `ramachandran`, null for a residue without ψ")
"""The ``convention`` line of a summary's ``phi_basins``."""

_LEGACY_KEYS = {"p_positive": "p_phi_positive", "p_positive_sem": "p_phi_positive_sem", "delta_f": "delta_f",
                "delta_f_sem": "delta_f_sem", "delta_f_kT": "delta_f_kT", "delta_f_sem_kT": "delta_f_sem_kT",
                "ramachandran": "ramachandran"}
"""``phi_basins`` key → the top-level summary key of a dipeptide (the single residue)."""


def _angles(positions: Any, quadruplets: Any) -> np.ndarray:
    """:func:`~trade_md.features.dihedral_angles` ``[n, m]`` of ``quadruplets [m, 4]`` in ``positions [n, atoms, 3]``
    nm, reading only the atoms they involve (a long run's positions are not converted whole)."""
    quads = np.asarray(quadruplets, dtype=np.int64).reshape(-1, 4)
    used, local = np.unique(quads, return_inverse=True)
    return dihedral_angles(np.asarray(positions)[:, used], local.reshape(quads.shape))


@dataclass(frozen=True, eq=False)
class Backbone:
    """The backbone of a peptide: ``labels`` ``[k]`` of the residues with a φ (chain order), their ``phi_atoms``
    ``[k, 4]``, ``psi_atoms`` ``[k]`` (the ψ of the same residue, or None) and ``pair`` ``[2, 4]``, the φ and ψ atoms
    of a dipeptide (exactly one of each, as :func:`trade_md.features.ramachandran_atoms`), else None."""

    labels: tuple[str, ...]
    phi_atoms: np.ndarray
    psi_atoms: tuple[tuple[int, int, int, int] | None, ...]
    pair: np.ndarray | None

    @classmethod
    def of(cls, topology: Any) -> Backbone | None:
        """The backbone of ``topology`` (openmm or mdtraj), or None for a molecule without any backbone φ."""
        phi, psi = phi_dihedrals(topology), psi_dihedrals(topology)
        if not phi:
            return None
        by_label = {d.label: d.atoms for d in psi}
        pair = np.array([phi[0].atoms, psi[0].atoms], dtype=np.int64) if len(phi) == len(psi) == 1 else None
        return cls(tuple(d.label for d in phi), np.array([d.atoms for d in phi], dtype=np.int64),
                   tuple(by_label.get(d.label) for d in phi), pair)

    @property
    def dipeptide(self) -> bool:
        return self.pair is not None

    @property
    def main(self) -> int:
        """The residue whose φ/ψ give an evaluation's Ramachandran histogram, ESS by basin and top-level ΔF: the
        first with a ψ (0 when none has one)."""
        return 0 if self.dipeptide else next((i for i, a in enumerate(self.psi_atoms) if a is not None), 0)

    def phi(self, positions: Any) -> np.ndarray:
        """φ_i ``[n, k]`` radians of ``positions [n, atoms, 3]`` nm."""
        return _angles(positions, self.phi_atoms)

    def indicators(self, phi: np.ndarray) -> dict[str, np.ndarray]:
        """The φ_i > 0 indicators ``[n]`` of :meth:`phi`'s angles, named as :func:`phi_basin_summary` reads their
        bootstrap errors."""
        return {f"phi_positive_{i}": phi[:, i] > 0 for i in range(phi.shape[1])}

    def ramachandran_angles(self, positions: Any, residue: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(φ, ψ) ``[n]`` radians of ``residue`` (a dipeptide: its pair), or None when it has no ψ."""
        if self.dipeptide:
            quads = self.pair
        elif self.psi_atoms[residue] is None:
            return None
        else:
            quads = np.array([self.phi_atoms[residue], self.psi_atoms[residue]], dtype=np.int64)
        angles = _angles(positions, quads)
        return angles[:, 0], angles[:, 1]


def phi_basin_summary(
    backbone: Backbone, estimator: MBAREstimator, positions: np.ndarray, phi: np.ndarray,
    errors: dict[str, np.ndarray], *, index: np.ndarray, temperatures: np.ndarray, state: np.ndarray,
    n_ladder: int, inefficiencies: Sequence[float], histograms: bool,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """MBAR basin estimates of every φ_i: (the summary's ``phi_basins``, the top-level keys of a dipeptide (empty
    for other molecules), warnings for basins without weight).

    positions ``[N, atoms, 3]`` nm and φ ``[N, k]`` (:meth:`Backbone.phi`) of the estimator's samples; errors: its
    block bootstrap with :meth:`Backbone.indicators`; index ``[M]``: the estimator column of each of the summary
    ``temperatures`` ``[M]`` K; state ``[N]``: the ladder state of each sample (of ``n_ladder``); inefficiencies
    ``[k]``: of each φ_i indicator; histograms: (φ_i, ψ_i) histograms per temperature.
    """
    kt = np.array([kT(t) for t in temperatures])
    names = ("p_positive", "p_positive_sem", "delta_f_kT", "delta_f_sem_kT", "delta_f", "delta_f_sem",
             "direct_p_positive_ladder")
    rows: dict[str, list[Any]] = {name: [] for name in names}
    messages = []
    for i, label in enumerate(backbone.labels):
        delta_f, _, p, _ = estimator.indicator_free_energy(phi[:, i] > 0)
        sem, sem_p = errors[f"phi_positive_{i}"], errors[f"phi_positive_{i}_p"]
        for name, values in zip(names, (p[index].tolist(), json_safe(sem_p[index]), json_safe(delta_f[index]),
                                        json_safe(sem[index]), json_safe(delta_f[index] * kt),
                                        json_safe(sem[index] * kt))):
            rows[name].append(values)
        rows["direct_p_positive_ladder"].append(np.array([np.mean(phi[state == k, i] > 0)
                                                          for k in range(n_ladder)]).tolist())
        if backbone.dipeptide:  # the messages dipeptide summaries always had: one per temperature
            messages += [f"no sample of the φ {'>' if value == 0 else '<'} 0 basin carries weight at {t:g} K: ΔF is "
                         "infinite there (null in the JSON); run longer"
                         for t, value in zip(temperatures, p[index]) if value in (0.0, 1.0)]
            continue
        for sign, empty in ((">", 0.0), ("<", 1.0)):
            at = [f"{t:g}" for t, value in zip(temperatures, p[index]) if value == empty]
            if at:
                messages.append(f"no sample of the φ {sign} 0 basin of {label} carries weight at {', '.join(at)} K: "
                                "ΔF is infinite there (null in the JSON); run longer")
    entry: dict[str, Any] = {"convention": CONVENTION, "labels": list(backbone.labels),
                             "phi_atoms": backbone.phi_atoms.tolist(), **rows,
                             "statistical_inefficiency_iterations": [float(g) for g in inefficiencies]}
    legacy: dict[str, Any] = {}
    weights = estimator.weights() if histograms else None
    if backbone.dipeptide:
        legacy = {_LEGACY_KEYS[name]: list(rows[name][0]) for name in names[:-1]}
        legacy["direct_p_phi_positive_ladder"] = list(rows["direct_p_positive_ladder"][0])
        if histograms:
            angles = backbone.ramachandran_angles(positions, 0)
            legacy["ramachandran"] = [round_significant(ramachandran_histogram(*angles, weights[:, i])) for i in index]
    elif histograms:
        entry["ramachandran"] = []
        for residue in range(len(backbone.labels)):
            angles = backbone.ramachandran_angles(positions, residue)
            entry["ramachandran"].append(None if angles is None else [
                round_significant(ramachandran_histogram(*angles, weights[:, i])) for i in index])
    return entry, legacy, messages


def reference_value(reference: Reference, backbone: Backbone, residue: int, key: str, temperature: float) -> Any:
    """``key`` (of ``phi_basins``: ``p_positive``, ``delta_f``, ``delta_f_sem``, ``ramachandran``, ...) of
    ``backbone``'s ``residue`` at ``temperature`` K in ``reference``; None when absent, null, or not a summary
    temperature. A molecule with one φ reads the summary's top-level key when there is one (a dipeptide's); any
    other finds its residue by label in ``phi_basins``."""
    if len(backbone.labels) == 1 and _LEGACY_KEYS[key] in reference.summary:
        return reference.value(_LEGACY_KEYS[key], temperature)
    basins = reference.summary.get("phi_basins") or {}
    labels, i = basins.get("labels") or [], reference.index(temperature)
    if i is None or key not in basins or backbone.labels[residue] not in labels:
        return None
    row = basins[key][labels.index(backbone.labels[residue])]
    return None if row is None else row[i]

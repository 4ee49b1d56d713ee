"""Basin-calibrated proposals: a generator's conformational-basin masses corrected at every temperature.

A flow can get the shape of a basin (a cis peptide bond, the φ > 0 region) roughly right and still give it the
wrong mass, above all a rare basin whose share grows with temperature. The importance weights of its samples then
carry most of Σw² and the Kish ESS collapses. A *basin calibration* tilts the proposal by binary features
``s_f(x) ∈ {0, 1}`` (f = 1..F; e.g. "the ACE–ALA peptide bond is cis", "φ > 0"):

    q'(x | T) = q(x | T) exp(t(x)) / Z(T),   t(x) = min(Σ_f a_f(T) s_f(x), C(T)),   Z(T) = E_q[exp(t)],

with ``C = max(0, max_f a_f)`` (a configuration with several boosted features gets the largest single boost,
which keeps the rejection sampler below efficient) and log-odds ``a_f(T)`` chosen so that q' gives every feature
its Boltzmann share, as estimated by the generator itself: at each node of a temperature grid, n samples of
``q(x | T)`` get importance weights ``w ∝ exp(−U/k_BT) / q`` (truncated at √n times their mean, which trades a
small bias of the *calibration* for much less noise), the weighted shares ``p_f`` are formed, and ``a`` solves
``Σ_i e^{a·s_i} s_if / Σ_i e^{a·s_i} = p_f`` on the same samples (iterative proportional fitting; a feature
seen fewer than 20 times on either side, or a node whose draw has a Kish ESS below 50 samples, keeps a_f = 0). Between
nodes, ``a`` and ``log Z`` are interpolated linearly in β = 1/(k_B T), and held at the end values outside the
grid. No data away from T0 is used: as for TRADE's ``E_β[U]``, the masses come from the model and the energy.

Sampling q' is exact rejection sampling from q (accept with probability ``exp(t(x) − C)``, on average
``Z e^{−C}``), so the weights ``w' = exp(−U/k_BT) / q'`` stay exact for any ``a``: a poor calibration costs ESS
and rejected draws, never bias. Rejected draws cost flow passes only, no energy evaluations. ``log Z`` is the
calibration draw's Monte-Carlo estimate, so ``log q'`` is exact up to a constant per temperature; self-normalised
weights do not depend on it. ``|a_f|`` is capped at ``log(max_ratio)``.

>>> import numpy as np
>>> feature = BasinFeature("x > 0", "positive_coordinate", (0,))
>>> feature(np.array([[-1.0], [2.0]])).tolist()
[False, True]
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trade_md.errors import InputError, SystemMismatchError
from trade_md.features import dihedral_angles, peptide_bonds, phi_dihedrals
from trade_md.formats.files import read_json, write_json_atomic
from trade_md.thermo import beta, to_kelvin

__all__ = ["BasinFeature", "BasinCalibration", "peptide_features", "features_for", "feature_matrix", "tilt",
           "model_fingerprint", "calibrate", "CALIBRATION_FILE"]

CALIBRATION_FILE = "basin_calibration.json"
"""Where ``trade-md calibrate`` writes a run's calibration by default (inside the run directory)."""

FEATURE_KINDS = ("cis", "positive_dihedral", "positive_coordinate")
MIN_FEATURE_SAMPLES = 20
"""A feature needs this many calibration samples on each side (s = 0 and s = 1) to be calibrated; else a_f = 0."""
MIN_EFFECTIVE_SAMPLES = 50.0
"""A grid node whose calibration draw has a smaller Kish ESS (in samples) is left uncalibrated (a = 0): its
reweighted shares would rest on a handful of weights."""


@dataclass(frozen=True)
class BasinFeature:
    """A binary feature of a configuration.

    kind ``"cis"``: |dihedral of the four ``atoms``| < 90°; ``"positive_dihedral"``: that dihedral > 0;
    ``"positive_coordinate"``: ``x[:, atoms[0]] > 0`` (toys, positions ``[n, d]``).
    """

    name: str
    kind: str
    atoms: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise InputError(f"unknown basin feature kind {self.kind!r}; use one of {FEATURE_KINDS}")
        expected = 1 if self.kind == "positive_coordinate" else 4
        if len(self.atoms) != expected:
            raise InputError(f"a {self.kind!r} feature needs {expected} atom or coordinate indices, got {self.atoms}")

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """``bool [n]`` for positions ``[n, atoms, 3]`` nm (``[n, d]`` for ``positive_coordinate``)."""
        positions = np.asarray(positions, dtype=np.float64)
        if self.kind == "positive_coordinate":
            return positions[:, self.atoms[0]] > 0.0
        angle = dihedral_angles(positions, [self.atoms])[:, 0]
        return np.abs(angle) < 0.5 * math.pi if self.kind == "cis" else angle > 0.0


def peptide_features(topology: Any) -> list[BasinFeature]:
    """The basin features of a peptide: every peptide bond's ω cis (:func:`trade_md.features.peptide_bonds`, named
    e.g. ``"ACE1-ALA2 cis"``) and every residue's φ > 0 (:func:`trade_md.features.phi_dihedrals`, named e.g.
    ``"ALA2 phi > 0"`` after the residue's name and position in the chain). topology: ``openmm.app.Topology``."""
    residue_of = {atom.index: f"{residue.name}{i + 1}" for i, residue in enumerate(topology.residues())
                  for atom in residue.atoms()}
    cis = [BasinFeature(f"{bond.label} cis", "cis", bond.atoms) for bond in peptide_bonds(topology)]
    phi = [BasinFeature(f"{residue_of[phi.atoms[2]]} phi > 0", "positive_dihedral", phi.atoms)
           for phi in phi_dihedrals(topology)]
    return cis + phi


def features_for(system: Any) -> list[BasinFeature]:
    """Default features of a system: :func:`peptide_features` for molecules, the sign of the first coordinate for
    the double-well toys. Raises :class:`InputError` if there are none."""
    if hasattr(system, "topology"):
        features = peptide_features(system.topology)
    elif getattr(system, "name", "").startswith("double-well"):
        features = [BasinFeature("x0 > 0", "positive_coordinate", (0,))]
    else:
        features = []
    if not features:
        raise InputError(f"{getattr(system, 'name', 'this system')} has no basin features to calibrate (no peptide "
                         "bonds or backbone dihedrals); sample from q(x | T) without a calibration")
    return features


def feature_matrix(features: Sequence[BasinFeature], positions: np.ndarray) -> np.ndarray:
    """``float [n, F]`` of 0/1 feature values."""
    return np.stack([feature(positions) for feature in features], axis=1).astype(np.float64)


def model_fingerprint(generator: torch.nn.Module) -> str:
    """SHA-256 of a generator's weights (names and values): identifies the model a calibration belongs to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class BasinCalibration:
    """Per-feature log-odds ``a [k, F]`` and ``log Z [k]`` on a temperature grid ``[k]`` K, see the module docs.

    nodes: per grid temperature, the calibration draw's diagnostics (each feature's share in q and reweighted, the
    draw's Kish ESS, which features were calibrated). energy_evaluations: what the calibration cost.
    """

    features: list[BasinFeature]
    temperatures: list[float]
    log_odds: list[list[float]]
    log_normalizer: list[float]
    model_fingerprint: str
    samples_per_temperature: int
    max_ratio: float
    energy_evaluations: int
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def at(self, temperature: float) -> tuple[np.ndarray, float]:
        """``(a [F], log Z)`` at ``temperature`` K, linear in β between grid nodes, constant outside
        (the tilt's cap is ``C = max(0, max a)``)."""
        betas = np.array([beta(t) for t in self.temperatures])
        order = np.argsort(betas)
        target = beta(temperature)
        log_odds = np.asarray(self.log_odds, dtype=np.float64)[order]
        a = np.array([np.interp(target, betas[order], log_odds[:, f]) for f in range(log_odds.shape[1])])
        log_z = float(np.interp(target, betas[order], np.asarray(self.log_normalizer, dtype=np.float64)[order]))
        return a, log_z

    def log_tilt(self, positions: np.ndarray, temperature: float) -> np.ndarray:
        """``log q'(x | T) − log q(x | T) = t(x) − log Z`` ``[n]``."""
        a, log_z = self.at(temperature)
        return tilt(feature_matrix(self.features, positions), a) - log_z

    def describe(self) -> list[str]:
        """One line per grid temperature: each feature's share in q and its reweighted (Boltzmann) share, and a."""
        lines = []
        for node, a in zip(self.nodes, self.log_odds):
            effective = node["ess_q"] * self.samples_per_temperature
            if effective < MIN_EFFECTIVE_SAMPLES:
                lines.append(f"{node['temperature_k']:7.1f} K: not calibrated, the draw's Kish ESS is {effective:.1f} "
                             f"samples (< {MIN_EFFECTIVE_SAMPLES:g}): train the model further or draw more samples")
                continue
            shares = ", ".join(f"{feature.name} {100 * q:.2f} -> {100 * p:.2f} %" if used else
                               f"{feature.name} {100 * q:.2f} % (too few samples, not calibrated)"
                               for feature, q, p, used in zip(self.features, node["q_share"], node["p_share"],
                                                              node["calibrated"]))
            lines.append(f"{node['temperature_k']:7.1f} K: {shares}; log-odds {np.round(a, 2).tolist()}")
        return lines

    def check_model(self, generator: torch.nn.Module, source: str = "the calibration") -> None:
        """Raise :class:`SystemMismatchError` if ``generator`` is not the model this calibration was made for."""
        if model_fingerprint(generator) != self.model_fingerprint:
            raise SystemMismatchError(f"{source} was made for another model (its weights differ); run "
                                      "`trade-md calibrate --model RUN` for this one")

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON (atomically); returns the path."""
        write_json_atomic(path, {"format": "trade-md basin calibration 1", **asdict(self)})
        return Path(path)

    @classmethod
    def of_run(cls, model: str | os.PathLike, option: str = "--calibrated") -> BasinCalibration:
        """The calibration ``trade-md calibrate`` wrote into run directory ``model``; a clear error if there is none
        (``option`` names the switch the user can drop instead)."""
        path = Path(model) / CALIBRATION_FILE
        if not path.is_file():
            raise InputError(f"{model} has no basin calibration ({CALIBRATION_FILE}); run `trade-md calibrate --model "
                             f"{model}` first, or leave out {option}")
        return cls.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BasinCalibration:
        """Read a calibration written by :meth:`save`; a missing or foreign file raises :class:`InputError`."""
        record = read_json(path)
        if not isinstance(record, dict) or record.pop("format", None) != "trade-md basin calibration 1":
            raise InputError(f"{path} is not a trade-md basin calibration; make one with `trade-md calibrate`")
        record["features"] = [BasinFeature(f["name"], f["kind"], tuple(f["atoms"])) for f in record["features"]]
        return cls(**record)


def tilt(features: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``t = min(features @ a, max(0, max a))`` ``[n]`` for features ``[n, F]`` and log-odds ``a [F]``."""
    return np.minimum(features @ a, max(0.0, float(np.max(a, initial=0.0))))


def rake(features: np.ndarray, targets: np.ndarray, active: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Log-odds ``a [F]`` with ``Σ_i e^{a·s_i} s_if / Σ_i e^{a·s_i} = targets_f`` for the ``active`` features
    (iterative proportional fitting on the sample's features ``[n, F]``); inactive features keep ``a_f = 0``."""
    a = np.zeros(features.shape[1])
    for _ in range(iterations):
        worst = 0.0
        for f in np.flatnonzero(active):
            tilt = np.exp(features @ a - np.max(features @ a))
            share = float(np.sum(tilt * features[:, f]) / np.sum(tilt))
            worst = max(worst, abs(share - targets[f]))
            a[f] += math.log(targets[f] / share) - math.log((1.0 - targets[f]) / (1.0 - share))
        if worst < 1e-9:
            break
    return a


def calibrate(
    sampler: Any, features: Sequence[BasinFeature], temperatures: Sequence[Any], n: int = 50000, *,
    max_ratio: float = 20.0, seed: int = 0, batch_size: int = 4096, progress: bool = True,
) -> BasinCalibration:
    """Calibrate ``sampler``'s generator at ``temperatures`` (K or quantities) with ``n`` samples each.

    sampler: a :class:`trade_md.sampler.Sampler` (its own calibration, if any, is not used). Costs
    ``n × len(temperatures)`` energy evaluations.
    """
    if n < 100:
        raise InputError(f"a calibration needs at least 100 samples per temperature, got {n}")
    if not max_ratio > 1.0:
        raise InputError(f"max_ratio must be > 1, got {max_ratio}")
    grid = sorted({to_kelvin(t) for t in temperatures})
    if not grid:
        raise InputError("give at least one calibration temperature")
    features = list(features)
    cap = math.log(max_ratio)
    log_odds, log_normalizer, nodes = [], [], []
    for k, temperature in enumerate(grid):
        torch.manual_seed(seed + k)
        samples = sampler.sample(n, temperature, batch_size=batch_size, progress=progress, calibrated=False)
        s = feature_matrix(features, samples.positions)
        w = np.exp(samples.log_weights - np.max(samples.log_weights))
        kept = np.count_nonzero(w)
        w = np.minimum(w, np.sum(w) / kept * math.sqrt(kept))
        w /= w.sum()
        counts = s.sum(axis=0)
        targets = w @ s
        active = (counts >= MIN_FEATURE_SAMPLES) & (n - counts >= MIN_FEATURE_SAMPLES) & (targets > 0) & (targets < 1)
        active &= samples.ess * n >= MIN_EFFECTIVE_SAMPLES
        a = np.clip(rake(s, targets, active), -cap, cap)
        log_odds.append(a.tolist())
        log_normalizer.append(float(np.log(np.mean(np.exp(tilt(s, a))))))
        nodes.append({"temperature_k": temperature, "ess_q": samples.ess, "q_share": (counts / n).tolist(),
                      "p_share": targets.tolist(), "calibrated": active.tolist()})
    return BasinCalibration(features, grid, log_odds, log_normalizer, model_fingerprint(sampler.generator), int(n),
                            float(max_ratio), int(n * len(grid)), nodes)

"""Basin features and calibration: dihedrals against mdtraj, the raking solution, the saved file, bad input.

The calibrated proposal itself (exact weights, normalisation, basin masses) is tested in test_sampler.py on the
double-well model there.
"""

from __future__ import annotations

from pathlib import Path

import mdtraj
import numpy as np
import pytest

from trade_md.basins import (
    BasinCalibration,
    BasinFeature,
    feature_matrix,
    features_for,
    peptide_features,
    rake,
    tilt,
)
from trade_md.errors import InputError
from trade_md.features import dihedral_angles
from trade_md.systems import load_system
from trade_md.toys import DoubleWell1D, HarmonicOscillator


def test_peptide_features_of_alanine_dipeptide_match_mdtraj(rng: np.random.Generator) -> None:
    # The three features are the two peptide bonds' omega (CH3-C-N-CA, CA-C-N-C) and phi; their dihedrals must
    # equal mdtraj's to float32 precision on distorted frames, and "cis" must be |omega| < 90 degrees.
    system = load_system("alanine-dipeptide")
    features = peptide_features(system.topology)
    assert [f.name for f in features] == ["ACE1-ALA2 cis", "ALA2-NME3 cis", "ALA2 phi > 0"]
    atoms = {(a.residue.name, a.name): a.index for a in system.topology.atoms()}
    assert features[0].atoms == (atoms["ACE", "CH3"], atoms["ACE", "C"], atoms["ALA", "N"], atoms["ALA", "CA"])
    assert features[1].atoms == (atoms["ALA", "CA"], atoms["ALA", "C"], atoms["NME", "N"], atoms["NME", "C"])
    positions = system.positions[None] + 0.08 * rng.normal(size=(400, system.n_atoms, 3))
    trajectory = mdtraj.Trajectory(positions.astype(np.float32), mdtraj.Topology.from_openmm(system.topology))
    angles = mdtraj.compute_dihedrals(trajectory, [list(f.atoms) for f in features])
    for k, feature in enumerate(features):
        np.testing.assert_allclose(dihedral_angles(positions, [feature.atoms])[:, 0], angles[:, k], atol=1e-4)
    s = feature_matrix(features, positions)
    np.testing.assert_array_equal(s[:, 0], np.abs(angles[:, 0]) < np.pi / 2)
    np.testing.assert_array_equal(s[:, 2], angles[:, 2] > 0)
    assert 0 < s[:, 0].sum() < len(s)  # the distortion makes both outcomes occur, so the check means something


def test_rake_meets_targets_and_tilt_caps_the_boost(rng: np.random.Generator) -> None:
    s = (rng.random((5000, 3)) < [0.3, 0.05, 0.5]).astype(float)
    targets = np.array([0.2, 0.15, 0.5])
    a = rake(s, targets, np.array([True, True, False]))
    r = np.exp(s @ a)
    np.testing.assert_allclose((r @ s[:, :2]) / r.sum(), targets[:2], atol=1e-8)
    assert a[2] == 0.0 and a[0] < 0 < a[1]
    # the tilt of a configuration with several boosted features is capped at the largest single boost
    both = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    np.testing.assert_allclose(tilt(both, np.array([1.0, 2.0, 0.5])), [2.0, 2.0])
    np.testing.assert_allclose(tilt(both, np.array([-1.0, -2.0, 0.0])), [-3.0, -2.0])


def test_calibration_file_round_trip_and_interpolation(tmp_path: Path) -> None:
    feature = BasinFeature("x0 > 0", "positive_coordinate", (0,))
    calibration = BasinCalibration([feature], [300.0, 600.0], [[0.0], [1.0]], [0.0, 0.4], "abc", 100, 20.0, 200)
    path = calibration.save(tmp_path / "cal.json")
    loaded = BasinCalibration.load(path)
    assert loaded == calibration
    # linear in beta between the nodes, constant outside
    beta = lambda t: 1.0 / t  # noqa: E731 (kB cancels in the fraction)
    a, log_z = loaded.at(400.0)
    fraction = (beta(300.0) - beta(400.0)) / (beta(300.0) - beta(600.0))
    np.testing.assert_allclose(a, [fraction])
    assert log_z == pytest.approx(0.4 * fraction)
    assert loaded.at(1000.0)[0][0] == 1.0 and loaded.at(100.0)[0][0] == 0.0
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a trade-md basin calibration"):
        BasinCalibration.load(tmp_path / "other.json")
    with pytest.raises(InputError, match="does not exist"):
        BasinCalibration.load(tmp_path / "missing.json")


def test_bad_features_and_systems_without_basins() -> None:
    with pytest.raises(InputError, match="unknown basin feature kind"):
        BasinFeature("x", "trans", (0, 1, 2, 3))
    with pytest.raises(InputError, match="needs 4"):
        BasinFeature("omega", "cis", (0, 1, 2))
    assert [f.name for f in features_for(DoubleWell1D())] == ["x0 > 0"]
    with pytest.raises(InputError, match="no basin features"):
        features_for(HarmonicOscillator())

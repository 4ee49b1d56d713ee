"""Tests of trade_md.convergence: block standard errors, basin entries per run, the convergence report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trade_md.convergence import (
    ConvergenceWarning,
    block_standard_error,
    convergence_report,
    dataset_convergence,
)
from trade_md.systems import load_system


def test_block_standard_error_for_correlated_series(rng: np.random.Generator) -> None:
    white = rng.normal(size=2**15)
    assert block_standard_error([white]) == pytest.approx(1.0 / math.sqrt(white.size), rel=0.25)
    # AR(1) with rho = 0.9: SE = sigma/sqrt(n) * sqrt((1 + rho)/(1 - rho)) = sqrt(19)/sqrt(n) for sigma = 1.
    rho, n = 0.9, 2**16
    noise = rng.normal(scale=math.sqrt(1 - rho**2), size=n)
    series = np.empty(n)
    series[0] = rng.normal()
    for t in range(1, n):
        series[t] = rho * series[t - 1] + noise[t]
    expected = math.sqrt((1 + rho) / (1 - rho) / n)
    assert block_standard_error([series]) == pytest.approx(expected, rel=0.3)
    assert block_standard_error([series[:4]]) != block_standard_error([series[:4]])  # NaN with too few frames


def test_convergence_report_counts_and_warns() -> None:
    # Two runs of 4,000 frames; each alternates 100 frames in φ<0 (−1.2) and 25 frames in φ>0 (+1.0).
    one_run = np.tile(np.r_[np.full(100, -1.2), np.full(25, 1.0)], 32)
    phi = np.concatenate([one_run, one_run])[:, None]
    run = np.repeat([0, 1], one_run.size)
    report = convergence_report(phi, run, ["ALA 2"])
    entry = report["dihedrals"][0]
    assert entry["entries_phi_positive"] == 64 and entry["entries_phi_negative"] == 62
    assert entry["population_phi_positive"] == pytest.approx(0.2)
    assert entry["relative_error"] < 0.2 and report["converged"] is True and report["warnings"] == []
    short = convergence_report(phi[:500], run[:500], ["ALA 2"])
    assert short["converged"] is False
    assert any("only 4 entries into the φ>0 basin" in line for line in short["warnings"])
    none = convergence_report(np.empty((10, 0)), np.zeros(10, dtype=int), [])
    assert none["converged"] is None and "no backbone φ" in none["warnings"][0]


def test_spread_of_run_means_is_judged_from_four_runs() -> None:
    def run_with(positive: int) -> np.ndarray:  # 32 visits, ``positive`` % of the frames at φ > 0
        return np.tile(np.r_[np.full(100 - positive, -1.2), np.full(positive, 1.0)], 32)

    for fractions in ((15, 25), (15, 25, 15, 25)):
        phi = np.concatenate([run_with(f) for f in fractions])[:, None]
        run = np.repeat(np.arange(len(fractions)), 3200)
        entry = convergence_report(phi, run)["dihedrals"][0]
        assert entry["across_runs_standard_error"] == pytest.approx(
            np.std(np.array(fractions) / 100, ddof=1) / math.sqrt(len(fractions)))
        assert entry["block_standard_error"] < entry["across_runs_standard_error"]
        judged = entry["block_standard_error"] if len(fractions) < 4 else entry["across_runs_standard_error"]
        assert entry["standard_error"] == judged


def test_dataset_convergence_of_frames_matches_mdtraj_phi_and_warns(rng: np.random.Generator) -> None:
    """The report of real frames: φ from trade_md.features equals mdtraj's compute_phi (the earlier route), the
    label names the residue, the report is strict JSON, and a short dataset raises ConvergenceWarning."""
    import mdtraj

    ala2 = load_system("alanine-dipeptide")
    positions = ala2.positions[None] + rng.normal(scale=0.02, size=(60, ala2.n_atoms, 3))
    run = np.repeat([0, 1], 30)
    with pytest.warns(ConvergenceWarning) as warned:
        report = dataset_convergence(ala2.topology, positions, run, remedy="increase the data")
    assert [str(w.message) for w in warned] == report["warnings"] and "increase the data" in report["warnings"][-1]
    _, phi = mdtraj.compute_phi(mdtraj.Trajectory(positions, mdtraj.Topology.from_openmm(ala2.topology)))
    expected = convergence_report(phi.astype(np.float64), run, ["ALA 2"], remedy="increase the data")
    assert report == expected and report["dihedrals"][0]["label"] == "ALA 2"
    assert report["dihedrals"][0]["population_phi_positive"] == pytest.approx(float(np.mean(phi > 0)))
    json.dumps(report, allow_nan=False)  # undefined errors are null, not NaN

"""benchmarks/boundary_limits.py: a data subset keeps each replica's first frames and exactly the run's held-out
frames, so fits on different amounts of data are validated on the same frames."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from trade_md.config import DataConfig
from trade_md.formats.dataset import load_dataset, write_dataset
from trade_md.systems import load_system

from benchmark_module import load_benchmark

boundary_limits = load_benchmark("boundary_limits")


def test_a_data_subset_keeps_the_first_frames_of_each_replica_and_the_same_validation_frames(tmp_path: Path) -> None:
    system = load_system("alanine-dipeptide")
    run = np.repeat([0, 1], [30, 27])                                     # two replicas, contiguous, unequal
    n = run.size
    positions = system.positions[None] + 0.01 * np.arange(n)[:, None, None]   # frame i shifted by 0.01 i nm
    write_dataset(tmp_path / "pooled", system, 600.0, positions=positions, energies=np.arange(n, dtype=float),
                  times=np.arange(n, dtype=float), run=run, record={}, convergence={})
    full = load_dataset(tmp_path / "pooled")
    held_out = DataConfig(validation_fraction=0.1).split(full.energies)[1]          # the run's: last 6 frames
    fraction = boundary_limits.data_subset(full, 0.1, 0.5, tmp_path / "half")
    half = load_dataset(tmp_path / "half")
    training, validation = DataConfig(validation_fraction=fraction).split(half.energies)
    np.testing.assert_array_equal(validation, held_out)
    np.testing.assert_array_equal(training, np.r_[0:15, 30:40])     # half of 30 and of 21 (round(10.5) = 10)
    shift = half.positions[:, 0] - system.positions[0]                       # the frames came with their energies
    np.testing.assert_allclose(shift, np.repeat(0.01 * half.energies[:, None], 3, axis=1), atol=1e-6)
    assert half.metadata["fraction"] == 0.5 and list(np.unique(half.run)) == [0, 1]


def test_vary_changes_one_setting_of_the_run_boundary_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = load_system("alanine-dipeptide")
    n = 20
    write_dataset(tmp_path / "pooled", system, 600.0, positions=np.repeat(system.positions[None], n, axis=0),
                  energies=np.zeros(n), times=np.arange(n, dtype=float), run=np.zeros(n, dtype=int), record={},
                  convergence={})
    (tmp_path / "run" / "boundary").mkdir(parents=True)
    (tmp_path / "run" / "boundary" / "train.yaml").write_text(yaml.safe_dump({
        "data": {"path": "elsewhere", "validation_fraction": 0.1}, "monitor": {"patience": 8},
        "objectives": {"nll": {"weight": 1.0}, "kl": {"weight": 0.5}}}))
    monkeypatch.setattr(boundary_limits, "fit", lambda run, values, out, steps: (values, out))
    key, values = boundary_limits.variation("objectives.kl.weight=1,2")
    assert (key, values) == ("objectives.kl.weight", [1, 2])
    dataset = load_dataset(tmp_path / "pooled")
    changed, out = boundary_limits.varied_fit(tmp_path / "run", dataset, key, 2, 100, tmp_path / "work")
    assert out == tmp_path / "work" / "objectives.kl.weight=2"
    assert changed["objectives"] == {"nll": {"weight": 1.0}, "kl": {"weight": 2}}
    assert changed["data"] == {"path": str(tmp_path / "pooled"), "validation_fraction": 0.1}   # not a copy
    assert not (tmp_path / "work").exists()
    assert changed["monitor"] == {"patience": 0, "validations": 0}          # every held-out frame, no early stop
    with pytest.raises(SystemExit, match="boundary config has no objectives.klx$"):
        boundary_limits.varied_fit(tmp_path / "run", dataset, "objectives.klx.weight", 2, 100, tmp_path / "work")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=V1,V2"):
        boundary_limits.variation("objectives.kl.weight")


def test_dihedral_windows_fits_through_boundary_limits() -> None:
    """The two benchmarks share one fit (benchmarks/ on the path, as when the scripts run)."""
    assert load_benchmark("dihedral_windows").fit.__module__ == "boundary_limits"

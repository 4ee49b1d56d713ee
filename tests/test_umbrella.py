"""Umbrella sampling along φ: the MBAR unbiasing against a 1-D periodic potential solved by quadrature, the OpenMM
bias against its formula, and a tiny alanine-dipeptide run through run/resume/analyse.

Statistical assertions: |estimate − exact| < 4 σ with the bootstrap σ of the estimate; the same test fed the
wrong force constant, or the windows pooled without unbiasing, misses by far more (so it can fail).
"""

from __future__ import annotations

import json
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest

from trade_md.analysis.umbrella import analyse_umbrella, bias_energies, unbias_windows
from trade_md.cli import main
from trade_md.errors import InputError, SystemMismatchError
from trade_md.features import ramachandran, ramachandran_atoms, wrap_angle
from trade_md.formats.reference import load_reference
from trade_md.formats.umbrella import UmbrellaSettings
from trade_md.systems import load_system
from trade_md.thermo import KB
from trade_md.umbrella import BIAS_GROUP, biased_system, run_umbrella, swap_log_acceptance

N_SIGMA = 4.0
TEMPERATURE = 300.0
GRID = np.linspace(-math.pi, math.pi, 40_001)[:-1] + math.pi / 40_000  # bin centres on [−π, π)


def potential(phi: np.ndarray) -> np.ndarray:
    """A periodic double well, kJ/mol: deep minimum near −1.9 rad, shallow one near +1.1 rad, barriers ~20 kJ/mol."""
    return 9.0 * np.sin(phi) - 8.0 * np.cos(2.0 * phi) + 3.0 * np.cos(phi)


def exact(temperature: float) -> dict[str, float]:
    """ΔF (k_BT), P(φ > 0) and ⟨U⟩ (kJ/mol) by quadrature on a 40,000-point grid."""
    density = np.exp(-(potential(GRID) - potential(GRID).min()) / (KB * temperature))
    density /= density.sum()
    p = float(density[GRID > 0].sum())
    return {"delta_f": -math.log(p / (1 - p)), "p": p, "energy": float(density @ potential(GRID))}


def window_samples(rng: np.random.Generator, centres: np.ndarray, kappa: float, n: int) -> list[np.ndarray]:
    """Exact independent draws of φ from each window's biased density ∝ exp(−β (U + b_k)), by inverse CDF."""
    beta = 1.0 / (KB * TEMPERATURE)
    draws = []
    for centre in centres:
        log_density = -beta * (potential(GRID) + 0.5 * kappa * wrap_angle(GRID - centre) ** 2)
        cdf = np.cumsum(np.exp(log_density - log_density.max()))
        draws.append(np.interp(rng.random(n) * cdf[-1], cdf, GRID))
    return draws


def test_wrapped_angle_and_bias_are_periodic():
    centres = np.array([-math.pi, 0.0, 3.0])
    phi = np.array([-3.1, 3.1, 0.5])
    bias = bias_energies(phi, centres, 10.0)
    assert bias.shape == (3, 3)
    np.testing.assert_allclose(bias[0], 5.0 * np.array([math.pi - 3.1, math.pi - 3.1, math.pi - 0.5]) ** 2)
    np.testing.assert_allclose(bias[2, 0], 5.0 * (2 * math.pi - 6.1) ** 2)  # across ±π, not the long way round
    assert np.all(np.abs(wrap_angle(np.linspace(-10, 10, 101) - 2.0)) <= math.pi)


def test_unbiasing_recovers_quadrature_within_4_sigma(rng):
    settings = UmbrellaSettings(temperatures=(TEMPERATURE,), n_windows=24, width_deg=9.0)
    kappa = settings.force_constant(TEMPERATURE)
    phi = window_samples(rng, settings.centres, kappa, 1500)
    truth = exact(TEMPERATURE)
    energies = [potential(p) for p in phi]
    result = unbias_windows(phi, settings.centres, kappa, TEMPERATURE, energies=energies, n_bootstrap=40)
    assert 1.5 < truth["delta_f"] < 5.0  # a minor basin of a few per cent, as alanine dipeptide's φ > 0 at 300 K
    assert abs(result["delta_f_kT"] - truth["delta_f"]) < N_SIGMA * result["delta_f_sem_kT"]
    assert abs(result["p_phi_positive"] - truth["p"]) < N_SIGMA * result["p_phi_positive_sem"]
    assert abs(result["mean_energy"] - truth["energy"]) < N_SIGMA * result["mean_energy_sem"]
    assert 0.005 < result["delta_f_sem_kT"] < 0.1  # informative, not padded
    assert result["mbar_converged"] and not result["warnings"]
    # the profile: exact F(φ) averaged over each bin, relative to its minimum, within 4 σ where F < 8 k_BT
    edges = np.asarray(result["pmf_bin_edges"])
    density = np.exp(-potential(GRID) / (KB * TEMPERATURE))
    mass = np.array([density[(GRID >= a) & (GRID < b)].sum() for a, b in zip(edges[:-1], edges[1:])])
    exact_profile = -np.log(mass / mass.max())
    low = exact_profile < 8.0
    z = (np.asarray(result["pmf_kT"]) - exact_profile)[low] / np.asarray(result["pmf_sem_kT"])[low]
    assert np.all(np.abs(z) < N_SIGMA + 0.5), z  # 36 bins at once: a little above the single-estimate bound

    # the same test can fail: the wrong force constant, or the windows pooled as if unbiased
    wrong = unbias_windows(phi, settings.centres, 0.5 * kappa, TEMPERATURE, n_bootstrap=10)
    assert abs(wrong["delta_f_kT"] - truth["delta_f"]) > 2 * N_SIGMA * result["delta_f_sem_kT"]
    pooled = np.concatenate(phi)
    naive = -math.log(np.mean(pooled > 0) / np.mean(pooled < 0))
    assert abs(naive - truth["delta_f"]) > 2 * N_SIGMA * result["delta_f_sem_kT"]


def test_settings_reject_bad_input():
    with pytest.raises(InputError, match="> 0 K"):
        UmbrellaSettings(temperatures=(0.0,))
    with pytest.raises(InputError, match="do not overlap"):
        UmbrellaSettings(temperatures=(300.0,), n_windows=36, width_deg=1.0)
    with pytest.raises(InputError, match="at least 4"):
        UmbrellaSettings(temperatures=(300.0,), n_windows=2)
    with pytest.raises(InputError, match="whole multiple"):
        UmbrellaSettings(temperatures=(300.0,), exchange_every_ps=0.04)  # would round to no exchanges at all
    with pytest.raises(InputError, match="even number"):
        UmbrellaSettings(temperatures=(300.0,), n_windows=35)
    UmbrellaSettings(temperatures=(300.0,), n_windows=35, exchange_every_ps=0.0)  # independent windows: any number
    with pytest.raises(InputError, match="repeat"):
        UmbrellaSettings(temperatures=(300.0, 300.000001))
    with pytest.raises(InputError, match="seed"):
        UmbrellaSettings(temperatures=(300.0,), seed=-1)
    assert main(["umbrella", "--system", "alanine-dipeptide", "--temperatures", "-5", "--out", "x"]) == 2


@pytest.fixture(scope="module")
def ala2():
    return load_system("alanine-dipeptide")


def test_openmm_bias_matches_formula_across_the_circle(ala2, rng):
    atoms = ramachandran_atoms(ala2.topology)[0]
    integrator = openmm.VerletIntegrator(1.0 * unit.femtosecond)
    plain = openmm.Context(ala2.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    positions = ala2.positions + rng.normal(0.0, 0.01, size=(5,) + ala2.positions.shape)
    phi, _ = ramachandran(ala2.topology, positions)
    kappa = 250.0
    for centre in (-math.pi, -1.0, 0.3, 2.9, phi[0] + math.pi - 0.05):
        system = biased_system(ala2, atoms, float(wrap_angle(centre)), kappa)
        biased = openmm.Context(system, openmm.VerletIntegrator(1.0 * unit.femtosecond),
                                openmm.Platform.getPlatformByName("Reference"))
        for x, angle in zip(positions, phi):
            plain.setPositions(x)
            biased.setPositions(x)
            total = biased.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            bias_only = biased.getState(getEnergy=True, groups={BIAS_GROUP}).getPotentialEnergy()
            u0 = plain.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            expected = float(bias_energies(np.array([angle]), np.array([centre]), kappa)[0, 0])
            # φ evaluated in float64 here and by OpenMM: far below κ·d·1e-6 rad ≤ 1e-3 kJ/mol
            assert abs(total - u0 - expected) < 1e-3
            assert abs(bias_only.value_in_unit(unit.kilojoule_per_mole) - expected) < 1e-3


def test_run_resume_and_analyse_tiny(ala2, tmp_path):
    settings = UmbrellaSettings(temperatures=(300.0, 500.0), n_windows=12, width_deg=10.0, ns_per_window=0.003,
                                equilibration_ps=1.0, chunk_ps=1.0)
    out = tmp_path / "us"
    summary = run_umbrella(ala2, settings, out, progress=False, block_ps=0.3, stride_ps=0.1)
    assert summary["temperatures"] == [300.0, 500.0]
    assert len(summary["per_temperature"][0]["windows"]["centre_deg"]) == 12
    assert 0 < np.mean(summary["per_temperature"][0]["exchange_acceptance"]) <= 1
    assert summary["per_temperature"][0]["wrong_chirality_frames"] == 0
    assert summary["per_temperature"][0]["frames_per_window_analysed"] == 30
    assert not any("holds only" in message for message in summary["warnings"])  # 10 blocks per window
    coarse = analyse_umbrella(out, block_ps=1.0, stride_ps=0.5, discard_ps=0.5, n_bootstrap=5)
    assert coarse["per_temperature"][0]["frames_per_window_analysed"] == 5
    assert any("only 2 bootstrap blocks" in message for message in coarse["warnings"])
    with pytest.raises(InputError, match="block_ps >= stride_ps"):
        analyse_umbrella(out, block_ps=0.1, stride_ps=0.5)
    with pytest.raises(InputError, match="leaves no frames"):
        analyse_umbrella(out, discard_ps=5.0)
    assert all(math.isfinite(v) for v in summary["delta_f_kT"] + summary["mean_energy"])
    assert (out / "profile.png").stat().st_size > 0 and (out / "profile.svg").is_file()
    reference = load_reference(out / "summary.json")  # usable as `trade-md evaluate --reference`
    assert reference.value("delta_f_kT", 500.0) == summary["delta_f_kT"][1]
    assert abs(np.sum(reference.value("ramachandran", 300.0)) - 1.0) < 1e-9
    first = np.load(out / "windows" / "T500K.npz")["phi"].copy()
    (out / "windows" / "T500K.npz").unlink()
    with pytest.raises(InputError, match="not finished"):
        analyse_umbrella(out)
    with pytest.raises(InputError, match="--resume"):
        run_umbrella(ala2, settings, out, progress=False)
    with pytest.raises(InputError, match="settings differ"):
        run_umbrella(ala2, UmbrellaSettings(**{**settings.__dict__, "width_deg": 35.0}), out, resume=True,
                     progress=False)
    with pytest.raises(SystemMismatchError, match="another system"):
        run_umbrella(load_system("alanine-dipeptide", constraints="HBonds"), settings, out, resume=True,
                     progress=False)
    again = run_umbrella(ala2, settings, out, resume=True, progress=False, block_ps=0.3, stride_ps=0.1)
    np.testing.assert_array_equal(np.load(out / "windows" / "T500K.npz")["phi"], first)  # same seed, same frames
    assert again["delta_f_kT"] == summary["delta_f_kT"]


def test_parallel_workers_give_the_same_windows(ala2, tmp_path):
    settings = UmbrellaSettings(temperatures=(400.0, 500.0), n_windows=4, width_deg=30.0, ns_per_window=0.002,
                                equilibration_ps=0.5)
    serial = run_umbrella(ala2, settings, tmp_path / "serial", progress=False, block_ps=0.2, stride_ps=0.1)
    parallel = run_umbrella(ala2, settings, tmp_path / "parallel", workers=2, progress=False, block_ps=0.2,
                            stride_ps=0.1)
    for name in ("windows/T400K.npz", "windows/T500K.npz"):
        np.testing.assert_array_equal(np.load(tmp_path / "serial" / name)["phi"],
                                      np.load(tmp_path / "parallel" / name)["phi"])
    assert serial["delta_f_kT"] == parallel["delta_f_kT"]


def test_interrupted_run_resumes_to_the_same_frames(ala2, tmp_path, monkeypatch):
    import trade_md.umbrella as umbrella

    settings = UmbrellaSettings(temperatures=(450.0,), n_windows=6, width_deg=20.0, ns_per_window=0.004,
                                equilibration_ps=0.5, exchange_every_ps=0.2, chunk_ps=1.0)
    whole = run_umbrella(ala2, settings, tmp_path / "whole", progress=False, block_ps=0.4, stride_ps=0.1)
    save = umbrella.save_windows
    calls = []

    def crash_after_two(path, progress):
        save(path, progress)
        calls.append(path)
        if len(calls) == 2:  # equilibrated + one chunk written
            raise KeyboardInterrupt

    monkeypatch.setattr(umbrella, "save_windows", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_umbrella(ala2, settings, tmp_path / "cut", progress=False)
    assert np.load(tmp_path / "cut" / "windows" / "T450K.npz")["phi"].shape == (6, 10)
    monkeypatch.setattr(umbrella, "save_windows", save)
    # the command line resumes from the record alone: settings, system and platform
    assert main(["umbrella", "--out", str(tmp_path / "cut"), "--resume", "--no-progress", "--block-ps", "0.4",
                 "--stride-ps", "0.1"]) == 0
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    for key in ("phi", "energy", "lineage", "accepts"):
        np.testing.assert_array_equal(np.load(tmp_path / "cut" / "windows" / "T450K.npz")[key],
                                      np.load(tmp_path / "whole" / "windows" / "T450K.npz")[key])
    assert resumed["delta_f_kT"] == whole["delta_f_kT"]
    whole_file = np.load(tmp_path / "whole" / "windows" / "T450K.npz")
    assert whole_file["accepts"].sum() > 0  # swaps happened
    # 40 frames, a sweep every 2 frames, alternating parity: 10 attempts per pair, whatever the chunking
    np.testing.assert_array_equal(whole_file["attempts"], 10)
    with pytest.raises(InputError, match="platform"):
        run_umbrella(ala2, settings, tmp_path / "cut", resume=True, platform="CPU", progress=False)
    (tmp_path / "cut" / "windows" / "T450K.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="damaged"):
        analyse_umbrella(tmp_path / "cut")


def test_swap_acceptance_is_the_bias_metropolis_ratio():
    beta, kappa = 1.0 / (KB * 300.0), 200.0
    centres = (-1.0, -0.8)
    # the configurations sit each at the other's centre: swapping removes all bias, always accepted
    assert swap_log_acceptance(-0.8, -1.0, *centres, kappa, beta) > 0
    # symmetric: the reverse move has the opposite log ratio (detailed balance)
    forward = swap_log_acceptance(-0.95, -0.7, *centres, kappa, beta)
    backward = swap_log_acceptance(-0.7, -0.95, *centres, kappa, beta)
    assert forward == pytest.approx(-backward)
    expected = -beta * 0.5 * kappa * ((-0.7 + 1.0) ** 2 + (-0.95 + 0.8) ** 2 - (-0.95 + 1.0) ** 2 - (-0.7 + 0.8) ** 2)
    assert forward == pytest.approx(expected)
    # across ±π the shortest angle counts
    assert swap_log_acceptance(3.1, -3.1, 3.0, -3.0, kappa, beta) == pytest.approx(
        -beta * 0.5 * kappa * ((math.pi * 2 - 6.1) ** 2 + (math.pi * 2 - 6.1) ** 2 - 0.1**2 - 0.1**2))

"""The weighted sampler: exact reweighting on a solvable toy, the basin-calibrated proposal, streaming output, range
checks, MCMC in openmmtools."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmmtools import cache, mcmc, states

from trade_md.analysis.mbar import tempering_reduced_potentials
from trade_md.annealing import Annealing
from trade_md.basins import CALIBRATION_FILE, BasinCalibration, calibrate, features_for
from trade_md.cli import main
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.checkpoint import SystemRecord
from trade_md.generator import molecule_generator
from trade_md.mcmc import GeneratorMove
from trade_md.sampler import OutOfRangeWarning, Sampler, write_samples
from trade_md.samples import SampleSet
from trade_md.systems import load_system
from trade_md.toys import DoubleWell1D
from trade_md.config import TrainConfig
from trade_md.trainer import Trainer
from trade_md.thermo import KB

T0 = 300.0


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained TRADE model of the 1-D double well (150–600 K), saved as a run directory."""
    from trade_md.toys import toy_generator

    toy = DoubleWell1D()
    config = TrainConfig.from_dict(dict(
        mode="trade", temperature_min=150.0, temperature_max=600.0, steps=30, batch_size=128, trade_batch_size=64,
        trade_start=10, trade_ramp=10, grid_nodes=5, grid_samples=200, grid_refresh_every=10, validate_every=10,
        checkpoint_every=30, learning_rate=3e-3, progress=False, seed=1, flow={"n_layers": 2, "hidden": 16, "n_bins": 8}))
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("toy_run")
    data = toy.sample(2000, T0, generator=torch.Generator().manual_seed(2))
    Trainer(toy_generator(toy, T0, **config.flow), config, SystemRecord.of(toy), potential=toy.potential,
            data=data, out=out).run()
    return out


def assert_mean_energy_matches(samples: SampleSet, exact: float) -> None:
    """The reweighted ⟨U⟩ agrees with ``exact`` within 4 bootstrap standard errors (100 resamples), and that
    error is small enough (5 % of |exact| + 0.05 kJ/mol) for the comparison to mean something."""
    estimate = float(np.sum(samples.weights * samples.energies))
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(100):
        i = rng.integers(0, len(samples), len(samples))
        w = np.exp(samples.log_weights[i] - samples.log_weights[i].max())
        boot.append(np.sum(w * samples.energies[i]) / w.sum())
    error = float(np.std(boot))
    assert error < 0.05 * abs(exact) + 0.05
    assert abs(estimate - exact) < 4.0 * error, (estimate, exact, error)


@pytest.mark.parametrize("temperature", [200.0, 450.0])
def test_reweighted_mean_energy_matches_exact(toy_run: Path, temperature: float) -> None:
    # Self-normalised importance sampling is consistent for any q covering the box: the estimate of ⟨U⟩_T must
    # agree with quadrature within 4 bootstrap standard errors, however rough the 30-step model is.
    toy = DoubleWell1D()
    with Sampler.from_checkpoint(toy_run) as sampler:
        samples = sampler.sample(20000, temperature, progress=False)
    assert 0.0 < samples.ess <= 1.0
    assert_mean_energy_matches(samples, float(toy.mean_energy(temperature)))
    # the weights are the documented ones: log w = −U/kT − log q, normalised
    raw = -samples.energies / (KB * temperature) - samples.log_q
    np.testing.assert_allclose(samples.log_weights, raw - np.logaddexp.reduce(raw), atol=1e-9)


def test_mixture_proposal_is_exact(toy_run: Path) -> None:
    # A defensive mixture: 40 % of the samples from q(x | 500 K) for a 200 K target. log_q must be the mixture's
    # density (checked against the generator at both temperatures), and the reweighted <U> must agree with
    # quadrature within 4 bootstrap standard errors, as for the plain sampler.
    toy = DoubleWell1D()
    torch.manual_seed(3)
    with Sampler.from_checkpoint(toy_run) as sampler:
        samples = sampler.sample(20000, 200.0, progress=False, mixture=[(500.0, 0.4)])
        x = torch.as_tensor(samples.positions)
        with torch.no_grad():
            expected = np.logaddexp(np.log(0.6) + sampler.generator.log_prob(x, 200.0).double().numpy(),
                                    np.log(0.4) + sampler.generator.log_prob(x, 500.0).double().numpy())
    np.testing.assert_allclose(samples.log_q, expected, atol=1e-6)
    assert samples.mixture == ((500.0, 0.4),)
    assert_mean_energy_matches(samples, float(toy.mean_energy(200.0)))


def test_mixture_rejects_bad_components(toy_run: Path, tmp_path: Path) -> None:
    with Sampler.from_checkpoint(toy_run) as sampler:
        with pytest.raises(InputError, match="sum to at most 1"):
            sampler.sample(10, 300.0, progress=False, mixture=[(400.0, 0.7), (500.0, 0.4)])
        with pytest.raises(InputError, match="must be > 0"):
            sampler.sample(10, 300.0, progress=False, mixture=[(400.0, 0.0)])
        with pytest.raises(InputError, match="> 0"):
            sampler.sample(10, 300.0, progress=False, mixture=[(-4.0, 0.2)])
    assert main(["sample", "--model", str(toy_run), "--temperature", "300", "--n", "10", "--mixture", "400",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 2


@pytest.fixture(scope="module")
def toy_calibration(toy_run: Path) -> BasinCalibration:
    with Sampler.from_checkpoint(toy_run) as sampler:
        return calibrate(sampler, features_for(sampler.system), [150.0, 300.0, 600.0], 20000, progress=False)


def exact_share_positive(toy: DoubleWell1D, temperature: float, log_density: np.ndarray, x: np.ndarray) -> float:
    """∫_{x > 0} of a density given on the grid ``x`` (trapezoid rule)."""
    return float(np.trapezoid(np.exp(log_density) * (x > 0), x))


@pytest.mark.parametrize("temperature, normalisation_tolerance", [(150.0, 0.01), (200.0, 0.05)])
def test_calibrated_proposal_corrects_the_basin_mass(
    toy_run: Path, toy_calibration: BasinCalibration, temperature: float, normalisation_tolerance: float
) -> None:
    # The 30-step model puts 39 % of q(x | T) in the x > 0 well at every T; the Boltzmann share is 9 % at 150 K and
    # 15 % at 200 K. The calibrated density q' = q e^t / Z (quadrature on the box) must put the exact share there
    # within 0.01, integrate to 1 within the Monte-Carlo error of log Z at a grid node (1 %) and within the
    # interpolation error between nodes (200 K: 5 %), and its samples must land in x > 0 at q''s rate (4 binomial
    # standard errors); the weights stay exact (reweighted <U> = quadrature) and the ESS rises.
    toy = DoubleWell1D()
    x = np.linspace(-1.7, 1.7, 20001)
    with Sampler.from_checkpoint(toy_run, calibration=toy_calibration) as sampler:
        with torch.no_grad():
            log_q = sampler.generator.log_prob(torch.as_tensor(x[:, None]), temperature).double().numpy()
        log_q_tilted = log_q + toy_calibration.log_tilt(x[:, None], temperature)
        log_p = -toy.potential(torch.as_tensor(x[:, None])).numpy() / (KB * temperature)
        exact = exact_share_positive(toy, temperature, log_p - np.log(np.trapezoid(np.exp(log_p), x)), x)
        assert abs(exact_share_positive(toy, temperature, log_q, x) - exact) > 0.2  # q alone is far off
        share = exact_share_positive(toy, temperature, log_q_tilted, x) / np.trapezoid(np.exp(log_q_tilted), x)
        assert abs(share - exact) < 0.01, (share, exact)
        assert abs(np.trapezoid(np.exp(log_q_tilted), x) - 1.0) < normalisation_tolerance
        torch.manual_seed(4)
        plain = sampler.sample(20000, temperature, progress=False, calibrated=False)
        tilted = sampler.sample(20000, temperature, progress=False)
    assert tilted.calibrated and not plain.calibrated
    drawn = float(np.mean(tilted.positions[:, 0] > 0))
    assert abs(drawn - share) < 4.0 * np.sqrt(share * (1 - share) / len(tilted)), (drawn, share)
    assert tilted.ess > plain.ess + 0.05, (tilted.ess, plain.ess)
    assert_mean_energy_matches(tilted, float(toy.mean_energy(temperature)))


def test_calibration_refuses_bad_combinations(toy_run: Path, toy_calibration: BasinCalibration,
                                              tmp_path: Path) -> None:
    with Sampler.from_checkpoint(toy_run, calibration=toy_calibration) as sampler:
        with pytest.raises(InputError, match="do not combine"):
            sampler.sample(10, 300.0, progress=False, mixture=[(400.0, 0.2)])
        with pytest.raises(InputError, match="at least 100 samples"):
            calibrate(sampler, toy_calibration.features, [300.0], 50, progress=False)
    foreign = dataclasses.replace(toy_calibration, model_fingerprint="0" * 64)
    with pytest.raises(SystemMismatchError, match="another model"):
        Sampler.from_checkpoint(toy_run, calibration=foreign)
    with pytest.raises(InputError, match="trade-md calibrate"):
        Sampler.from_checkpoint(toy_run, calibrated=True)
    model = tmp_path / "model"
    shutil.copytree(toy_run, model)
    assert main(["sample", "--model", str(model), "--temperature", "300", "--n", "10", "--calibrated",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 2


def test_calibration_leaves_degenerate_nodes_alone(toy_run: Path) -> None:
    # energies of pure noise (0-500 kJ/mol) put the whole weight on a few samples: no share can be estimated, so the
    # node keeps a = 0 (q itself) instead of a tilt fitted to one sample
    rng = np.random.default_rng(0)
    with Sampler.from_checkpoint(toy_run) as good:
        noisy = Sampler(good.generator, lambda x: 500.0 * rng.random(len(x)))
        calibration = calibrate(noisy, features_for(DoubleWell1D()), [300.0], 2000, progress=False)
    assert calibration.nodes[0]["ess_q"] * 2000 < 50
    assert calibration.log_odds == [[0.0]] and calibration.nodes[0]["calibrated"] == [False]
    assert "not calibrated, the draw's Kish ESS is" in calibration.describe()[0]


def test_cli_calibrate_then_sample_calibrated(toy_run: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(toy_run, model)
    assert main(["calibrate", "--model", str(model), "--n", "2000", "--temperatures", "150", "600",
                 "--no-progress"]) == 0
    calibration = BasinCalibration.load(model / CALIBRATION_FILE)
    assert calibration.temperatures == [150.0, 600.0] and calibration.energy_evaluations == 4000
    assert calibration.log_odds[0][0] < -1.0  # the model's x > 0 well is far too heavy at 150 K
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(model), "--temperature", "200", "--n", "500", "--calibrated",
                 "--out", str(out), "--no-progress"]) == 0
    data = np.load(out / "samples.npz")
    assert bool(data["basin_calibrated"]) and data["log_weights"].shape == (500,)


def test_out_of_range_warns_or_refuses(toy_run: Path) -> None:
    with Sampler.from_checkpoint(toy_run) as sampler:
        with pytest.warns(OutOfRangeWarning, match="outside the generator's trained range 150-600 K"):
            sampler.sample(10, 900.0, progress=False)
    with Sampler.from_checkpoint(toy_run, out_of_range="error") as sampler:
        with pytest.raises(InputError, match="trained range"):
            sampler.sample(10, 900.0, progress=False)
        with pytest.raises(InputError, match="> 0"):
            sampler.sample(10, -5.0, progress=False)


def test_temperature_accepts_openmm_quantity(toy_run: Path) -> None:
    with Sampler.from_checkpoint(toy_run) as sampler:
        samples = sampler.sample(50, 310.0 * unit.kelvin, progress=False)
    assert samples.temperature == 310.0 and len(samples) == 50


def test_cli_sample_toy_writes_npz(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(toy_run), "--temperature", "310", "--n", "300", "--batch-size", "128",
                 "--out", str(out), "--no-progress"]) == 0
    data = np.load(out / "samples.npz")
    assert data["log_weights"].shape == (300,) and data["positions_nm"].shape == (300, 1)
    assert data["mixture_temperatures_k"].shape == (0,)
    mixed = tmp_path / "mixed"
    assert main(["sample", "--model", str(toy_run), "--temperature", "310", "--n", "300", "--mixture", "450:0.25",
                 "--out", str(mixed), "--no-progress"]) == 0
    data = np.load(mixed / "samples.npz")
    assert data["mixture_temperatures_k"].tolist() == [450.0] and data["mixture_fractions"].tolist() == [0.25]
    assert np.logaddexp.reduce(data["log_weights"]) == pytest.approx(0.0, abs=1e-9)


def test_cli_sample_annealed(toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "annealed"
    assert main(["sample", "--model", str(toy_run), "--temperature", "200", "--n", "400", "--anneal", "4:1:0.05",
                 "--out", str(out), "--no-progress"]) == 0
    data = np.load(out / "samples.npz")
    assert int(data["annealing_levels"]) == 4 and data["annealing_acceptance"].shape == (3,)
    assert np.logaddexp.reduce(data["log_weights"]) == pytest.approx(0.0, abs=1e-9)
    assert "annealing acceptance per level" in capsys.readouterr().out
    assert main(["sample", "--model", str(toy_run), "--temperature", "200", "--n", "10", "--anneal", "4:1",
                 "--out", str(out), "--no-progress"]) == 2
    assert main(["sample", "--model", str(toy_run), "--temperature", "200", "--n", "10", "--anneal", "4:1:0.05",
                 "--mixture", "400:0.2", "--out", str(out), "--no-progress"]) == 2


def test_reduced_potentials_for_mbar() -> None:
    u_kn = tempering_reduced_potentials(np.array([10.0, -20.0]), [300.0, 600.0 * unit.kelvin])
    np.testing.assert_allclose(u_kn, np.array([[10.0, -20.0], [5.0, -10.0]]) / (KB * 300.0))


@pytest.fixture(scope="module")
def ala2() -> tuple:
    system = load_system("alanine-dipeptide")
    rng = np.random.default_rng(0)
    positions = system.positions[None] + 0.003 * rng.normal(size=(64, system.n_atoms, 3))
    generator = molecule_generator(system, positions, 600.0, n_layers=2, hidden=16).double()
    return system, generator


def test_streamed_samples_are_readable_by_mdtraj(ala2: tuple, tmp_path: Path) -> None:
    system, generator = ala2
    with EnergyBridge(system, platform="Reference") as bridge:
        sampler = Sampler(generator, bridge.energies, temperature_range=(280.0, 1050.0), topology=system.topology)
        summary = write_samples(sampler, 50, 400.0, tmp_path, batch_size=16, progress=False)
        direct = bridge.energies(mdtraj.load(str(tmp_path / "samples.dcd"), top=str(tmp_path / "topology.pdb")).xyz)
    data = np.load(tmp_path / "samples.npz")
    assert summary["n"] == 50 and 0.0 < summary["ess"] <= 1.0
    assert data["energies_kj_per_mol"].shape == (50,) and data["wrong_chirality"].dtype == bool
    # DCD holds float32 Å: energies from the file agree with those computed before writing to float32 precision
    finite = np.isfinite(direct) & np.isfinite(data["energies_kj_per_mol"]) & (np.abs(direct) < 1e5)
    np.testing.assert_allclose(direct[finite], data["energies_kj_per_mol"][finite], rtol=1e-3, atol=0.5)


def test_streamed_annealed_samples_of_a_molecule(ala2: tuple, tmp_path: Path) -> None:
    # The molecular path of annealing: streamed to disk, wrong-handed draws weighted zero, energies those of the
    # written positions, acceptance rates recorded.
    system, generator = ala2
    torch.manual_seed(4)
    with EnergyBridge(system, platform="Reference") as bridge:
        sampler = Sampler(generator, bridge.energies, temperature_range=(280.0, 1050.0), topology=system.topology)
        summary = write_samples(sampler, 40, 400.0, tmp_path, batch_size=16, progress=False,
                                annealing=Annealing(levels=3, steps=1, step_size=0.01))
        positions = mdtraj.load(str(tmp_path / "samples.dcd"), top=str(tmp_path / "topology.pdb")).xyz
        direct = bridge.energies(positions)
    data = np.load(tmp_path / "samples.npz")
    assert len(summary["acceptance"]) == 2 and data["annealing_acceptance"].shape == (2,)
    assert np.all(data["log_weights"][data["wrong_chirality"]] == -np.inf)
    finite = np.isfinite(direct) & np.isfinite(data["energies_kj_per_mol"]) & (np.abs(direct) < 1e5)
    np.testing.assert_allclose(direct[finite], data["energies_kj_per_mol"][finite], rtol=1e-3, atol=0.5)


def test_generator_move_inside_openmmtools_sampler(ala2: tuple) -> None:
    system, generator = ala2
    thermodynamic_state = states.ThermodynamicState(system.system, 600.0 * unit.kelvin)
    sampler_state = states.SamplerState(system.positions * unit.nanometer)
    generator_move = GeneratorMove(generator, n_proposals=5, seed=1)
    langevin = mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, n_steps=20)
    move = mcmc.SequenceMove([generator_move, langevin])
    sampler = mcmc.MCMCSampler(thermodynamic_state, sampler_state, move)
    platform_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    for _ in range(3):
        move.apply(thermodynamic_state, sampler.sampler_state, platform_cache)
    assert generator_move.n_proposed == 15
    assert 0.0 <= generator_move.acceptance_rate <= 1.0
    positions = sampler.sampler_state.positions.value_in_unit(unit.nanometer)
    assert np.all(np.isfinite(positions))
    assert sampler.sampler_state.potential_energy.value_in_unit(unit.kilojoule_per_mole) < 1e4

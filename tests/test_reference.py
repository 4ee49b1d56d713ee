"""MBAR analysis of parallel tempering (``trade-md reference``): estimates, pooled runs, combined summaries,
exported frames and boundary datasets (``trade-md remd-data``).

The tiny alanine-dipeptide run is the one of tests/test_remd.py (tests/remd_run.py), made again here; the
statistical tests use exact draws from harmonic wells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from remd_run import TARGET, interrupted_run_in

from trade_md import cli
from trade_md.analysis.remd import analyse_reference, count_round_trips, export_frames
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.reference import combine_summaries
from trade_md.formats.remd import read_storage
from trade_md.remd import resume_remd
from trade_md.remd_data import export_dataset
from trade_md.systems import load_system


@pytest.fixture(scope="module")
def ala2():
    return load_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, ala2):
    """A 3-replica run killed (KeyboardInterrupt) after INTERRUPT_AT iterations: (directory, data before resume)."""
    out = tmp_path_factory.mktemp("remd") / "ala2"
    return out, interrupted_run_in(out, ala2)


@pytest.fixture(scope="module")
def resumed_run(interrupted_run):
    out, _ = interrupted_run
    resume_remd(out, progress=False)
    return out, read_storage(out)


# ----------------------------------------------------------------------------------------------------- analysis


def test_round_trips():
    states = np.array([[0, 2], [1, 1], [2, 0], [1, 1], [0, 2], [2, 0], [0, 2]])
    assert count_round_trips(states, 3).tolist() == [2, 1]  # replica 1 starts at the top: one trip


def test_reference_analysis_and_frames(resumed_run, tmp_path):
    import mdtraj

    _, data = resumed_run
    summary, samples, estimator = analyse_reference(data, [300.0, 450.0, 1200.0], n_bootstrap=20)
    assert summary["temperatures"] == [300.0, 450.0, 1200.0] and summary["on_ladder"] == [True, False, True]
    assert summary["log_z_relative"][0] == 0.0
    assert np.all(np.diff(summary["mean_energy"]) > 0)
    assert len(summary["ramachandran"]) == 3
    for histogram in summary["ramachandran"]:
        assert np.asarray(histogram).shape == (36, 36) and sum(map(sum, histogram)) == pytest.approx(1.0, abs=1e-4)
    for t, p, kj, kt in zip(summary["temperatures"], summary["p_phi_positive"], summary["delta_f"],
                            summary["delta_f_kT"]):
        if 0 < p < 1:
            assert kj == pytest.approx(kt * 0.00831446 * t, rel=1e-5) and kt == pytest.approx(np.log((1 - p) / p))
        else:  # a basin never seen in so short a run: null in the JSON, and said so
            assert kj is None and any(f"{t:g} K" in w for w in summary["warnings"])
    diagnostics = summary["diagnostics"]
    assert len(diagnostics["neighbour_acceptance"]) == 2 and np.asarray(diagnostics["overlap_matrix"]).shape == (3, 3)
    assert isinstance(summary["warnings"], list)
    json.dumps(summary, allow_nan=False)  # strict JSON as it is

    assert samples.n_k.tolist() == [summary["decorrelation"]["n_iterations_used"]] * 3
    assert np.all(summary["mean_energy_sem"]) and np.all(np.isfinite(summary["mean_energy_sem"]))
    assert any("blocks" in w for w in summary["warnings"])  # 14 iterations: too short for trustworthy errors
    with pytest.raises(InputError, match="n_bootstrap"):
        analyse_reference(data, [300.0], n_bootstrap=2)

    manifest = export_frames(data.system, samples, estimator, summary, tmp_path / "frames")
    n = summary["decorrelation"]["n_decorrelated_per_state"]
    assert manifest["frames_per_ladder_temperature"] == {"300": n, "600": n, "1200": n} and n >= 1
    for label in ("300", "600", "1200"):
        frames = mdtraj.load(tmp_path / "frames" / f"frames_{label}K.dcd", top=tmp_path / "frames" / "topology.pdb")
        assert frames.n_frames == n and frames.n_atoms == 22
    weights = np.load(tmp_path / "frames" / "weights.npz")
    assert weights["log_weights"].shape == (3 * n, 3)
    assert np.allclose(np.exp(weights["log_weights"]).sum(axis=0), 1.0)


DIPEPTIDE_KEYS = {
    "conventions", "decorrelation", "delta_f", "delta_f_kT", "delta_f_sem", "delta_f_sem_kT", "diagnostics",
    "direct_p_phi_positive_ladder", "effective_samples", "format", "ladder", "log_z_relative", "log_z_relative_sem",
    "mean_energy", "mean_energy_sem", "on_ladder", "p_phi_positive", "p_phi_positive_sem", "ramachandran", "run",
    "system", "temperatures", "warnings"}
"""The keys of a single run's alanine-dipeptide summary before ``phi_basins`` was added."""


def test_dipeptide_summary_keeps_its_single_residue_keys_and_values(resumed_run, ala2):
    # A third of the stored frames mirrored (x -> -x: the energy is unchanged, φ changes sign) so that both basins
    # carry weight. The summary has the keys dipeptide summaries always had, plus phi_basins; its basin values are
    # bit for bit those of the single-residue computation they always came from (the MBAR indicator of the one
    # φ > 0, the same block bootstrap, histograms of the one φ/ψ), and phi_basins' one residue repeats them.
    from dataclasses import replace

    from trade_md.analysis.metrics import ramachandran_histogram
    from trade_md.features import dihedral_angles, ramachandran_atoms
    from trade_md.formats.files import json_safe
    from trade_md.formats.reference import round_significant
    from trade_md.thermo import kT

    _, data = resumed_run
    mirror = np.random.default_rng(1).random(data.positions.shape[:2]) < 0.35
    mirrored = replace(data, positions=np.where(mirror[..., None, None], -data.positions, data.positions))
    targets = [300.0, 450.0, 1200.0]
    summary, samples, estimator = analyse_reference(mirrored, targets, n_bootstrap=20)
    assert set(summary) == DIPEPTIDE_KEYS | {"phi_basins"}
    assert set(summary["conventions"]) == {"delta_f", "effective_samples", "estimates", "log_z_relative",
                                           "ramachandran", "sem", "units"}
    assert set(summary["decorrelation"]) == {
        "block_length_iterations", "equilibration_iteration", "n_blocks", "n_decorrelated_per_state",
        "n_iterations_used", "n_samples", "statistical_inefficiency_energy", "statistical_inefficiency_iterations",
        "statistical_inefficiency_phi_indicator"}
    phi, psi = dihedral_angles(samples.positions, ramachandran_atoms(ala2.topology)).T
    errors = estimator.block_bootstrap(samples.block, observables={"energy": samples.energies},
                                       indicators={"phi_positive": phi > 0}, n_bootstrap=20, strata=samples.run)
    delta_f, _, p, _ = estimator.indicator_free_energy(phi > 0)
    index = [0, 3, 2]  # estimator states: the ladder 300, 600, 1200 K, then 450 K
    kt = np.array([kT(t) for t in targets])
    assert np.all((p[index] > 0) & (p[index] < 1))  # both basins weighted, ΔF finite: the values below mean something
    expected = {
        "p_phi_positive": p[index].tolist(), "p_phi_positive_sem": json_safe(errors["phi_positive_p"][index]),
        "delta_f_kT": json_safe(delta_f[index]), "delta_f_sem_kT": json_safe(errors["phi_positive"][index]),
        "delta_f": json_safe(delta_f[index] * kt), "delta_f_sem": json_safe(errors["phi_positive"][index] * kt),
        "direct_p_phi_positive_ladder": [float(np.mean(phi[samples.state == k] > 0)) for k in range(3)],
        "ramachandran": [round_significant(ramachandran_histogram(phi, psi, estimator.weights()[:, i]))
                         for i in index],
    }
    for key, value in expected.items():
        assert summary[key] == value, key
    basins = summary["phi_basins"]
    assert basins["labels"] == ["ALA 2"] and "ramachandran" not in basins
    for key, legacy in (("p_positive", "p_phi_positive"), ("p_positive_sem", "p_phi_positive_sem"),
                        ("delta_f_kT", "delta_f_kT"), ("delta_f_sem_kT", "delta_f_sem_kT"), ("delta_f", "delta_f"),
                        ("delta_f_sem", "delta_f_sem"), ("direct_p_positive_ladder", "direct_p_phi_positive_ladder")):
        assert basins[key] == [summary[legacy]], key
    assert basins["statistical_inefficiency_iterations"] == [
        summary["decorrelation"]["statistical_inefficiency_phi_indicator"]]


def test_reference_outside_the_ladder_is_an_input_error(resumed_run):
    _, data = resumed_run
    with pytest.raises(InputError, match="outside the ladder"):
        analyse_reference(data, [250.0])


def test_cli_reference_and_errors(resumed_run, tmp_path, capsys):
    out, _ = resumed_run
    summary_path = tmp_path / "summary.json"
    assert cli.main(["reference", str(out), "--out", str(summary_path), "--temperatures", "300,800",
                     "--frames-dir", str(tmp_path / "f"), "--bootstrap", "20"]) == 0
    summary = json.loads(summary_path.read_text())
    assert len(summary["delta_f_sem_kT"]) == 2 and summary["conventions"]["sem"].startswith("one standard error from 20")
    assert summary["temperatures"] == [300.0, 800.0] and (tmp_path / "f" / "frames_300K.dcd").exists()
    assert "T/K" in capsys.readouterr().out
    assert cli.main(["reference", str(tmp_path / "nothing")]) == 2
    assert "trade-md remd" in capsys.readouterr().err
    assert cli.main(["remd", "--system", "alanine-dipeptide", "--temperatures", "300,200",
                     "--out", str(tmp_path / "x")]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert cli.main(["remd", "--temperatures", "300:400:2", "--out", str(tmp_path / "y")]) == 2
    assert "no system" in capsys.readouterr().err
    assert cli.main(["remd", "--resume", "--out", str(out), "--temperatures", "300:1000:3"]) == 2
    assert "differs from the run's ladder" in capsys.readouterr().err


def test_remd_frames_at_one_temperature_become_a_dataset(resumed_run, tmp_path, capsys):
    from trade_md.formats.dataset import load_dataset

    out, data = resumed_run
    ps = 100 * 1.0e-3  # steps_per_iteration x 1 fs
    assert cli.main(["remd-data", str(out), str(out), "--temperature", "600", "--discard-ps", "0.25",
                     "--out", str(tmp_path / "d600")]) == 0
    printed = capsys.readouterr()
    assert "frames at 600 K from 2 remd run(s)" in printed.out and "trade-md remd --resume" in printed.err
    dataset = load_dataset(tmp_path / "d600")
    kept = np.arange(3, TARGET + 1)  # iterations after 0.25 ps, the minimised start excluded
    assert len(dataset) == 2 * kept.size and dataset.temperature == 600.0
    assert dataset.run.tolist() == [0] * kept.size + [1] * kept.size
    assert np.allclose(dataset.times[: kept.size], kept * ps)
    replica = np.argmax(data.states[kept] == 1, axis=1)  # the replica at ladder state 1 (600 K) in each iteration
    assert np.allclose(dataset.positions[: kept.size], data.positions[kept, replica], atol=1e-6)
    assert np.allclose(dataset.energies[: kept.size], data.energies[kept, replica])
    assert dataset.system.fingerprint() == data.system.fingerprint()
    assert dataset.metadata["source"] == "trade-md remd" and dataset.metadata["runs"][0]["frames"] == kept.size

    with pytest.raises(InputError, match="already holds a dataset"):
        export_dataset([out], 600.0, tmp_path / "d600")
    with pytest.raises(InputError, match="not on the ladder .* pick one of those"):
        export_dataset([out], 650.0, tmp_path / "x")
    with pytest.raises(InputError, match="none after --discard-ps"):
        export_dataset([out], 600.0, tmp_path / "x", discard_ps=100.0)
    assert cli.main(["remd-data", str(tmp_path / "nothing"), "--temperature", "600", "--out", str(tmp_path / "y")]) == 2
    assert "trade-md remd" in capsys.readouterr().err


def test_backbone_dihedrals_of_the_starting_structure(ala2):
    from trade_md.analysis.remd import _backbone

    backbone = _backbone(ala2)
    assert backbone.labels == ("ALA 2",) and backbone.dipeptide
    phi, psi = backbone.ramachandran_angles(ala2.positions[None], 0)
    assert backbone.phi(ala2.positions[None])[:, 0].tolist() == phi.tolist()
    # systems/alanine_dipeptide/README.md: the minimised C5 structure has φ = −144.6°, ψ = 159.2°
    assert np.degrees(phi[0]) == pytest.approx(-144.6, abs=0.2) and np.degrees(psi[0]) == pytest.approx(159.2, abs=0.2)


def test_combine_summaries_averages_runs_with_scatter_errors(tmp_path: Path) -> None:
    # Two copies of the shipped reference whose dF/kT are shifted by +0.1 and -0.3: the combination must be the
    # mean (shift -0.1) with the scatter error std([+0.1, -0.3], ddof=1) / sqrt(2) = 0.2, keep the histograms (equal
    # in both) and load as a reference.
    from trade_md.formats.reference import default_reference, load_reference

    base = json.loads(default_reference("alanine-dipeptide").read_text())
    runs = []
    for shift in (0.1, -0.3):
        run = json.loads(json.dumps(base))
        run["delta_f_kT"] = [value + shift for value in base["delta_f_kT"]]
        runs.append(run)
    combined = combine_summaries(runs, ["a", "b"])
    np.testing.assert_allclose(combined["delta_f_kT"], np.array(base["delta_f_kT"]) - 0.1, atol=1e-12)
    np.testing.assert_allclose(combined["delta_f_sem_kT"], 0.2, atol=1e-12)
    np.testing.assert_allclose(combined["delta_f"], base["delta_f"], atol=1e-12)
    np.testing.assert_allclose(combined["delta_f_sem"], 0.0, atol=1e-12)
    np.testing.assert_allclose(combined["ramachandran"], base["ramachandran"], atol=1e-12)
    np.testing.assert_allclose(combined["effective_samples"], 2 * np.array(base["effective_samples"]))
    paths = []
    for name, run in zip("ab", runs):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    assert cli.main(["reference-combine", *map(str, paths), "--out", str(tmp_path / "combined.json")]) == 0
    reference = load_reference(tmp_path / "combined.json")
    assert reference.value("delta_f_sem_kT", 1000.0) == pytest.approx(0.2)


def test_combine_summaries_refuses_mismatched_runs() -> None:
    from trade_md.formats.reference import default_reference

    base = json.loads(default_reference("alanine-dipeptide").read_text())
    with pytest.raises(InputError, match="at least two"):
        combine_summaries([base], ["a"])
    other = json.loads(json.dumps(base))
    other["system"]["fingerprint"]["n_atoms"] = 23
    with pytest.raises(InputError, match="another system"):
        combine_summaries([base, other], ["a", "b"])
    other = json.loads(json.dumps(base))
    other["temperatures"] = other["temperatures"][:-1]
    with pytest.raises(InputError, match="other temperatures"):
        combine_summaries([base, other], ["a", "b"])
    with pytest.raises(InputError, match="not a `trade-md reference` summary"):
        combine_summaries([base, {"format": "x"}], ["a", "b"])


def _synthetic_run(system, ladder: tuple[float, ...], n_iterations: int, dims: int, seed: int, hold: int = 1):
    """ReplicaData of exact draws from a ``dims``-dimensional harmonic well U = k|x|^2/2 at every ladder temperature
    (U / k_BT ~ Gamma(dims/2)), replicas shuffled over the states as exchanges would; each draw is held for
    ``hold`` iterations (a statistical inefficiency of about ``hold``)."""
    from trade_md.formats.remd import ReplicaData
    from trade_md.thermo import kT

    rng = np.random.default_rng(seed)
    k, n_draws = len(ladder), -(-(n_iterations + 1) // hold)
    states = np.repeat([rng.permutation(k) for _ in range(n_draws)], hold, axis=0)[: n_iterations + 1]
    reduced = np.repeat(rng.gamma(dims / 2, size=(n_draws, k)), hold, axis=0)[: n_iterations + 1]
    energies = np.array([[kT(ladder[s]) for s in row] for row in states]) * reduced
    record = {"settings": {"temperatures": list(ladder), "steps_per_iteration": 1, "timestep_fs": 1.0,
                           "collision_rate_per_ps": 1.0, "mixing": "synthetic", "integrator": "synthetic"},
              "segments": [{"wall_s": 0.0, "cpu_s": 0.0, "n_ranks": 1}], "platform": {"name": "synthetic"},
              "versions": {}, "command": None}
    return ReplicaData(temperatures=np.asarray(ladder), energies=energies, states=states,
                       positions=np.zeros((n_iterations + 1, k, system.n_atoms, 3), dtype=np.float32),
                       accepted=np.ones((k, k)), proposed=2 * np.ones((k, k)), record=record, system=system)


def test_pooled_runs_with_different_ladders_match_the_harmonic_well(ala2, monkeypatch, tmp_path):
    # Two independent runs on different ladders (300-510 K, each draw held 8 iterations; 450-1000 K, independent
    # draws), pooled into one MBAR: <U>(T) = (d/2)k_BT and ln Z(T) - ln Z(300 K) = (d/2) ln(T/300) exactly.
    # Neither run alone covers 300 and 1000 K.
    from trade_md.analysis import remd
    from trade_md.analysis.mbar import MBAREstimator
    from trade_md.thermo import kT

    monkeypatch.setattr(remd, "_backbone", lambda system: None)  # positions are placeholders
    strata_given = []
    bootstrap = MBAREstimator.block_bootstrap

    def spy(self, block_n, **options):
        strata_given.append(options.get("strata"))
        return bootstrap(self, block_n, **options)

    monkeypatch.setattr(MBAREstimator, "block_bootstrap", spy)
    dims, n, hold = 12, 1500, 8
    runs = [_synthetic_run(ala2, (300.0, 390.0, 510.0), hold * n, dims, seed=1, hold=hold),
            _synthetic_run(ala2, (450.0, 600.0, 800.0, 1000.0), n, dims, seed=2)]
    targets = [300.0, 450.0, 480.0, 700.0, 1000.0]
    with pytest.raises(InputError, match="outside the ladder"):
        analyse_reference(runs[0], targets)
    summary, samples, estimator = analyse_reference(runs, targets, n_bootstrap=40, sources=["a", "b"])
    assert summary["ladder"] == [300.0, 390.0, 450.0, 510.0, 600.0, 800.0, 1000.0]
    assert [run["source"] for run in summary["runs"]] == ["a", "b"] and "run" not in summary
    # MBAR's order (by ladder state), each run's energies in its own states, blocks within one run, run strata
    assert np.all(np.diff(samples.state) >= 0)
    assert np.array_equal(samples.n_k, np.bincount(samples.state)) and samples.n_k.sum() > 6 * n
    for r, (run, ladder_index) in enumerate(zip(runs, ([0, 1, 3], [2, 4, 5, 6]))):
        assert set(np.unique(samples.state[samples.run == r])) == set(ladder_index)
        for j, state in enumerate(ladder_index):
            mine = (samples.run == r) & (samples.state == state)
            iterations = samples.iteration[mine]
            replicas = np.argmax(run.states[iterations] == j, axis=1)
            assert np.array_equal(samples.energies[mine], run.energies[iterations, replicas])
    assert all(np.unique(samples.run[samples.block == b]).size == 1 for b in np.unique(samples.block))
    assert strata_given and strata_given[-1] is samples.run
    g = [run["decorrelation"]["statistical_inefficiency_iterations"] for run in summary["runs"]]
    assert g[0] > 4 and g[1] < 2
    mean_u, mean_sem = np.array(summary["mean_energy"]), np.array(summary["mean_energy_sem"])
    log_z, log_z_sem = np.array(summary["log_z_relative"]), np.array(summary["log_z_relative_sem"])
    exact_u = np.array([dims / 2 * kT(t) for t in targets])
    exact_log_z = dims / 2 * np.log(np.array(targets) / 300.0)
    assert np.all(np.abs(mean_u - exact_u) < 4 * mean_sem), (mean_u - exact_u) / mean_sem
    assert np.all(np.abs(log_z[1:] - exact_log_z[1:]) < 4 * log_z_sem[1:]), (log_z - exact_log_z) / log_z_sem
    # The bootstrap error at 1000 K is that of ~n independent draws there: sqrt(d/2) k_BT / sqrt(n) (0.52 kJ/mol),
    # within a factor of two (samples of other states change it by tens of percent).
    assert 0.5 < mean_sem[-1] / (np.sqrt(dims / 2) * kT(1000.0) / np.sqrt(n)) < 2.0

    # The exported frames (run a thinned ~8 times more than run b) with their weights give <U> as well: within 4
    # errors of the thinned estimate (the full data's sem times sqrt(max g)); unweighted for the thinning they
    # would miss at 480 K by ~30 full-data errors.
    manifest = export_frames(ala2, samples, estimator, summary, tmp_path / "frames")
    assert sum(manifest["frames_per_ladder_temperature"].values()) == int(samples.decorrelated.sum())
    with np.load(tmp_path / "frames" / "weights.npz") as frames:
        frame_u = np.exp(frames["log_weights"]).T @ frames["energies"]
    assert np.all(np.abs(frame_u - exact_u) < 4 * np.sqrt(max(g)) * mean_sem), (frame_u - exact_u) / mean_sem


def test_estimator_states_put_off_ladder_targets_after_the_ladder():
    from trade_md.analysis.remd import _estimator_states

    states, columns = _estimator_states(np.array([300.0, 600.0]), np.array([300.0, 300.002, 650.0]))
    assert states.tolist() == [300.0, 600.0, 300.002, 650.0] and columns.tolist() == [0, 2, 3]


def test_pooling_a_run_with_itself_reproduces_its_estimates(resumed_run, tmp_path, capsys):
    out, data = resumed_run
    single, _, _ = analyse_reference(data, [300.0, 450.0], n_bootstrap=20)
    pooled, samples, _ = analyse_reference([data, data], [300.0, 450.0], n_bootstrap=20)
    for name in ("mean_energy", "log_z_relative", "p_phi_positive"):
        np.testing.assert_allclose(pooled[name], single[name], rtol=1e-6, atol=1e-9)
    assert np.array_equal(samples.n_k, 2 * np.array([single["decorrelation"]["n_iterations_used"]] * 3))
    assert len(pooled["runs"]) == 2 and pooled["diagnostics"]["mbar_converged"]
    json.dumps(pooled, allow_nan=False)

    class OtherSystem:
        name = "other"

        @staticmethod
        def fingerprint():
            return {"n_atoms": 23}

    from dataclasses import replace

    with pytest.raises(SystemMismatchError, match="another system"):
        analyse_reference([data, replace(data, system=OtherSystem())], [300.0], n_bootstrap=20)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert cli.main(["reference", str(out), str(copy)]) == 2
    assert "--out" in capsys.readouterr().err
    summary_path = tmp_path / "pooled" / "summary.json"
    assert cli.main(["reference", str(out), str(out), "--out", str(summary_path)]) == 2
    assert "twice" in capsys.readouterr().err
    assert cli.main(["reference", str(out), str(copy), "--out", str(summary_path), "--temperatures", "300",
                     "--bootstrap", "20", "--no-progress"]) == 0
    assert (tmp_path / "pooled" / "summary_frames" / "frames_300K.dcd").exists()
    assert f"{copy}: neighbour acceptance" in capsys.readouterr().out
    from trade_md.formats.reference import load_reference

    (tmp_path / "pooled" / "frames").mkdir()  # another run's frames beside the summary are not taken for its own
    assert load_reference(summary_path).frames is not None


def test_combine_summaries_keeps_the_phi_basins_of_each_residue() -> None:
    # Two copies of the tetrapeptide's reference with residue k's ΔF/kT shifted by +0.2 and −0.2: the combined
    # phi_basins hold the shipped values with the scatter error std([+0.2, −0.2], ddof=1) / sqrt(2) = 0.2.
    from trade_md.formats.reference import default_reference

    base = json.loads(default_reference("alanine-tetrapeptide").read_text())
    runs = []
    for shift in (0.2, -0.2):
        run = json.loads(json.dumps(base))
        run["phi_basins"]["delta_f_kT"] = [[value + shift for value in row] for row in base["phi_basins"]["delta_f_kT"]]
        runs.append(run)
    basins = combine_summaries(runs, ["a", "b"])["phi_basins"]
    assert basins["labels"] == base["phi_basins"]["labels"]
    np.testing.assert_allclose(basins["delta_f_kT"], base["phi_basins"]["delta_f_kT"], atol=1e-12)
    np.testing.assert_allclose(basins["delta_f_sem_kT"], 0.2, atol=1e-12)
    np.testing.assert_allclose(basins["p_positive_sem"], 0.0, atol=1e-12)
    np.testing.assert_allclose(basins["ramachandran"], base["phi_basins"]["ramachandran"], atol=1e-12)

"""φ basins of every backbone residue (trade_md.analysis.phi_basins): the MBAR reference's ``phi_basins`` of exact
two-state draws, a tiny alanine-tetrapeptide tempering run analysed, and the evaluation of a tiny tetrapeptide model
against it (per-residue ΔF, P(φ_i > 0) and their reference values).

Statistical assertions use |estimate − exact| < 4 σ with the analysis' own bootstrap σ, bounded so the bound has
power: σ < 0.2 k_BT, and every residue's estimate lies more than 4 σ from every other residue's exact value (a
residue mapped to the wrong φ fails).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import TINY_TRAIN

from trade_md import cli
from trade_md.analysis.evaluation import evaluate_samples, evaluate
from trade_md.analysis.evaluation_report import summary_markdown, write_figures
from trade_md.analysis.phi_basins import Backbone
from trade_md.analysis.remd import analyse_reference
from trade_md.features import basin_delta_f, dihedral_angles, phi_dihedrals
from trade_md.formats.reference import Reference
from trade_md.formats.remd import ReplicaData, read_storage
from trade_md.samples import SampleSet
from trade_md.systems import load_system
from trade_md.thermo import kT

N_SIGMA = 4.0
LABELS = ["ALA 2", "ALA 3", "ALA 4"]


@pytest.fixture(scope="module")
def tetra():
    return load_system("alanine-tetrapeptide")


def _flip_phi(system, positions: np.ndarray, residue: int, frames: np.ndarray) -> np.ndarray:
    """``positions [..., atoms, 3]`` with φ of ``residue`` turned by π (its sign flips from (−π, 0) to (0, π)) in the
    ``frames`` mask ``[...]``: the atoms on the CA side of the N–CA bond rotate about it, so no other φ or ψ moves."""
    _, n, ca, _ = phi_dihedrals(system.topology)[residue].atoms
    neighbours: dict[int, list[int]] = {}
    for bond in system.topology.bonds():
        neighbours.setdefault(bond[0].index, []).append(bond[1].index)
        neighbours.setdefault(bond[1].index, []).append(bond[0].index)
    moving, stack = {ca}, [ca]
    while stack:
        for other in neighbours[stack.pop()]:
            if other != n and other not in moving:
                moving.add(other)
                stack.append(other)
    out = np.array(positions, dtype=np.float64)
    chosen = out[frames]
    axis = chosen[:, ca] - chosen[:, n]
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    index = sorted(moving)
    v = chosen[:, index] - chosen[:, n][:, None]
    along = np.sum(v * axis[:, None], axis=-1, keepdims=True) * axis[:, None]
    chosen[:, index] = chosen[:, n][:, None] - v + 2.0 * along  # a half turn: v -> 2 (v·u) u − v
    out[frames] = chosen
    return out


# ------------------------------------------------------------------------------- exact draws of three two-state φ


EPSILON = np.array([0.0, -2.0, 6.0])
"""kJ/mol: the energy of φ_i > 0 above φ_i < 0."""
LOG_DEGENERACY = np.array([-1.0, 0.0, -0.5])
"""ln g_i: φ_i > 0 has g_i times the states of φ_i < 0, so ΔF_i(T) = ε_i − k_B T ln g_i exactly."""


def _exact_p(temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(EPSILON / kT(temperature) - LOG_DEGENERACY))


def _two_state_run(system, ladder: tuple[float, ...], n_iterations: int, seed: int, hold: int) -> ReplicaData:
    """Replica exchange of exact draws: at ladder temperature T, three independent two-state φ_i (P(φ_i > 0) =
    :func:`_exact_p`) and a 12-dimensional harmonic well (U_h / k_BT ~ Gamma(6)); U = U_h + Σ ε_i [φ_i > 0].
    φ_i is the dihedral of atoms 4i..4i+3 placed at ±90°; residue 1's φ is held for ``hold`` iterations (a slow
    observable the energy hardly sees, ε_1 = −2 kJ/mol); replicas shuffled over the states as exchanges would."""
    rng = np.random.default_rng(seed)
    k, t = len(ladder), n_iterations + 1
    states = np.array([rng.permutation(k) for _ in range(t)])
    p = np.array([_exact_p(temperature) for temperature in ladder])  # [K, 3]
    positive = rng.random((t, k, 3)) < p[None]  # per iteration and ladder state
    held = rng.random((-(-t // hold), k)) < p[None, :, 1]
    positive[:, :, 1] = np.repeat(held, hold, axis=0)[:t]
    kt = np.array([kT(temperature) for temperature in ladder])
    energy = kt[None] * rng.gamma(6.0, size=(t, k)) + positive @ EPSILON  # [t, K]
    replica_state = states  # states[t, r]: the ladder state of replica r
    energies = np.take_along_axis(energy, replica_state, axis=1)
    by_replica = np.take_along_axis(positive, replica_state[..., None], axis=1)  # [t, R, 3]
    positions = np.zeros((t, k, system.n_atoms, 3), dtype=np.float32)
    for i in range(3):  # the features doctest's square: (0, 1, +1) gives −90°, (0, 1, −1) gives +90°
        positions[:, :, 4 * i] = [1.0, 0.0, 0.0]
        positions[:, :, 4 * i + 2] = [0.0, 1.0, 0.0]
        positions[:, :, 4 * i + 3] = np.where(by_replica[..., i, None], [0.0, 1.0, -1.0], [0.0, 1.0, 1.0])
    record = {"settings": {"temperatures": list(ladder), "steps_per_iteration": 1, "timestep_fs": 1.0,
                           "collision_rate_per_ps": 1.0, "mixing": "synthetic", "integrator": "synthetic"},
              "segments": [{"wall_s": 0.0, "cpu_s": 0.0, "n_ranks": 1}], "platform": {"name": "synthetic"},
              "versions": {}, "command": None}
    return ReplicaData(temperatures=np.asarray(ladder), energies=energies, states=states, positions=positions,
                       accepted=np.ones((k, k)), proposed=2 * np.ones((k, k)), record=record, system=system)


def test_phi_basins_of_exact_two_state_draws(tetra, monkeypatch):
    from trade_md.analysis import remd

    backbone = Backbone(tuple(LABELS), np.arange(12).reshape(3, 4), (None, None, None), None)
    monkeypatch.setattr(remd, "_backbone", lambda system: backbone)
    ladder, targets, hold = (300.0, 400.0, 550.0), [300.0, 400.0, 450.0, 550.0], 8
    run = _two_state_run(tetra, ladder, 3000, seed=5, hold=hold)
    assert np.allclose(backbone.phi(run.positions[:2].reshape(-1, tetra.n_atoms, 3)) ** 2, (np.pi / 2) ** 2)
    summary, _, _ = analyse_reference(run, targets, n_bootstrap=60)
    basins = summary["phi_basins"]
    assert basins["labels"] == LABELS and basins["phi_atoms"] == backbone.phi_atoms.tolist()
    assert basins["ramachandran"] == [None, None, None]  # no ψ
    for key in ("p_phi_positive", "delta_f", "delta_f_kT", "ramachandran", "direct_p_phi_positive_ladder"):
        assert key not in summary  # the dipeptide keys belong to molecules with exactly one φ and ψ

    # residue 1's held indicator is the slowest observable: it sets g (the energy alone would give ~1)
    g = basins["statistical_inefficiency_iterations"]
    decorrelation = summary["decorrelation"]
    assert g[1] > hold / 2 and g[0] < 2 and g[2] < 2 and decorrelation["statistical_inefficiency_energy"] < 2
    assert decorrelation["statistical_inefficiency_iterations"] == pytest.approx(g[1])
    assert decorrelation["statistical_inefficiency_phi_indicator"] == pytest.approx(g[1])

    delta_f, sem = np.array(basins["delta_f_kT"]), np.array(basins["delta_f_sem_kT"])  # [residue, T]
    p, p_sem = np.array(basins["p_positive"]), np.array(basins["p_positive_sem"])
    exact_p = np.array([_exact_p(t) for t in targets]).T
    exact = np.array([EPSILON / kT(t) - LOG_DEGENERACY for t in targets]).T
    assert np.all(sem < 0.2) and np.all(sem > 0), sem
    assert np.all(np.abs(delta_f - exact) < N_SIGMA * sem), (delta_f - exact) / sem
    assert np.all(np.abs(p - exact_p) < N_SIGMA * p_sem), (p - exact_p) / p_sem
    for i in range(3):
        for j in set(range(3)) - {i}:  # another residue's exact ΔF is far outside this one's error bar
            assert np.all(np.abs(delta_f[i] - exact[j]) > N_SIGMA * sem[i]), (i, j)
    kts = np.array([kT(t) for t in targets])
    np.testing.assert_allclose(basins["delta_f"], delta_f * kts, rtol=1e-12)
    np.testing.assert_allclose(basins["delta_f_sem"], sem * kts, rtol=1e-12)
    exact_kj = EPSILON[:, None] - kts[None] * LOG_DEGENERACY[:, None]
    assert np.all(np.abs(np.array(basins["delta_f"]) - exact_kj) < N_SIGMA * np.array(basins["delta_f_sem"]))
    # the unweighted fraction at each ladder temperature (3000 draws; residue 1: 375 held ones)
    direct = np.array(basins["direct_p_positive_ladder"])
    ladder_p = np.array([_exact_p(t) for t in ladder]).T
    assert np.all(np.abs(direct - ladder_p) < 4 * np.sqrt(ladder_p * (1 - ladder_p) / 375))


# ------------------------------------------------------------------------------- a tiny tetrapeptide run


@pytest.fixture(scope="module")
def tetra_reference(tetra, tmp_path_factory):
    """A 2-replica, 24-iteration tempering run of alanine tetrapeptide and its `trade-md reference` directory."""
    from trade_md.remd import RemdSettings, run_remd

    root = tmp_path_factory.mktemp("tetra")
    settings = RemdSettings(temperatures=(300.0, 450.0), n_iterations=24, steps_per_iteration=50)
    run_remd(tetra, settings, root / "run", platform="Reference", progress=False)
    assert cli.main(["reference", str(root / "run"), "--out", str(root / "reference" / "summary.json"),
                     "--frames-dir", str(root / "reference" / "frames"), "--bootstrap", "10", "--no-progress"]) == 0
    return {"run": root / "run", "reference": root / "reference",
            "summary": json.loads((root / "reference" / "summary.json").read_text())}


def test_tetrapeptide_reference_has_three_labelled_residues(tetra, tetra_reference, capsys):
    """The summary of `trade-md reference` on the tiny run (fixture): per-residue entries of the right shapes,
    finite or null, and none of the dipeptide's top-level basin keys; its table prints ΔF per residue."""
    summary = tetra_reference["summary"]
    basins = summary["phi_basins"]
    m = len(summary["temperatures"])
    assert summary["temperatures"] == [300.0, 400.0, 450.0]
    assert basins["labels"] == LABELS
    assert basins["phi_atoms"] == [list(d.atoms) for d in phi_dihedrals(tetra.topology)]
    for key in ("p_positive", "p_positive_sem", "delta_f_kT", "delta_f_sem_kT", "delta_f", "delta_f_sem"):
        assert np.shape(basins[key]) == (3, m), key
        assert all(v is None or math.isfinite(v) for row in basins[key] for v in row), key
    assert all(0.0 <= v <= 1.0 for row in basins["p_positive"] for v in row)
    for row_p, row_kt in zip(basins["p_positive"], basins["delta_f_kT"]):
        for p, value in zip(row_p, row_kt):
            assert value is None if p in (0.0, 1.0) else value == pytest.approx(math.log((1 - p) / p))
    assert np.shape(basins["ramachandran"]) == (3, m, 36, 36)
    assert np.allclose(np.sum(basins["ramachandran"], axis=(2, 3)), 1.0, atol=1e-4)
    assert len(basins["statistical_inefficiency_iterations"]) == 3
    assert summary["decorrelation"]["statistical_inefficiency_phi_indicator"] == max(
        basins["statistical_inefficiency_iterations"])
    for key in ("p_phi_positive", "delta_f", "delta_f_kT", "ramachandran", "direct_p_phi_positive_ladder"):
        assert key not in summary
    # the printed table of `trade-md reference` has a row of ΔF per residue for each temperature
    assert cli.main(["reference", str(tetra_reference["run"]), "--out", str(tetra_reference["run"] / "s.json"),
                     "--temperatures", "300", "--no-frames", "--no-histograms", "--bootstrap", "10",
                     "--no-progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert all(label in "\n".join(table) for label in LABELS)
    row = table[table.index(next(line for line in table if "per residue" in line)) + 2]
    assert row.split()[0] == "300.0" and row.count("±") == 3


def test_each_residue_reads_its_own_phi(tetra, tetra_reference):
    # φ of ALA 2 turned into φ > 0 in 20 % of the stored frames, ALA 3 in 50 %, ALA 4 in none: each residue's MBAR
    # P(φ_i > 0) is the weighted fraction of its own φ (computed here from the atoms of phi_dihedrals), and the three
    # differ, so a residue that read another's φ would fail (energies are the stored ones: this checks the
    # bookkeeping, not physics)
    from trade_md.features import backbone_phi

    data = read_storage(tetra_reference["run"])
    rng = np.random.default_rng(2)
    positions = data.positions
    for residue, fraction in ((0, 0.2), (1, 0.5)):
        positions = _flip_phi(tetra, positions, residue, rng.random(positions.shape[:2]) < fraction)
    flipped = replace(data, positions=positions)
    summary, samples, estimator = analyse_reference(flipped, [300.0, 450.0], n_bootstrap=10, histograms=False)
    _, labels, phi = backbone_phi(tetra.topology, samples.positions)
    weights = estimator.weights()
    expected = np.array([[weights[:, col] @ (phi[:, i] > 0) for col in (0, 1)] for i in range(3)])
    np.testing.assert_allclose(summary["phi_basins"]["p_positive"], expected, rtol=1e-9, atol=1e-12)
    assert labels == summary["phi_basins"]["labels"]
    assert all(abs(expected[i, c] - expected[j, c]) > 0.01 for i, j in ((0, 1), (0, 2), (1, 2)) for c in (0, 1))
    direct = [[float(np.mean(phi[samples.state == k, i] > 0)) for k in (0, 1)] for i in range(3)]
    assert summary["phi_basins"]["direct_p_positive_ladder"] == direct
    assert "phi_basins" in summary and "ramachandran" not in summary["phi_basins"]  # --no-histograms


# ------------------------------------------------------------------------------- evaluation of a tiny model


@pytest.fixture(scope="module")
def tetra_model(tetra, tmp_path_factory):
    """A tiny TRADE model of alanine tetrapeptide as tests/tiny_model.py makes the dipeptide's: 5 ps MD at 600 K
    (100 frames), then TINY_TRAIN's 6 steps. Returns (run directory, dataset)."""
    from trade_md.config import TrainConfig
    from trade_md.convergence import ConvergenceWarning
    from trade_md.energy import EnergyBridge
    from trade_md.formats.checkpoint import SystemRecord
    from trade_md.formats.dataset import load_dataset
    from trade_md.generator import molecule_generator
    from trade_md.md import run_md
    from trade_md.trainer import Trainer

    root = tmp_path_factory.mktemp("tetra_model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run_md(tetra, 600.0, root / "data", ns=0.005, replicas=1, seed=1, equilibration_ps=1.0,
               frame_interval_ps=0.05, platform="Reference", progress=False)
    dataset = load_dataset(root / "data")
    out = root / "model"
    config = TrainConfig.from_dict({**TINY_TRAIN, "data": str(dataset.path), "out": str(out),
                                    "reference_temperature": dataset.temperature})
    torch.manual_seed(0)
    training, _ = config.data.split(dataset.positions)
    generator = molecule_generator(dataset.system, training, dataset.temperature, **config.flow)
    with EnergyBridge(dataset.system, platform="Reference") as bridge:
        Trainer(generator, config, SystemRecord.of(dataset.system), potential=bridge.potential,
                data=torch.as_tensor(dataset.positions), out=out).run()
    return out, dataset


def test_evaluate_a_tetrapeptide_model_per_residue(tetra, tetra_reference, tetra_model, tmp_path, capsys,
                                                   monkeypatch):
    from trade_md.sampler import Sampler

    drawn = {}
    sample = Sampler.sample

    def spy(self, n, temperature, **options):
        drawn[temperature] = sample(self, n, temperature, **options)
        return drawn[temperature]

    monkeypatch.setattr(Sampler, "sample", spy)
    model, _ = tetra_model
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--model", str(model), "--reference", str(tetra_reference["reference"]),
                     "--temperatures", "300,450", "--out", str(out), "--n-samples", "300", "--platform", "Reference",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ΔF per residue" in printed and "φ/ψ of ALA 2" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    summary = tetra_reference["summary"]
    basins = summary["phi_basins"]
    assert metrics["phi_labels"] == LABELS and metrics["ramachandran_residue"] == "ALA 2"
    backbone = Backbone.of(tetra.topology)
    for entry in metrics["per_temperature"]:
        t = entry["temperature"]
        i = summary["temperatures"].index(t)
        assert [r["label"] for r in entry["phi_basins"]] == LABELS
        samples = drawn[t]
        phi = backbone.phi(samples.positions)
        for r, residue in enumerate(entry["phi_basins"]):
            # the reference's numbers are the summary's of that residue
            assert residue["delta_f"]["reference"] == basins["delta_f"][r][i]
            assert residue["delta_f"]["reference_sem"] == basins["delta_f_sem"][r][i]
            assert residue["p_positive"]["reference"] == basins["p_positive"][r][i]
            if basins["delta_f"][r][i] is not None:
                assert residue["delta_f_kT"]["reference"] == pytest.approx(basins["delta_f_kT"][r][i], rel=1e-9)
            # the generator's are those of its own samples' φ_r
            expected = basin_delta_f(phi[:, r], t, samples.weights)
            assert residue["delta_f"]["generator"] == (pytest.approx(expected, rel=1e-12)
                                                       if math.isfinite(expected) else None)
            assert residue["p_positive"]["generator"] == pytest.approx(samples.weights @ (phi[:, r] > 0), abs=1e-12)
            assert residue["p_positive"]["generator_raw"] == pytest.approx(np.mean(phi[:, r] > 0), abs=1e-15)
        assert entry["delta_f"] == entry["phi_basins"][0]["delta_f"]  # the top level is ALA 2's
        assert {"kl_divergence", "js_divergence", "ess_by_basin", "nll"} <= set(entry)
    page = (out / "summary.md").read_text()
    assert "## φ basins per residue" in page and page.count("| ALA 3 |") == 2
    assert "those of φ/ψ of ALA 2" in page and "Ramachandran free energy of ALA 2" in page
    assert {path.name for path in out.glob("*.png")} == {"ramachandran.png", "delta_f.png", "ess.png", "energy.png"}


def test_generator_and_reference_values_belong_to_their_residues(tetra, tetra_model):
    # Samples that are the MD frames with ALA 2's φ turned positive in 30 % of them and ALA 3's in 60 % (equal
    # weights), against a reference that lists the residues in reverse order with distinct values: each residue
    # gets its own numbers, and ALA 2's reference histogram (its own samples': JS 0) is the one compared.
    from trade_md.analysis.metrics import ramachandran_histogram
    from trade_md.formats.checkpoint import load_generator

    model, dataset = tetra_model
    n, temperature = len(dataset), 450.0
    positions = _flip_phi(tetra, dataset.positions, 0, np.arange(n) < 0.3 * n)
    positions = _flip_phi(tetra, positions, 1, np.arange(n) >= 0.4 * n)
    backbone = Backbone.of(tetra.topology)
    phi = backbone.phi(positions)
    p = (phi > 0).mean(axis=0)
    assert p[0] > 0.2 and p[1] - p[0] > 0.2 and p[0] - p[2] > 0.2  # MD at 600 K stays (almost) in φ < 0
    own = ramachandran_histogram(*backbone.ramachandran_angles(positions, 0))
    reference = {"temperatures": [300.0, temperature], "mean_energy": [0.0, 1.0], "mean_energy_sem": [0.1, 0.1],
                 "phi_basins": {"labels": LABELS[::-1],
                                "delta_f": [[0.0, 4.0], [0.0, 3.0], [0.0, 2.0]],
                                "delta_f_sem": [[0.0, 0.4], [0.0, 0.3], [0.0, 0.2]],
                                "p_positive": [[0.0, 0.04], [0.0, 0.03], [0.0, 0.02]],
                                "ramachandran": [None, None, [None, own.tolist()]]}}
    samples = SampleSet(positions, dataset.energies, np.zeros(n), np.full(n, -np.log(n)), np.zeros(n, dtype=bool),
                        temperature)
    generator = load_generator(model).generator
    metrics, arrays = evaluate_samples(temperature, samples, tetra.topology, generator,
                                            Reference(reference, Path("fake.json"), None), seed=0)
    k_t = kT(temperature)
    for r, residue in enumerate(metrics["phi_basins"]):
        assert residue["label"] == LABELS[r]
        assert residue["p_positive"]["generator"] == pytest.approx(p[r], abs=1e-12)
        assert residue["delta_f"]["generator"] == pytest.approx(basin_delta_f(phi[:, r], temperature), rel=1e-12)
        assert residue["delta_f"]["reference"] == 2.0 + r
        assert residue["delta_f"]["reference_sem"] == pytest.approx(0.2 + 0.1 * r, rel=1e-12)
        assert residue["delta_f_kT"]["reference"] == pytest.approx((2.0 + r) / k_t, rel=1e-12)
        assert residue["p_positive"]["reference"] == pytest.approx(0.02 + 0.01 * r)
    assert metrics["delta_f"] == metrics["phi_basins"][0]["delta_f"]
    assert metrics["basin_populations"]["generator"][1] == pytest.approx(p[0], abs=1e-12)
    assert metrics["basin_populations"]["reference"][1] == pytest.approx(0.02)
    assert sum(b["n"] for b in metrics["ess_by_basin"] if b["label"] == "phi>0") == round(p[0] * n)
    assert metrics["js_divergence"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(arrays["histogram"], own, atol=1e-15)


def test_a_molecule_without_backbone_phi_is_evaluated_without_basins(tmp_path, monkeypatch, capsys):
    import openmm.app as app

    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    for name in ("O", "H1", "H2"):
        topology.addAtom(name, app.Element.getBySymbol(name[0]), residue)
    assert Backbone.of(topology) is None
    rng = np.random.default_rng(0)
    n = 200
    samples = SampleSet(rng.normal(size=(n, 3, 3)), rng.normal(size=n), np.zeros(n), np.full(n, -np.log(n)),
                        np.zeros(n, dtype=bool), 300.0)
    reference = Reference({"temperatures": [300.0], "mean_energy": [0.5], "mean_energy_sem": [0.1]},
                          Path("fake.json"), None)
    metrics, arrays = evaluate_samples(300.0, samples, topology, None, reference, seed=0)
    assert not {"delta_f", "delta_f_kT", "phi_basins", "ess_by_basin", "basin_populations", "js_divergence"} & set(
        metrics)
    assert metrics["ess"] == pytest.approx(1.0) and metrics["mean_energy"]["reference"] == 0.5
    metrics["in_trained_range"] = True
    figures = write_figures(tmp_path, [metrics], {300.0: arrays}, 300.0)
    assert set(figures) == {"ess", "energy"} and (tmp_path / "ess.png").is_file()
    page = summary_markdown({
        "model": "m", "system": "water", "n_dof": 3, "training_steps": 1, "reference_temperature": 300.0,
        "trained_range": [300.0, 300.0], "reference": "fake.json", "reference_frames": False, "n_samples": n,
        "warnings": [], "per_temperature": [metrics], "figures": figures, "phi_labels": [],
        "ramachandran_residue": None})
    assert "no backbone φ" in page and "| 300 |" in page and "ramachandran.png" not in page
    result = {"per_temperature": [metrics], "phi_labels": [], "ramachandran_residue": None}
    monkeypatch.setattr("trade_md.cli.evaluate.evaluate", lambda *args, **options: result)
    assert cli.main(["evaluate", "--model", "m", "--out", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "    300 K: ESS 100.00%, NLL/dof –"

"""Tests of trade_md.analysis.evaluation and its report (`trade-md evaluate`, trade_md.cli.evaluate) on a tiny
alanine-dipeptide model (tests/tiny_model.py)."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_model import make_reference_with_frames, make_tiny_model

from trade_md.analysis.evaluation import evaluate_samples, evaluate
from trade_md.analysis.metrics import ramachandran_histogram
from trade_md.cli.common import temperatures_from_text
from trade_md.cli.evaluate import register
from trade_md.errors import InputError, SystemMismatchError
from trade_md.features import basin_delta_f, ramachandran
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.dataset import load_dataset
from trade_md.formats.reference import Reference, default_reference, load_reference
from trade_md.sampler import OutOfRangeWarning
from trade_md.samples import SampleSet
from trade_md.thermo import kT

SHIPPED = default_reference("alanine-dipeptide")
PER_TEMPERATURE_KEYS = {
    "temperature", "n_samples", "ess", "effective_samples", "wrong_chirality_fraction", "dropped_fraction",
    "basin_populations", "delta_f", "delta_f_kT", "mean_energy", "kl_divergence", "js_divergence",
    "in_trained_range", "ess_by_basin", "ess_exact_basin_masses",
}
FRAME_KEYS = {"nll", "nll_per_dof", "reference_frames", "energy_wasserstein", "energy_wasserstein_raw"}


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    model = make_tiny_model(root)
    reference = make_reference_with_frames(SHIPPED, root / "data", root / "reference")
    return {"model": model, "data": root / "data", "reference": reference}


@pytest.fixture(scope="module")
def with_frames(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report") / "x"
    evaluate(tiny["model"], out, reference=tiny["reference"], temperatures=[300.0, 600.0, 1000.0], n_samples=400,
             energy_platform="Reference", progress=False)
    return {"out": out, "metrics": _strict_json(out / "metrics.json")}


def test_shipped_reference_is_found() -> None:
    assert SHIPPED is not None and SHIPPED.name == "summary.json"
    assert default_reference("no-such-system") is None


def test_metrics_json_has_the_expected_keys(with_frames: dict) -> None:
    metrics = with_frames["metrics"]
    assert metrics["format"] == "trade-md evaluation/1"
    assert metrics["temperatures"] == [300.0, 600.0, 1000.0] and metrics["n_dof"] == 60
    assert metrics["trained_range"] == [300.0, 1000.0] and metrics["reference_frames"] is True
    assert metrics["warnings"] == []
    assert metrics["phi_labels"] == ["ALA 2"] and metrics["ramachandran_residue"] == "ALA 2"
    for entry in metrics["per_temperature"]:
        assert PER_TEMPERATURE_KEYS | FRAME_KEYS <= set(entry)
        (residue,) = entry["phi_basins"]                                  # a dipeptide: its one φ, as at the top
        assert residue["label"] == "ALA 2"
        assert residue["delta_f"] == entry["delta_f"] and residue["delta_f_kT"] == entry["delta_f_kT"]
        assert residue["p_positive"]["generator"] == entry["basin_populations"]["generator"][1]
        assert residue["p_positive"]["reference"] == entry["basin_populations"]["reference"][1]
        assert 0.0 < entry["ess"] <= 1.0
        assert entry["in_trained_range"] is True
        assert math.isfinite(entry["nll"]) and entry["nll_per_dof"] == pytest.approx(entry["nll"] / 60)
        assert 0.0 <= entry["js_divergence"] <= math.log(2) + 1e-12
        assert entry["energy_wasserstein"] >= 0.0
        assert entry["reference_frames"]["n"] == 100
        assert entry["reference_frames"]["ess"] == pytest.approx(1.0)   # equal weights in the fake reference
        assert 0.0 <= entry["wrong_chirality_fraction"] <= 1.0
        basins = entry["ess_by_basin"]
        assert {b["label"] for b in basins} <= {"phi<0", "phi>0"}
        assert sum(b["n"] for b in basins) == entry["n_samples"]
        assert sum(b["p_fraction"] for b in basins) == pytest.approx(1.0)
        assert sum(b["share_of_sum_w2"] for b in basins) == pytest.approx(1.0)
        p_positive = sum(b["p_fraction"] for b in basins if b["label"] == "phi>0")
        assert p_positive == pytest.approx(entry["basin_populations"]["generator"][1], abs=1e-12)
        assert 1.0 / sum(b["p_fraction"] ** 2 / (b["q_fraction"] * b["ess"]) for b in basins if b["p_fraction"] > 0) \
            == pytest.approx(entry["ess"], rel=1e-9)                      # the basins recombine to the ESS
        assert 0.0 < entry["ess_exact_basin_masses"] <= 1.0


def test_reference_values_come_from_the_summary(with_frames: dict) -> None:
    summary = json.loads(SHIPPED.read_text())
    for entry in with_frames["metrics"]["per_temperature"]:
        i = summary["temperatures"].index(entry["temperature"])
        assert entry["delta_f"]["reference"] == pytest.approx(summary["delta_f"][i], rel=1e-12)
        assert entry["delta_f_kT"]["reference"] == pytest.approx(summary["delta_f_kT"][i], rel=1e-6)
        assert entry["delta_f_kT"]["reference_sem"] == pytest.approx(summary["delta_f_sem_kT"][i], rel=1e-6)
        assert entry["basin_populations"]["reference"][1] == pytest.approx(summary["p_phi_positive"][i])
        assert entry["mean_energy"]["reference"] == pytest.approx(summary["mean_energy"][i])


def test_figures_and_summary_are_written(with_frames: dict) -> None:
    out = with_frames["out"]
    summary = (out / "summary.md").read_text()
    for name in ("ramachandran", "delta_f", "ess", "energy"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert "<svg" in svg.read_text()[:2000]
        assert f"({name}.png)" in summary and f"({name}.svg)" in summary
    assert "per residue" not in summary and "no backbone φ" not in summary     # one φ: no per-residue table
    assert not list(out.glob(".*.tmp"))                       # atomic writes leave no temp files


def test_metrics_of_a_perfect_generator_are_exact(tiny: dict[str, Path]) -> None:
    """Samples that ARE the reference (same frames, equal weights) give zero divergences and the same ΔF."""
    dataset = load_dataset(tiny["data"])
    trained = load_generator(tiny["model"])
    generator, system = trained.generator, trained.system
    temperature = 600.0
    phi, psi = ramachandran(system.topology, dataset.positions)
    n = len(dataset)
    histogram = ramachandran_histogram(phi, psi)
    p_positive = float(np.mean(phi > 0))
    delta_f = basin_delta_f(phi, temperature)
    summary = {"temperatures": [temperature], "ramachandran": [histogram.tolist()], "p_phi_positive": [p_positive],
               "delta_f": [delta_f], "delta_f_sem": [0.1], "mean_energy": [float(np.mean(dataset.energies))],
               "mean_energy_sem": [0.2]}
    frames = load_reference(tiny["reference"]).frames
    samples = SampleSet(dataset.positions, dataset.energies, np.zeros(n), np.full(n, -np.log(n)),
                        np.zeros(n, dtype=bool), temperature)
    metrics, arrays = evaluate_samples(temperature, samples, system.topology, generator,
                                            Reference(summary, Path("fake.json"), frames), seed=0)
    assert metrics["ess"] == pytest.approx(1.0)
    assert metrics["ess_exact_basin_masses"] == pytest.approx(1.0)
    assert metrics["js_divergence"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["kl_divergence"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["energy_wasserstein"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["delta_f"]["generator"] == pytest.approx(delta_f, rel=1e-12)
    assert metrics["delta_f_kT"]["generator"] == pytest.approx(delta_f / kT(temperature), rel=1e-12)
    assert metrics["mean_energy"]["generator"] == pytest.approx(summary["mean_energy"][0], rel=1e-12)
    assert metrics["basin_populations"]["generator"][1] == pytest.approx(p_positive)
    np.testing.assert_allclose(arrays["histogram"], histogram, atol=1e-15)


def test_shipped_summary_without_frames(tiny: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Default reference = the shipped summary; its frames (ref/ala2/frames, not shipped) must not be needed, and
    temperatures outside the trained range or the reference are evaluated with warnings."""
    monkeypatch.chdir(tmp_path)                               # the summary's relative frames dir does not resolve
    notes: list[str] = []
    metrics = evaluate(tiny["model"], tmp_path / "out", temperatures=[450.0, 1100.0], n_samples=200,
                       energy_platform="Reference", progress=False, on_warning=notes.append)
    assert metrics["reference_frames"] is False and metrics["reference"] == str(SHIPPED)
    at_450, at_1100 = metrics["per_temperature"]
    assert not FRAME_KEYS & set(at_450) and at_450["in_trained_range"] is True
    assert at_450["delta_f_kT"]["reference"] is not None
    assert at_1100["in_trained_range"] is False and at_1100["delta_f_kT"]["reference"] is None
    assert len(notes) == 2 and "outside the trained range 300-1000 K" in notes[0] and "1100 K" in notes[1]
    assert metrics["warnings"] == notes
    assert "outside the trained range" in (tmp_path / "out" / "summary.md").read_text()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(tiny["model"], tmp_path / "again", temperatures=[1100.0], n_samples=50,
                 energy_platform="Reference", progress=False)
    raised = [str(w.message) for w in caught if issubclass(w.category, OutOfRangeWarning)]
    assert raised == notes                                # without on_warning: OutOfRangeWarning


def test_reference_of_another_system_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    summary = json.loads(SHIPPED.read_text())
    summary["system"]["fingerprint"]["n_atoms"] = 23
    other = tmp_path / "other.json"
    other.write_text(json.dumps(summary))
    with pytest.raises(SystemMismatchError, match="another system"):
        evaluate(tiny["model"], tmp_path / "out", reference=other, n_samples=10, progress=False)


def test_bad_references_and_temperatures_raise_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_reference(tmp_path / "missing")
    with pytest.raises(InputError, match="no summary.json"):
        load_reference(tmp_path)
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a `trade-md reference` summary"):
        load_reference(tmp_path / "x.json")
    assert temperatures_from_text("300, 450,1000").tolist() == [300.0, 450.0, 1000.0]
    for text in ("300,abc", "", "300,-5"):
        with pytest.raises(InputError, match="--temperatures"):
            temperatures_from_text(text)


def test_cli_writes_the_report(tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="trade-md")
    register(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["evaluate", "--model", str(tiny["model"]), "--reference", str(tiny["reference"]),
                              "--temperatures", "300,1200", "--out", str(out), "--n-samples", "100",
                              "--platform", "Reference", "--no-progress"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # the CLI reports temperatures by printing, not warnings
        assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "WARNING: 1200 K lies outside the trained range" in captured.err
    assert f"wrote {out / 'metrics.json'}" in captured.out
    assert "with exact basin masses" in captured.out
    assert [m["temperature"] for m in _strict_json(out / "metrics.json")["per_temperature"]] == [300.0, 1200.0]
    mixed = tmp_path / "mixed"
    args = parser.parse_args(["evaluate", "--model", str(tiny["model"]), "--reference", str(tiny["reference"]),
                              "--temperatures", "600", "--out", str(mixed), "--n-samples", "100",
                              "--platform", "Reference", "--no-progress", "--mixture-ratio", "1.2:0.25"])
    assert args.func(args) == 0
    assert _strict_json(mixed / "metrics.json")["mixture_ratios"] == [[1.2, 0.25]]
    args = parser.parse_args(["evaluate", "--model", str(tiny["model"]), "--out", str(mixed), "--mixture-ratio", "1.2"])
    with pytest.raises(InputError, match="--mixture-ratio takes two numbers"):
        args.func(args)


def test_calibrated_evaluation_needs_and_records_the_calibration(tiny: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from trade_md.basins import calibrate, features_for
    from trade_md.sampler import Sampler

    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    with pytest.raises(InputError, match="trade-md calibrate"):
        evaluate(model, tmp_path / "out", reference=tiny["reference"], n_samples=10, progress=False, calibrated=True)
    with Sampler.from_checkpoint(model, platform="Reference") as sampler:
        calibrate(sampler, features_for(sampler.system), [600.0], 200, progress=False).save(
            model / "basin_calibration.json")
    metrics = evaluate(model, tmp_path / "out", reference=tiny["reference"], temperatures=[600.0], n_samples=50,
                       energy_platform="Reference", progress=False, calibrated=True)
    assert metrics["basin_calibrated"] is True and metrics["calibration_energy_evaluations"] == 200
    assert "basin-calibrated proposal" in (tmp_path / "out" / "summary.md").read_text()


def test_energy_axis_follows_the_boltzmann_weighted_series() -> None:
    from trade_md.analysis.evaluation_report import _energy_limits, _weighted_quantiles
    from trade_md.analysis.plots import energy_histograms

    values = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(_weighted_quantiles(values, np.array([0.0, 0.0, 1.0, 0.0]), (0.2, 0.8)), [2.0, 2.0])
    np.testing.assert_allclose(_weighted_quantiles(values, None, (0.25, 0.5, 0.51, 1.0)), [0.0, 1.0, 2.0, 3.0])
    reference = np.linspace(-10.0, 10.0, 2001)
    huge = np.array([1e12, 2e12, 5.0])
    series = {"generator (raw)": (huge, None), "generator (reweighted)": (huge, np.array([0.0, 0.0, 1.0])),
              "reference (MBAR)": (reference, np.full(reference.size, 1.0 / reference.size))}
    low, high = _energy_limits(series)
    span = 9.9 - (-9.9)                                         # 0.5 / 99.5 % quantiles of the reference grid
    assert low == pytest.approx(-9.9 - 0.1 * span, abs=0.02) and high == pytest.approx(9.9 + 0.1 * span, abs=0.02)
    figure = energy_histograms({600.0: series}, limits={600.0: (low, high)})
    assert figure.axes[0].get_xlim()[1] < 20.0                  # the 1e12 kJ/mol samples do not set the axis

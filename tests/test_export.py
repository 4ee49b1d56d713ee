"""Exported and shipped models: ``trade-md export`` strips the training state and keeps a model that samples
identically; a built-in system's ``model/`` directory loads by name everywhere a run directory does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import make_tiny_model

import trade_md.systems as systems
from trade_md.cli import main
from trade_md.errors import InputError
from trade_md.formats.checkpoint import load_generator, read_checkpoint
from trade_md.formats.dataset import load_dataset
from trade_md.recipe.card import EXPORTED_KEYS, export_model
from trade_md.sampler import Sampler


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_an_exported_model_keeps_the_model_and_drops_the_training_state(tiny_run: Path, tmp_path: Path) -> None:
    card = export_model(tiny_run, tmp_path / "exported")
    stored = read_checkpoint(tmp_path / "exported")
    assert set(stored) <= set(EXPORTED_KEYS) and "optimizer_state" in read_checkpoint(tiny_run)
    assert card["size_bytes"] < (tiny_run / "checkpoint.pt").stat().st_size
    assert card["parameters"] == sum(p.numel() for p in load_generator(tiny_run).generator.state_dict().values())
    assert card["per_temperature"] == [] and card["trained_range"] == [300.0, 1000.0]
    assert "# Trained generator: alanine-dipeptide" in (tmp_path / "exported" / "README.md").read_text()
    original, exported = load_generator(tiny_run), load_generator(tmp_path / "exported")
    assert exported.trained_range == original.trained_range and exported.steps == original.steps
    for name, value in original.generator.state_dict().items():
        assert torch.equal(value, exported.generator.state_dict()[name]), name
    positions = torch.as_tensor(load_dataset(tiny_run.parent / "data").positions[:32], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(original.generator.log_prob(positions, 450.0), exported.generator.log_prob(positions, 450.0))


def test_a_shipped_model_loads_by_name_in_python_and_on_the_command_line(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = tmp_path / "systems"
    shutil.copytree(systems.SYSTEMS_DIR, shipped, ignore=shutil.ignore_patterns("model"))
    monkeypatch.setattr(systems, "SYSTEMS_DIR", shipped)
    with pytest.raises(InputError, match="ships no trained generator .*trade-md run --system alanine-dipeptide"):
        systems.pretrained_model("alanine-dipeptide")
    assert main(["sample", "--system", "alanine-dipeptide", "--temperature", "450", "--n", "10",
                 "--out", str(tmp_path / "s")]) == 2
    assert "ships no trained generator" in capsys.readouterr().err

    export_model(tiny_run, shipped / "alanine_dipeptide" / "model")
    assert systems.pretrained_model("alanine-dipeptide") == shipped / "alanine_dipeptide" / "model"
    assert systems.resolve_model("alanine-dipeptide") == shipped / "alanine_dipeptide" / "model"
    assert systems.resolve_model(tiny_run) == tiny_run                 # a path stays a path
    with Sampler.from_pretrained("alanine-dipeptide", platform="Reference") as sampler:
        samples = sampler.sample(50, 450.0)
    assert samples.positions.shape == (50, 22, 3) and np.isclose(samples.weights.sum(), 1.0)
    assert main(["sample", "--system", "alanine-dipeptide", "--temperature", "450", "--n", "50", "--platform",
                 "Reference", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert "50 samples at 450 K, Kish ESS" in capsys.readouterr().out
    assert (tmp_path / "s" / "samples.npz").is_file()
    draws = []
    for name in ("a", "b"):                                          # --seed repeats a draw exactly
        assert main(["sample", "--system", "alanine-dipeptide", "--temperature", "450", "--n", "20", "--seed", "7",
                     "--platform", "Reference", "--no-progress", "--out", str(tmp_path / name)]) == 0
        draws.append(np.load(tmp_path / name / "samples.npz")["log_weights"])
    np.testing.assert_array_equal(*draws)
    with pytest.raises(InputError, match="unknown built-in system"):
        systems.pretrained_model("no-such-molecule")


def test_training_can_start_from_a_shipped_model(tiny_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from trade_md.config import TrainConfig
    from trade_md.train import generator_for
    from tiny_model import TINY_TRAIN

    shipped = tmp_path / "systems"
    shutil.copytree(systems.SYSTEMS_DIR, shipped, ignore=shutil.ignore_patterns("model"))
    monkeypatch.setattr(systems, "SYSTEMS_DIR", shipped)
    export_model(tiny_run, shipped / "alanine_dipeptide" / "model")
    dataset = load_dataset(tiny_run.parent / "data")
    config = TrainConfig.from_dict({**TINY_TRAIN, "data": str(dataset.path), "out": str(tmp_path / "more"),
                                    "reference_temperature": dataset.temperature, "init_from": "alanine-dipeptide"})
    started = generator_for(dataset, config)
    for name, value in load_generator(tiny_run).generator.state_dict().items():
        assert torch.equal(value, started.state_dict()[name]), name


def test_export_refuses_a_directory_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err

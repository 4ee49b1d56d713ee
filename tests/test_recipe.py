"""Tests of trade_md.recipe (`trade-md run`): the quick preset end to end, stage skipping on --resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from trade_md.cli.run import register
from trade_md.errors import InputError
from trade_md.recipe import FULL, QUICK, run_pipeline, train_config


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trade-md")
    register(parser.add_subparsers())
    args = parser.parse_args(["run", *argv])
    return args.func(args)


def test_presets_give_valid_trade_configs(tmp_path: Path) -> None:
    for preset in (QUICK, FULL):
        config = train_config(preset, tmp_path / "data", tmp_path / "model")
        assert config.mode == "trade" and config.temperatures.reference == 600.0
        assert config.trained_range == (280.0, 1050.0)
        assert config.data.path == str(tmp_path / "data") and config.out == str(tmp_path / "model")
    assert train_config(FULL, tmp_path, tmp_path).schedule.steps == 40000         # trade.yaml as shipped
    assert train_config(QUICK, tmp_path, tmp_path).schedule.steps == QUICK.train["schedule"]["steps"] <= 200


def test_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a `trade-md run` directory"):
        run_pipeline(tmp_path, quick=True, progress=False)


@pytest.mark.slow
def test_quick_run_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "main"
    assert _run(["--quick", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"report: {out / 'report' / 'summary.md'}"

    # an interrupted training stage continues from its checkpoint (written every 25 steps)
    import shutil

    from trade_md.formats.checkpoint import read_checkpoint
    from trade_md.trainer import Trainer

    shutil.rmtree(out / "model")
    shutil.rmtree(out / "report")
    original = Trainer.train_step

    def interrupted(self: Trainer) -> dict[str, float]:
        if self.step == 30:
            raise KeyboardInterrupt
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(["--quick", "--out", str(out), "--resume", "--no-progress"])
    assert read_checkpoint(out / "model")["step"] == 25
    capsys.readouterr()
    assert _run(["--quick", "--out", str(out), "--resume", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(resuming at step 25)" in lines[1]
    assert read_checkpoint(out / "model")["step"] == QUICK.train["schedule"]["steps"]
    assert lines[-1] == f"report: {out / 'report' / 'summary.md'}"
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["temperatures"] == [300.0, 450.0, 600.0, 800.0, 1000.0]
    assert metrics["training_steps"] == QUICK.train["schedule"]["steps"] and metrics["n_samples"] == QUICK.n_samples
    assert all(0.0 < m["ess"] <= 1.0 for m in metrics["per_temperature"])
    assert all((out / "report" / f"{name}.{ext}").is_file()
               for name in ("ramachandran", "delta_f", "ess", "energy") for ext in ("png", "svg"))
    assert (out / "train.yaml").is_file() and (out / "data" / "run.json").is_file()

    with pytest.raises(InputError, match="--resume"):                 # no silent overwrite
        run_pipeline(out, quick=True, progress=False)
    with pytest.raises(InputError, match="'quick' preset"):
        run_pipeline(out, quick=False, resume=True, progress=False)

    checkpoint = out / "model" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    (out / "report" / "metrics.json").unlink()                        # evaluation incomplete: only it reruns
    assert _run(["--quick", "--out", str(out), "--resume", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "MD at 600 K: complete" in lines[0] and "skipped" in lines[0]
    assert "training over 280-1050 K: complete" in lines[1]
    assert "[3/3] evaluation" in lines[2] and "skipped" not in lines[2]
    assert checkpoint.stat().st_mtime_ns == stamp and (out / "report" / "metrics.json").is_file()
    assert lines[-1] == f"report: {out / 'report' / 'summary.md'}"

"""Data-parallel training on 2 CPU processes (gloo) against a single process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from trade_md.config import TrainConfig, deep_merge
from trade_md.distributed import init_from_environment, launched_by_torchrun
from trade_md.formats.checkpoint import SystemRecord, read_checkpoint
from trade_md.toys import DoubleWell1D, kl_divergence, toy_generator
from trade_md.trainer import Trainer

T0 = 300.0
TEMPERATURES = (150.0, 300.0, 600.0)
STEPS = 60
RESUME_AT = 30
PARAMETER_TOLERANCE = 1e-9
"""Largest |difference| of any parameter between the 2-process and the 1-process run after STEPS steps (float64;
measured 7e-15 for the parameters, 7e-16 relative for E[U])."""


def _config(overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Double well, NLL + reverse-KL boundary, TRADE and the range KL from step 10; global batch sizes, odd so
    that 2 ranks get unequal shares (127/128, 32/33, ...)."""
    values: dict[str, Any] = {
        "mode": "trade", "seed": 0, "dtype": "float64", "temperatures": {"range": [150.0, 600.0]},
        "flow": {"n_layers": 2, "hidden": 16, "n_bins": 8},
        "schedule": {"steps": STEPS, "learning_rate": 3e-3, "lr_schedule": "constant"},
        "objectives": {"nll": {"batch_size": 255}, "kl": {"weight": 0.5, "batch_size": 65},
                       "trade": {"start": 10, "ramp": 20, "batch_size": 126, "causality_epsilon": 0.5},
                       "kl_range": {"weight": 0.2, "start": 10, "ramp": 20, "batch_size": 65}},
        "grid": {"nodes": 7, "samples": 1023, "refresh_every": 10},
        "monitor": {"validate_every": STEPS, "checkpoint_every": STEPS, "progress": False,
                    "ess_samples": 0},              # rank 0's validation ESS would count extra energies
    }
    return TrainConfig.from_dict(deep_merge(values, overrides or {}))


def _trainer(config: TrainConfig, out: Path | None = None, distributed: Any = None) -> Trainer:
    toy = DoubleWell1D()
    torch.manual_seed(1)                                   # the same initial model in every run and on every rank
    generator = toy_generator(toy, T0, **config.flow)
    data = toy.sample(4000, T0, generator=torch.Generator().manual_seed(1))
    return Trainer(generator, config, SystemRecord.of(toy), potential=toy.potential, data=data, out=out,
                   distributed=distributed)


def _result(trainer: Trainer, seconds: float) -> dict[str, Any]:
    toy = DoubleWell1D()
    return {
        "params": {k: v.clone() for k, v in trainer.generator.state_dict().items()},
        "mean_energy": trainer.grid.mean_energy.clone(),
        "ess": trainer.grid.ess.clone(),
        "loss": trainer.grid.loss.clone(),
        "energy_evaluations": trainer.energy_evaluations,
        "kl": {t: kl_divergence(toy, trainer.generator.log_prob, t) for t in TEMPERATURES},
        "seconds_per_step": seconds / trainer.step,
        "skipped": trainer.skipped_steps,
    }


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: an uninterrupted run, and a run stopped at RESUME_AT and resumed from rank 0's checkpoint."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    context = init_from_environment("cpu", timeout_s=60.0)
    try:
        assert context is not None and context.world_size == world_size and context.rank == rank
        trainer = _trainer(_config(), distributed=context)
        start = time.perf_counter()
        summary = trainer.run()
        result = _result(trainer, time.perf_counter() - start)
        result["summary"] = summary

        half = _trainer(_config({"schedule": {"steps": RESUME_AT}}), Path(folder) / "half", context)
        half.run()                      # rank 0 writes half/checkpoint.pt before the run's final all_reduce
        resumed = _trainer(_config(), Path(folder) / "resumed", context)
        resumed.load_state(read_checkpoint(Path(folder) / "half"), "checkpoint")
        resumed.run()
        result["resumed_params"] = {k: v.clone() for k, v in resumed.generator.state_dict().items()}
        result["resumed_mean_energy"] = resumed.grid.mean_energy.clone()
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    except BaseException:
        context.close(wait=False)
        raise
    context.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two ranks (gloo) and, in this process, one process with the same config: the same global batch."""
    folder = tmp_path_factory.mktemp("distributed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
        single = _trainer(_config())
        start = time.perf_counter()
        single.run()
        reference = _result(single, time.perf_counter() - start)
        other = _trainer(_config({"seed": 1}))             # the same model and batch sizes, another random stream
        other.run()
        switched = _trainer(_config())                     # the 2-process checkpoint at RESUME_AT, continued on one
        switched.load_state(read_checkpoint(folder / "half"), "checkpoint")
        switched.run()
        initial = _trainer(_config())
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"ranks": ranks, "single": reference, "other": _result(other, 1.0), "switched": _result(switched, 1.0),
            "initial": {k: v.clone() for k, v in initial.generator.state_dict().items()},
            "files": sorted(p.name for p in (folder / "resumed").iterdir())}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_ranks_hold_identical_models_and_grids(runs: dict[str, Any]) -> None:
    """Averaged gradients and pooled grid statistics: both ranks end bit-for-bit equal."""
    first, second = runs["ranks"]
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    for key in ("mean_energy", "ess", "loss"):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, equal_nan=True)
    assert bool(torch.all(torch.isfinite(first["mean_energy"]))) and first["skipped"] == second["skipped"] == 0


def test_each_rank_does_its_share_of_the_global_work(runs: dict[str, Any]) -> None:
    """Odd global sizes split 127/128 etc.: the ranks' energy evaluations add up to the single run's exactly."""
    first, second = runs["ranks"]
    assert 0 < first["energy_evaluations"] < second["energy_evaluations"]
    assert first["energy_evaluations"] + second["energy_evaluations"] == runs["single"]["energy_evaluations"]
    assert first["summary"]["energy_evaluations_all_ranks"] == runs["single"]["energy_evaluations"]


def test_two_ranks_match_one_process_with_the_same_global_batch(runs: dict[str, Any]) -> None:
    """Parameters after STEPS steps within PARAMETER_TOLERANCE and grid E[U] within 1e-9 relative of one process
    (float64; only summation order differs), while training moved the parameters, and another random stream
    ends elsewhere, by orders of magnitude more than the tolerance."""
    dist, single = runs["ranks"][0], runs["single"]
    assert _max_difference(dist["params"], single["params"]) < PARAMETER_TOLERANCE
    torch.testing.assert_close(dist["mean_energy"], single["mean_energy"], rtol=1e-9, atol=0)
    torch.testing.assert_close(dist["ess"], single["ess"], rtol=1e-9, atol=0)
    torch.testing.assert_close(dist["loss"], single["loss"], rtol=1e-9, atol=0, equal_nan=True)
    assert _max_difference(runs["initial"], single["params"]) > 1e4 * PARAMETER_TOLERANCE
    assert _max_difference(runs["other"]["params"], single["params"]) > 1e4 * PARAMETER_TOLERANCE
    for t in TEMPERATURES:
        assert abs(dist["kl"][t] - single["kl"][t]) < 1e-6, (t, dist["kl"], single["kl"])


def test_resume_on_two_ranks_continues_exactly(runs: dict[str, Any]) -> None:
    """Both ranks load rank 0's checkpoint and end bit-for-bit as the uninterrupted 2-process run."""
    for result in runs["ranks"]:
        for name, value in result["params"].items():
            assert torch.equal(value, result["resumed_params"][name]), name
        torch.testing.assert_close(result["resumed_mean_energy"], result["mean_energy"], rtol=0, atol=0)
    assert runs["files"] == ["best", "checkpoint.pt", "summary.json"]             # rank 0 alone writes


def test_a_two_process_checkpoint_continues_on_one_process(runs: dict[str, Any]) -> None:
    assert _max_difference(runs["switched"]["params"], runs["single"]["params"]) < PARAMETER_TOLERANCE


def test_launch_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun() and init_from_environment("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not launched_by_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_by_torchrun()


@pytest.mark.slow
def test_torchrun_cli_trains_and_resumes_like_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m trade_md.cli train` on alanine dipeptide (3 steps, then --resume to 4) ends
    where `trade-md train` on one process ends: parameters within 1e-9, E[U] within 1e-9 relative (float64;
    measured 3e-17 and 1e-13)."""
    import warnings

    from trade_md.cli import main
    from trade_md.convergence import ConvergenceWarning
    from trade_md.md import run_md
    from trade_md.systems import load_system

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run_md(load_system("alanine-dipeptide"), 600.0, tmp_path / "data", ns=0.005, replicas=1, seed=1,
               equilibration_ps=1.0, frame_interval_ps=0.05, platform="Reference", progress=False)
    config = tmp_path / "small.yaml"
    config.write_text(
        "mode: trade\ntemperature_min: 300.0\ntemperature_max: 1000.0\nbatch_size: 16\nkl_weight: 0.1\n"
        "kl_batch_size: 8\ntrade_batch_size: 16\ntrade_start: 1\ntrade_ramp: 2\ngrid_nodes: 4\ngrid_samples: 32\n"
        "grid_refresh_every: 2\ncheckpoint_every: 2\nvalidate_every: 2\nenergy_platform: Reference\ndtype: float64\n"
        "flow: {n_layers: 2, hidden: 16, n_bins: 4}\n"
    )

    def command(out: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out),
                "--no-progress", *extra]

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "trade_md.cli"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (("--steps", "3"), ("--steps", "4", "--resume")):
        done = subprocess.run([*launcher, *command(tmp_path / "two", *extra)], env=environment, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote ") == 1                          # rank 0 alone reports
    assert main(command(tmp_path / "one", "--steps", "3")) == 0           # the same schedule (cosine over --steps)
    assert main(command(tmp_path / "one", "--steps", "4", "--resume")) == 0
    two, one = read_checkpoint(tmp_path / "two"), read_checkpoint(tmp_path / "one")
    assert two["step"] == one["step"] == 4
    assert _max_difference(two["model_state"], one["model_state"]) < 1e-9
    torch.testing.assert_close(two["grid_state"]["mean_energy"], one["grid_state"]["mean_energy"], rtol=1e-9, atol=0)

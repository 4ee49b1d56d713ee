"""Tests of trade_md.recipe (`trade-md run`): the budget rule, the options and their checks before any work, the MD
extension rule, the stage configs; slow: the quick run end to end with resumption and a shared-boundary ablation,
and the quick run on a molecule the package has never seen."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from trade_md.cli import main
from trade_md.cli.run import register
from trade_md.config import TrainConfig
from trade_md.errors import InputError, SystemMismatchError
from trade_md.formats.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, read_checkpoint
from trade_md.formats.dataset import write_dataset
from trade_md.recipe import (
    DEFAULT_BUDGET_MINUTES,
    SHARES,
    TRANSFERS,
    RecipeStopped,
    RunOptions,
    plan_budget,
    run_recipe,
    trained_range,
)
from trade_md.recipe import pipeline
from trade_md.recipe.budget import check_samples, md_length
from trade_md.recipe.context import RunContext, run_data
from trade_md.recipe.cost import COST_FILE, Meter, record_session, stage_cost
from trade_md.recipe.flow_choice import MIN_BOUNDARY_STEPS, PROBE_STEPS, WARMUP_STEPS, candidates, choose_flow, \
    seconds_per_step
from trade_md.recipe.md_stage import _extension, data_cost, first_round, md_dynamics, needed_length_factor
from trade_md.recipe.options import load_overrides
from trade_md.recipe.report import _flow_line, _reference_table, _stage_summary
from trade_md.recipe.training import FLOW_CHOICE_FILE, _flow_choice, boundary_config, transfer_config
from trade_md.systems import load_system

REFERENCE = Path(__file__).resolve().parents[1] / "systems" / "alanine_dipeptide" / "reference" / "summary.json"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trade-md")
    register(parser.add_subparsers())
    args = parser.parse_args(["run", *argv])
    return args.func(args)


# ------------------------------------------------------------------------------------------------- the budget rule


def test_the_budget_rule_gives_the_j1_flow_for_alanine_dipeptide_and_scales_with_the_atoms() -> None:
    plan = plan_budget(22, cores=2)
    assert plan.budget_minutes == DEFAULT_BUDGET_MINUTES == 120.0
    assert plan.stage_minutes == {"md": 18.0, "boundary": 48.0, "transfer": 42.0, "check": 12.0}
    assert sum(SHARES.values()) == pytest.approx(1.0) and plan.md_max_minutes == 42.0
    # a larger molecule: MD 15 % + 0.5 % per DOF beyond 60 (at most 30 %) from the boundary's share; transfer and
    # check unchanged; --config md: {share: ...} instead of the rule
    mid, phe, ala4, own = plan_budget(26), plan_budget(32), plan_budget(42), plan_budget(32, md_share=0.15)
    assert mid.shares == pytest.approx({"md": 0.21, "boundary": 0.34, "transfer": 0.35, "check": 0.10})  # d = 72
    assert phe.shares["md"] == ala4.shares["md"] == 0.30 and phe.shares["boundary"] == 0.25
    assert phe.md_max_minutes == pytest.approx(60.0) and own.stage_minutes == plan.stage_minutes
    assert all(sum(p.shares.values()) == pytest.approx(1.0) for p in (mid, phe, ala4))
    assert plan.flow == {"n_layers": 8, "hidden": 128, "n_hidden_layers": 2, "n_bins": 8,   # J1's flow,
                         "dihedral_windows": True}                                           # stiff dihedrals windowed
    assert plan.batch_size == 256 and plan.md_replicas == 2 and plan.n_dof == 60
    assert plan_budget(42).flow == {"n_layers": 10, "hidden": 256, "n_hidden_layers": 2, "n_bins": 8,
                                    "dihedral_windows": True}
    assert plan_budget(82).flow["n_layers"] == 12 and plan_budget(82).flow["hidden"] == 512
    quick = plan_budget(42, quick=True)
    assert quick.budget_minutes == 1.0 and quick.flow["hidden"] == 32 and quick.md_replicas == 1
    # MD: 18 min at 28,000 steps/s per replica on 2 cores, 10 % kept for start-up, 100 ps equilibration each
    md = md_length(plan, 18 * 60.0, 28000.0)
    assert md["ns"] == pytest.approx(2 * (28.0 * 18 * 60 * 0.9 - 100.0) / 1000.0)
    assert md["equilibration_ps"] == 100.0 and md["frame_interval_ps"] == 1.0
    short = md_length(quick, 9.0, 28000.0)
    assert short["frame_interval_ps"] == 0.1 and short["equilibration_ps"] == pytest.approx(22.7)
    assert check_samples(plan, 720.0, 7000.0, 5) == 300_000                   # capped at the project's standard
    assert check_samples(plan, 10.0, 7000.0, 5) == 9_800


def test_the_budget_rule_refuses_a_budget_too_small_for_a_run() -> None:
    with pytest.raises(InputError, match="too small.*--quick"):
        plan_budget(22, 5.0)
    with pytest.raises(InputError, match="--budget"):
        plan_budget(22, -1.0)


def test_the_trained_range_is_a_little_wider_than_the_evaluated_temperatures() -> None:
    assert trained_range((300.0, 450.0, 600.0, 800.0, 1000.0)) == (280.0, 1050.0)
    assert trained_range((310.0, 370.0)) == (290.0, 390.0)


# ------------------------------------------------------------------------------------------------- options


def test_options_resolve_to_defaults_and_refuse_impossible_values() -> None:
    options = RunOptions().resolve(600.0, None)
    assert options.t0 == 600.0 and options.temperatures == (300.0, 450.0, 600.0, 800.0, 1000.0)
    assert options.transfer == "tilt+kl" and options.quick is False and options.seed == 0
    assert RunOptions().resolve(None, None).t0 == 600.0                         # a system without its own T0
    with pytest.raises(InputError, match="--t0 200 K lies outside"):
        RunOptions(t0=200.0).resolve(None, None)
    with pytest.raises(InputError, match="--transfer"):
        RunOptions(transfer="paper").resolve(None, None)
    with pytest.raises(InputError, match="use one of them"):
        RunOptions(boundary_data="a", boundary_from="b").resolve(None, None)
    with pytest.raises(InputError, match="unknown section 'train'"):
        RunOptions(overrides={"train": {}}).resolve(None, None)
    with pytest.raises(InputError, match="md.steps"):
        RunOptions(overrides={"md": {"steps": 3}}).resolve(None, None)


def test_resume_takes_the_stored_options_allows_a_new_budget_and_refuses_contradictions(tmp_path: Path) -> None:
    stored = RunOptions(quick=True, budget=1.0).resolve(600.0, None)
    resumed = RunOptions(budget=3.0).resume_from(stored, tmp_path)
    assert resumed.budget == 3.0 and resumed.quick and resumed.transfer == "tilt+kl"
    assert RunOptions(temperatures=(1000.0, 300.0, 450.0, 600.0, 800.0)).resume_from(stored, tmp_path).quick
    with pytest.raises(InputError, match="--transfer 'tilt\\+kl'|--transfer tilt\\+kl"):
        RunOptions(transfer="kl").resume_from(stored, tmp_path)
    with pytest.raises(InputError, match="--t0 600"):
        RunOptions(t0=500.0).resume_from(stored, tmp_path)


def test_config_md_share_replaces_the_rule_share_and_is_checked(tmp_path: Path) -> None:
    options = RunOptions(budget=120.0, overrides={"md": {"share": 0.3}}).resolve(600.0, None)
    plan = plan_budget(22, 120.0, md_share=options.md_share, cores=2)
    assert plan.shares["md"] == 0.3 and plan.shares["boundary"] == 0.25
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trade_md.recipe.md_stage.measure_md_speed", lambda *args, **kwargs: 28000.0)
        (settings,) = first_round(load_system("alanine-dipeptide"), plan, options, 0.3 * 7200.0)["rounds"]
    assert "share" not in settings and settings["timestep_fs"] == 2.0 and settings["hydrogen_mass_amu"] == 4.0
    assert settings["ns"] == pytest.approx(md_length(plan, 0.5 * 0.3 * 7200.0, 28000.0, timestep_fs=2.0)["ns"])
    slow = RunOptions(budget=120.0, overrides={"md": {"timestep_fs": 1.0, "hydrogen_mass_amu": None}}).resolve(600.0,
                                                                                                          None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trade_md.recipe.md_stage.measure_md_speed", lambda *args, **kwargs: 28000.0)
        (one_fs,) = first_round(load_system("alanine-dipeptide"), plan, slow, 0.3 * 7200.0)["rounds"]
        (hbonds,) = first_round(load_system("alanine-dipeptide", constraints="HBonds"), plan, options,
                                0.3 * 7200.0)["rounds"]
    assert one_fs["timestep_fs"] == 1.0 and one_fs["hydrogen_mass_amu"] is None
    assert one_fs["ns"] == pytest.approx(md_length(plan, 0.5 * 0.3 * 7200.0, 28000.0)["ns"])
    assert settings["ns"] / one_fs["ns"] == pytest.approx(2.0, rel=0.01)     # twice the ns in the same minutes
    assert hbonds["timestep_fs"] == 2.0 and hbonds["hydrogen_mass_amu"] is None
    for share in (0.6, 0, "most"):
        (tmp_path / "run.yaml").write_text(f"md: {{share: {share}}}\n")
        with pytest.raises(InputError, match=r"md.share .* must be a fraction of the budget in \(0, 0.45\]"):
            load_overrides(tmp_path / "run.yaml")


def test_boundary_and_transfer_share_what_the_md_left(tmp_path: Path) -> None:
    """The allocation rule: the defaults when MD keeps to its share; an MD overrun shortens boundary and transfer in
    proportion to their shares (the tetrapeptide's MD took 57.8 of 127 min); a boundary that stops early leaves its
    time to the transfer; each keeps 10 % of the budget at least."""
    plan = plan_budget(42, 127.0, cores=2)                     # d = 120: MD 30 %, boundary 25 %, transfer 35 %
    ctx = RunContext(tmp_path, None, None, plan, None, None, print, False)  # type: ignore[arg-type]

    def spend(stage: str, minutes: float) -> None:
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / COST_FILE).write_text(json.dumps({"sessions": [{"wall_s": 60 * minutes, "cpu_s": 0}]}))

    def minutes(stage: str) -> float:
        return ctx.allocation_seconds(stage) / 60.0

    shares = plan.shares
    spend("md", shares["md"] * 127.0)
    assert minutes("boundary") == pytest.approx(shares["boundary"] * 127.0)
    spend("boundary", minutes("boundary"))
    assert minutes("transfer") == pytest.approx(shares["transfer"] * 127.0)
    assert minutes("check") == pytest.approx(12.7) and minutes("md") == pytest.approx(3 * 12.7)
    spend("md", 57.8)
    left = 127.0 * (1 - shares["check"]) - 57.8
    assert minutes("boundary") == pytest.approx(left * 25 / 60) and minutes("boundary") > 0.1 * 127.0 + 10
    spend("boundary", 10.0)                                    # stopped early: the transfer gets the rest
    assert minutes("transfer") == pytest.approx(left - 10.0)
    spend("md", 110.0)
    assert minutes("boundary") == minutes("transfer") == pytest.approx(12.7)


def test_a_killed_session_keeps_its_cost_to_its_last_tick(tmp_path: Path) -> None:
    """A stage's Meter writes its session's time every tick; a process that dies without cleanup (os._exit, as
    under SIGKILL) leaves that entry, counted and noted; a closed session replaces its own open entry. The running
    session's own entry is left out where the stage adds its meter (a double count stopped an MD stage half way)."""
    import subprocess
    import sys

    script = ("import os, sys, time; from pathlib import Path; from trade_md.recipe.cost import Meter; "
              "meter = Meter(Path(sys.argv[1]), every_s=0.05); time.sleep(0.6); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    (killed,) = json.loads((tmp_path / COST_FILE).read_text())["sessions"]
    assert killed["open"] and 0.4 < killed["wall_s"] < 0.7
    meter = Meter(tmp_path, every_s=0.05)
    time.sleep(0.2)
    assert len(json.loads((tmp_path / COST_FILE).read_text())["sessions"]) == 2      # its open entry,
    running = stage_cost(tmp_path, without=meter).wall_s + meter.wall_s               # not counted twice by a stage
    assert running == pytest.approx(killed["wall_s"] + meter.wall_s, abs=0.05)        # that adds its own meter
    assert stage_cost(tmp_path).wall_s > running - meter.wall_s + 0.1
    record_session(tmp_path, meter, energy_evaluations=7)
    time.sleep(0.1)                                                                  # no tick after the close
    sessions = json.loads((tmp_path / COST_FILE).read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["energy_evaluations"] == 7 and "open" not in sessions[1]
    cost = stage_cost(tmp_path)
    assert cost.sessions == 2 and cost.energy_evaluations == 7 and cost.wall_s > killed["wall_s"] + 0.2
    assert len(cost.notes) == 1 and "killed after 0.0 min" in cost.notes[0]


def test_config_md_dynamics_are_checked_before_any_work() -> None:
    plain, hbonds = load_system("alanine-dipeptide"), load_system("alanine-dipeptide", constraints="HBonds")
    assert md_dynamics(plain, {}) == {"timestep_fs": 2.0, "hydrogen_mass_amu": 4.0}
    assert md_dynamics(plain, {"timestep_fs": 1.0, "hydrogen_mass_amu": None}) == {"timestep_fs": 1.0,
                                                                                  "hydrogen_mass_amu": None}
    assert md_dynamics(hbonds, {"hydrogen_mass_amu": None}) == {"timestep_fs": 2.0, "hydrogen_mass_amu": None}
    for md in ({"hydrogen_mass_amu": None}, {"hydrogen_mass_amu": 3.0}, {"timestep_fs": 2.5}):
        with pytest.raises(InputError, match=r"--config md: timestep_fs .* set md.timestep_fs: 1.0, or "
                                             r"md.hydrogen_mass_amu: 4"):
            md_dynamics(plain, md)


def test_the_run_configs_of_the_results_page_are_valid() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "run").glob("*.yaml"))
    assert {path.name for path in configs} >= {"md_share_15.yaml", "circle_dihedrals.yaml", "md_76ns.yaml",
                                               "md_1fs.yaml"}
    assert all(isinstance(load_overrides(path), dict) for path in configs)
    one_fs = {"timestep_fs": 1.0, "hydrogen_mass_amu": None}
    assert load_overrides(configs[0].with_name("md_share_15.yaml")) == {"md": {"share": 0.15, **one_fs}}
    assert load_overrides(configs[0].with_name("md_1fs.yaml")) == {"md": one_fs}


def test_bad_input_fails_before_any_work_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a `trade-md run` directory"):
        run_recipe(tmp_path, options=RunOptions(quick=True), progress=False)
    out = tmp_path / "x"
    with pytest.raises(SystemMismatchError, match="another system"):      # the alanine-dipeptide reference
        run_recipe(out, system=load_system("alanine-tetrapeptide"),
                   options=RunOptions(quick=True, reference=str(REFERENCE)), progress=False)
    assert not out.exists()
    assert main(["run", "--t0", "200", "--out", str(out), "--no-progress"]) == 2
    assert main(["run", "--budget", "3", "--out", str(out), "--no-progress"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--t0 200 K lies outside" in errors[0] and "too small" in errors[1]
    assert not out.exists()
    for overrides, message in (({"boundary": {"flow": {"hiden": 64}}}, r"boundary: flow: unknown key\(s\) hiden"),
                               ({"transfer": {"flow": {"thermal_scaling": "yes"}}}, "thermal_scaling = 'yes'")):
        with pytest.raises(InputError, match=message):         # a typo in --config: before the MD, not after it
            run_recipe(out, options=RunOptions(quick=True, overrides=overrides), progress=False)
    assert not out.exists()
    with pytest.MonkeyPatch.context() as patch:                # a molecule whose MD runs at 100 steps/s
        patch.setattr("trade_md.recipe.md_stage.measure_md_speed", lambda *args, **kwargs: 100.0)
        with pytest.raises(InputError, match=r"too small for this molecule.*raise --budget to \d+"):
            run_recipe(out, options=RunOptions(budget=20.0), progress=False)
        quick = first_round(load_system("alanine-dipeptide"), plan_budget(22, quick=True),
                            RunOptions(quick=True).resolve(600.0, None), 9.0)
        assert quick["rounds"][0]["ns"] == 0.05                # --quick on a slow CPU: the minimum MD, not an error
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- stages


def _report(entries: int, population: float, error: float) -> dict[str, Any]:
    return {"converged": False, "warnings": ["x", "y"], "dihedrals": [{
        "label": "ALA 2", "converged": False, "entries_phi_positive": entries,
        "population_phi_positive": population, "relative_error": error / population if population else None}]}


def test_unconverged_md_is_extended_within_the_budget_or_the_run_stops_with_what_to_do(tmp_path: Path) -> None:
    assert needed_length_factor(_report(5, 0.05, 0.01)) == pytest.approx(4.0)          # 20 entries wanted
    assert needed_length_factor(_report(40, 0.05, 0.02)) == pytest.approx(4.0)         # error 40 % -> 20 %
    assert needed_length_factor(_report(0, 0.0, 0.0)) is None
    plan = plan_budget(22, 60.0)                              # MD may use 21 min; 9 min spent on 10 ns so far
    ctx = SimpleNamespace(plan=plan, t0=600.0, out=tmp_path, cost=lambda name, without: SimpleNamespace(wall_s=540.0))
    meter = SimpleNamespace(wall_s=0.0)
    assert _extension(ctx, _report(15, 0.05, 0.005), 10.0, meter) == pytest.approx(6.0)   # 1.2 x 20/15 - 1
    with pytest.raises(RecipeStopped, match=r"--resume --out .* --budget 124.*--boundary-data"):
        _extension(ctx, _report(5, 0.05, 0.01), 10.0, meter)                            # 38 more ns: 43 of 21 min
    with pytest.raises(RecipeStopped, match="never entered"):
        _extension(ctx, _report(0, 0.0, 0.0), 10.0, meter)


def test_a_stopped_run_says_why_in_its_directory_until_it_gets_through(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def stopping(ctx: Any, header: str) -> dict:
        raise RecipeStopped("MD at 600 K is not converged after 1 ns (P 0.01); To go on: resume with --budget 9")

    monkeypatch.setattr(pipeline, "md_stage", stopping)
    with pytest.raises(RecipeStopped):
        run_recipe(tmp_path / "run", options=RunOptions(quick=True), progress=False, say=lambda line: None)
    text = (tmp_path / "run" / "stopped.md").read_text()
    assert "not converged after 1 ns" in text and "--budget 9" in text and "--resume`: none." in text
    monkeypatch.setattr(pipeline, "md_stage", lambda ctx, header: {"data": "data"})
    for stage in ("boundary_stage", "transfer_stage", "check_stage"):
        monkeypatch.setattr(pipeline, stage, lambda *args: {"model": "model"})
    monkeypatch.setattr(pipeline, "report_stage", lambda ctx, header, results: tmp_path / "summary.md")
    run_recipe(tmp_path / "run", resume=True, progress=False, say=lambda line: None)
    assert not (tmp_path / "run" / "stopped.md").exists()


def test_boundary_data_from_parallel_tempering_counts_the_md_behind_it(tmp_path: Path) -> None:
    (tmp_path / "pt_a").mkdir()
    (tmp_path / "pt_a" / "run.json").write_text(json.dumps({
        "settings": {"temperatures": [600.0, 800.0], "steps_per_iteration": 500, "timestep_fs": 1.0},
        "segments": [{"last_iteration": 600, "wall_s": 40.0, "cpu_s": 35.0},
                     {"last_iteration": 1000, "wall_s": 20.0, "cpu_s": 20.0}]}))
    meta = {"source": "trade-md remd", "temperature": 600.0,
            "runs": [{"dir": str(tmp_path / "pt_a"), "ladder": [600.0, 800.0]}]}
    work, temperatures, note = data_cost(meta)
    assert work["simulated_ns"] == pytest.approx(1000 * 500 * 1e-6 * 2) and temperatures == [600.0, 800.0]
    assert work["energy_evaluations"] == 1000 * (500 * 2 + 4)                   # dynamics + exchange energies
    assert work["recorded"] == {"wall_s": 60.0, "cpu_s": 55.0} and "several temperatures" in note


def test_boundary_data_of_another_temperature_or_system_is_refused_before_any_work(tmp_path: Path) -> None:
    system = load_system("alanine-dipeptide")
    positions = np.repeat(system.positions[None], 20, axis=0)
    data = tmp_path / "data"
    write_dataset(data, system, 600.0, positions=positions, energies=np.zeros(20), times=np.arange(20.0),
                  run=np.zeros(20, dtype=np.int64), record={}, convergence={})
    out = tmp_path / "run"
    with pytest.raises(InputError, match="sampled at 600 K, not at --t0 500"):
        run_recipe(out, options=RunOptions(quick=True, boundary_data=str(data), t0=500.0), progress=False)
    with pytest.raises(SystemMismatchError, match="another system"):
        run_recipe(out, system=load_system("alanine-tetrapeptide"),
                   options=RunOptions(quick=True, boundary_data=str(data), reference=None), progress=False)
    assert not out.exists()


def test_the_boundary_flow_shrinks_until_its_time_holds_the_minimum_steps() -> None:
    rule = plan_budget(42).flow                                                     # 10 x 256
    sizes = [(c["n_layers"], c["hidden"]) for c in candidates(rule)]
    assert sizes == [(10, 256), (8, 256), (8, 128)] and candidates(plan_budget(22).flow) == [plan_budget(22).flow]
    assert all(c["n_bins"] == rule["n_bins"] for c in candidates(rule))
    development_cpu = {(10, 256): 0.44, (8, 256): 0.35, (8, 128): 0.27}           # s/step, tetrapeptide, 1 thread
    timed: list[tuple[int, int]] = []

    def time_step(flow: dict[str, Any]) -> float:
        timed.append((flow["n_layers"], flow["hidden"]))
        return development_cpu[timed[-1]]

    choice = choose_flow(rule, 48.0, 120.0, time_step)
    assert timed == sizes and (choice["chosen"]["n_layers"], choice["chosen"]["hidden"]) == (8, 128)
    assert choice["candidates"][-1]["projected_steps"] == int(0.85 * 48 * 60 / 0.27) == 9066 < MIN_BOUNDARY_STEPS
    assert choice["budget_short"] and choice["budget_for_min_steps"] == 270.0       # 120 x 20,000 / 9,066, rounded up
    timed.clear()
    fast = choose_flow(rule, 48.0, 120.0, lambda flow: timed.append(1) or 0.05)     # a GPU keeps the rule's flow
    assert fast["chosen"] == rule and timed == [1] and not fast["budget_short"] and fast["budget_for_min_steps"] is None
    middle = choose_flow(rule, 48.0, 120.0, lambda flow: 0.1 if flow["n_layers"] == 8 else 0.3)
    assert (middle["chosen"]["n_layers"], middle["chosen"]["hidden"]) == (8, 256) and not middle["budget_short"]


def test_the_report_names_the_timed_flows_and_the_budget_a_short_boundary_would_need() -> None:
    rule = plan_budget(32).flow                                                     # 10 x 192
    times = {10: 0.3, 8: 0.25}
    choice = choose_flow(rule, 48.9, 120.0, lambda flow: 0.174 if flow["hidden"] == 128 else times[flow["n_layers"]])
    line = _flow_line(choice["chosen"], {"flow_choice": choice})
    assert line.startswith("8 layers × 128 hidden (2 hidden layers), 8 bins (timed: 10 × 192: 0.300 s/step → 8,313")
    assert "8 × 128: 0.174 s/step → 14,332 steps; fewer than the 20,000 wanted, --budget 170 would reach them" in line
    assert _flow_line(rule, {"flow_choice": None}) == "10 layers × 192 hidden (2 hidden layers), 8 bins"
    assert _stage_summary({"flow": choice["chosen"], "flow_choice": choice})["flow_choice"] == choice   # in report.json


def _frames(tmp_path: Path, n: int = 64) -> str:
    """A dataset of ``n`` frames of alanine dipeptide at 600 K, jittered by 0.005 nm."""
    system = load_system("alanine-dipeptide")
    positions = system.positions[None] + 0.005 * np.random.default_rng(0).standard_normal((n, system.n_atoms, 3))
    write_dataset(tmp_path / "data", system, 600.0, positions=positions, energies=np.zeros(n),
                  times=np.arange(float(n)), run=np.zeros(n, dtype=np.int64), record={}, convergence={})
    return str(tmp_path / "data")


def test_the_flow_is_timed_on_a_fresh_boundary_and_the_choice_kept_for_a_resume(tmp_path: Path) -> None:
    data = _frames(tmp_path)
    options = dataclasses.replace(RunOptions(), overrides={}).resolve(600.0, None)
    said: list[str] = []
    ctx = SimpleNamespace(plan=dataclasses.replace(plan_budget(22, 10.0), batch_size=16), t0=600.0, options=options,
                          progress=False, note=said.append)
    config = boundary_config(ctx, data, tmp_path / "probe", 4.0, {**ctx.plan.flow, "n_layers": 2, "hidden": 16})
    seconds, evaluations = seconds_per_step(config)
    assert 0.0 < seconds < 10.0 and evaluations == (WARMUP_STEPS + PROBE_STEPS) * 16    # kl: one energy per sample
    assert not (tmp_path / "probe").exists()                                        # the probe writes nothing
    stage = tmp_path / "boundary"
    stage.mkdir()
    assert _flow_choice(ctx, data, stage, 4.0, fresh=False) is None                 # a checkpoint made before
    choice = _flow_choice(ctx, data, stage, 4.0, fresh=True)                        # 4 min on 8 x 128: short
    assert choice is not None and choice["chosen"]["n_layers"] == 8 and choice["budget_short"]
    assert any("warning: fewer than" in line for line in said)
    assert json.loads((stage / FLOW_CHOICE_FILE).read_text()) == choice
    assert json.loads((stage / "cost.json").read_text())["sessions"][0]["energy_evaluations"] == (
        WARMUP_STEPS + PROBE_STEPS) * 16
    assert _flow_choice(ctx, data, stage, 4.0, fresh=False) == choice               # kept on resume, not retimed
    quick = SimpleNamespace(**{**vars(ctx), "plan": plan_budget(22, quick=True)})
    assert _flow_choice(quick, data, tmp_path / "other", 1.0, fresh=True) is None
    sized = SimpleNamespace(**{**vars(ctx), "options": dataclasses.replace(
        options, overrides={"boundary": {"flow": {"hidden": 64}}})})
    assert _flow_choice(sized, data, tmp_path / "sized", 4.0, fresh=True) is None   # --config fixes the size
    windows = SimpleNamespace(**{**vars(ctx), "options": dataclasses.replace(
        options, overrides={"boundary": {"flow": {"dihedral_windows": True}}})})
    (tmp_path / "windows").mkdir()
    assert _flow_choice(windows, data, tmp_path / "windows", 4.0, fresh=True)["chosen"]["n_layers"] == 8
    assert boundary_config(windows, data, tmp_path / "w", 4.0, choice["chosen"]).flow["dihedral_windows"] is True


def _boundary_checkpoint(directory: Path, config: TrainConfig) -> str:
    """A stand-in for a boundary's kept checkpoint: what transfer_config reads of it (its training config)."""
    directory.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict()}, directory / CHECKPOINT_NAME)
    return str(directory)


@pytest.mark.parametrize("transfer", sorted(TRANSFERS))
def test_every_transfer_variant_is_a_valid_config_from_the_frozen_boundary(tmp_path: Path, transfer: str) -> None:
    options = RunOptions(transfer=transfer).resolve(600.0, None)
    ctx = SimpleNamespace(plan=plan_budget(22), t0=600.0, options=options, progress=False)
    boundary = boundary_config(ctx, "data", tmp_path / "boundary", 48.0)
    assert [o.name for o in boundary.active_objectives()] == ["nll", "kl"]
    assert boundary.schedule.minutes == 48.0 and boundary.monitor.select == "val_nll"
    assert boundary.flow["n_layers"] == 8 and boundary.trained_range == (280.0, 1050.0)
    kept = _boundary_checkpoint(tmp_path / "boundary" / "best_t0", boundary)
    config = transfer_config(ctx, "data", tmp_path / "transfer", 42.0, kept)
    assert isinstance(config, TrainConfig) and config.trainable == "temperature" and config.flow["thermal_scaling"]
    names = [o.name for o in config.active_objectives()]
    assert names == {"tilt+kl": ["kl_range", "tilt"], "kl": ["kl_range"], "trade": ["trade"], "none": []}[transfer]
    if transfer == "tilt+kl":
        assert config.objectives["tilt"].span == [280.0, 600.0] and config.objectives["kl_range"].span == [600.0, 1050.0]


# ------------------------------------------------------------------------------------------------- end to end


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.slow
def test_quick_run_end_to_end_resume_and_a_shared_boundary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "main"
    assert _run(["--quick", "--out", str(out), "--no-progress"]) == 0
    lines = _lines(capsys)
    assert lines[-1] == f"report: {out / 'report' / 'summary.md'}"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["t0"] == 600.0 and report["trained_range"] == [280.0, 1050.0]
    assert set(report["cost"]["stages"]) == {"md", "boundary", "transfer", "check", "report"}
    for name in ("md", "boundary", "transfer", "check"):
        cost = report["cost"]["stages"][name]
        assert cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["energy_evaluations"] > 0, name
    assert report["cost"]["stages"]["md"]["simulated_ns"] > 0.05 and not report["from_several_temperatures"]
    assert [row["temperature"] for row in report["self_check"]] == [300.0, 450.0, 600.0, 800.0, 1000.0]
    assert all(0.0 < row["ess"] <= 1.0 for row in report["self_check"])
    assert report["flagged"] == [row["temperature"] for row in report["self_check"] if row["pareto_k"] > 0.7
                                 or row["pareto_k"] != row["pareto_k"]]
    assert next(row for row in report["self_check"] if row["temperature"] == 600.0)["delta_log_z"] == 0.0
    assert report["budget"]["rule"]["fitted"]["boundary_steps"] > 30
    assert report["stages"]["boundary"]["fit_gap"]["validations"] > 0 and report["diagnosis"]    # what limits it
    assert "## What limits this run" in (out / "report" / "summary.md").read_text()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["temperatures"] == [300.0, 450.0, 600.0, 800.0, 1000.0]
    assert all(0.0 < m["ess"] <= 1.0 for m in metrics["per_temperature"])
    assert all((out / "report" / f"{name}.{ext}").is_file()
               for name in ("ramachandran", "delta_f", "ess", "energy") for ext in ("png", "svg"))
    assert (out / "boundary" / "best_t0" / "checkpoint.pt").is_file() and (out / "transfer" / "train.yaml").is_file()
    assert main(["export", str(out), "--out", str(tmp_path / "exported")]) == 0          # the run's model and card
    card = json.loads((tmp_path / "exported" / "card.json").read_text())
    assert [row["temperature"] for row in card["per_temperature"]] == [300.0, 450.0, 600.0, 800.0, 1000.0]
    assert card["per_temperature"][0]["ess"] == report["self_check"][0]["ess"] and card["command"].endswith("--quick")
    assert card["stage_steps"]["transfer"] == read_checkpoint(tmp_path / "exported")["step"]
    assert read_checkpoint(out)["step"] == read_checkpoint(out / "transfer")["step"]    # the run stands for its model
    assert main(["sample", "--model", str(out), "--temperature", "450", "--n", "64", "--out",
                 str(tmp_path / "s450"), "--no-progress"]) == 0
    capsys.readouterr()

    # an interrupted transfer continues from its checkpoint (written every 25 steps)
    from trade_md.trainer import Trainer

    shutil.rmtree(out / "transfer")
    shutil.rmtree(out / "check")
    with pytest.raises(InputError, match=r"transfer stage has not finished.*trade-md run --resume --out"):
        read_checkpoint(out)                                           # no final model: no silent partial one
    original = Trainer.train_step

    def interrupted(self: Trainer) -> dict[str, float]:
        if self.config.trainable == "temperature" and self.step == 30:
            raise KeyboardInterrupt
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(["--out", str(out), "--resume", "--no-progress"])
    assert read_checkpoint(out / "transfer")["step"] == 25
    assert len(json.loads((out / "transfer" / "cost.json").read_text())["sessions"]) == 1   # the killed session
    capsys.readouterr()
    assert _run(["--quick", "--out", str(out), "--resume", "--no-progress"]) == 0
    lines = _lines(capsys)
    assert "data at 600 K: complete" in lines[0] and "boundary at 600 K: complete" in lines[1]
    assert "(resuming at step 25)" in lines[2]
    transfer = read_checkpoint(out / "transfer")
    assert transfer["step"] > 25 and transfer["fitted_steps"] is not None and transfer["seconds"] > 0
    assert json.loads((out / "transfer" / "stage.json").read_text())["result"]["steps"] == transfer["step"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["cost"]["stages"]["transfer"]["sessions"] == 2

    with pytest.raises(InputError, match="--resume"):                 # no silent overwrite
        run_recipe(out, options=RunOptions(quick=True), progress=False)
    with pytest.raises(InputError, match="--quick on, not off"):
        run_recipe(out, options=RunOptions(quick=False), resume=True, progress=False)

    (out / "check" / "T1000.json").unlink()                           # one temperature missing: only it is drawn
    (out / "check" / "stage.json").unlink()
    stamp = (out / "transfer" / "checkpoint.pt").stat().st_mtime_ns
    assert _run(["--out", str(out), "--resume", "--no-progress"]) == 0
    lines = _lines(capsys)
    assert "transfer (tilt+kl) over 280-1050 K: complete" in lines[2] and "skipped" not in lines[3]
    assert [line.split()[0] for line in lines if " K: ESS" in line] == ["1000"]
    assert (out / "transfer" / "checkpoint.pt").stat().st_mtime_ns == stamp

    # an ablation from the same boundary: one command, the MD and boundary shared
    ablation = tmp_path / "trade"
    assert _run(["--out", str(ablation), "--boundary-from", str(out), "--transfer", "trade", "--no-progress"]) == 0
    lines = _lines(capsys)
    assert "shared with" in lines[0] and "shared with" in lines[1] and "transfer (trade)" in lines[2]
    shared = json.loads((ablation / "report" / "report.json").read_text())
    assert shared["cost"]["stages"]["boundary"]["shared_from"] == str(out)
    assert shared["stages"]["transfer"]["objectives"] == ["trade"]
    assert shared["budget"]["rule"]["fitted"]["transfer_minutes"] == report["budget"]["rule"]["fitted"][
        "transfer_minutes"]                                            # the same time as the variant it is compared to
    assert not (ablation / "md").exists() and not (ablation / "boundary").exists()
    assert run_data(ablation) == run_data(out) == out / "md" / "round_0"   # the frames the boundary was fitted on
    with pytest.raises(InputError, match="not a `trade-md run` directory"):
        run_data(tmp_path / "s450")
    shutil.rmtree(out / "md")
    with pytest.raises(InputError, match="no finished data stage.*--resume"):
        run_data(out)


@pytest.mark.slow
def test_quick_run_on_a_molecule_the_package_has_never_seen(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from trade_md.peptides import write_capped_peptide

    pdb = write_capped_peptide("PHE", tmp_path / "phe.pdb")
    out = tmp_path / "phe"
    assert main(["run", "--quick", "--pdb", str(pdb), "--forcefield", "amber99sbildn.xml", "--forcefield",
                 "amber99_obc.xml", "--out", str(out), "--no-progress"]) == 0
    lines = _lines(capsys)
    assert lines[0].startswith("[1/5] MD at 600 K") and lines[-1] == f"report: {out / 'report' / 'summary.md'}"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["system"]["n_atoms"] == 32 and report["reference"] is None and report["evaluation"] is None
    assert [row["temperature"] for row in report["self_check"]] == [300.0, 450.0, 600.0, 800.0, 1000.0]
    assert all(0.0 < row["ess"] <= 1.0 and row["n_samples"] >= 2000 for row in report["self_check"])
    assert report["cost"]["total"]["energy_evaluations"] > 0 and (out / "report" / "ess.png").is_file()
    assert "## Self-check" in (out / "report" / "summary.md").read_text()
    ablation = tmp_path / "phe_none"                                   # no system options: the shared run's molecule
    assert main(["run", "--boundary-from", str(out), "--transfer", "none", "--out", str(ablation),
                 "--no-progress"]) == 0
    assert json.loads((ablation / "report" / "report.json").read_text())["system"] == report["system"]


def test_a_boundary_flow_set_by_config_carries_over_to_the_transfer(tmp_path: Path) -> None:
    # a `--config` boundary section that changes the flow used to stop the run at the transfer (init_from mismatch)
    options = dataclasses.replace(RunOptions(), overrides={"boundary": {"flow": {"n_layers": 4, "hidden": 32}}})
    ctx = SimpleNamespace(plan=plan_budget(42), t0=600.0, options=options.resolve(600.0, None), progress=False)
    boundary = boundary_config(ctx, "data", tmp_path / "boundary", 30.0)
    assert (boundary.flow["n_layers"], boundary.flow["hidden"]) == (4, 32) != (ctx.plan.flow["n_layers"],
                                                                               ctx.plan.flow["hidden"])
    kept = _boundary_checkpoint(tmp_path / "boundary" / "best_t0", boundary)
    transfer = transfer_config(ctx, "data", tmp_path / "transfer", 20.0, kept)
    assert {**boundary.flow, "thermal_scaling": True} == {k: transfer.flow[k] for k in (*boundary.flow, "thermal_scaling")}


def test_the_report_compares_every_residue_of_a_longer_peptide_with_the_reference() -> None:
    def f_kt(generator: float, reference: float) -> dict[str, float]:
        return {"generator": generator, "generator_sem": 0.05, "reference": reference, "reference_sem": 0.1}

    dipeptide = {"temperature": 300.0, "delta_f_kT": f_kt(3.8, 3.6), "js_divergence": 0.003,
                 "mean_energy": {"generator": -59.4, "reference": -59.2},
                 "phi_basins": [{"label": "ALA 2", "delta_f_kT": f_kt(3.8, 3.6)}]}
    assert _reference_table([dipeptide])[2] == "| 300 | 3.80 ± 0.05 | 3.60 ± 0.10 | 0.0030 | -0.20 |"
    tetrapeptide = {**dipeptide, "phi_basins": [{"label": f"ALA {i}", "delta_f_kT": f_kt(2.0 + i, 2.1 + i)}
                                                for i in (2, 3, 4)]}
    lines = _reference_table([tetrapeptide])
    assert lines[0].startswith("| T/K | φ of | ΔF k_BT |") and len(lines) == 5
    assert lines[2] == "| 300 | ALA 2 | 4.00 ± 0.05 | 4.10 ± 0.10 | 0.0030 | -0.20 |"
    assert lines[4] == "| 300 | ALA 4 | 6.00 ± 0.05 | 6.10 ± 0.10 | | |"

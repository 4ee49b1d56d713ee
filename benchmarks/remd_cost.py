"""Cost of the replica-exchange reference: the budget a temperature-transferable generator has to beat.

Reads a finished ``trade-md remd`` directory (default ``ref/ala2``; no new simulation) and reports

* throughput: aggregate simulated ns/day per CPU core (all replicas; CPU time of the run's processes) and per
  wall-clock day;
* the ΔF(300 K) = F(φ>0) − F(φ<0) uncertainty (MBAR over all equilibrated samples, block-bootstrap standard
  error as in ``trade-md reference``, k_B T) of the run truncated to growing prefixes, the fit
  σ(t) = a / sqrt(t) over CPU time t, and the CPU-seconds at which σ falls below 0.1 k_BT (measured on a prefix
  when reached, else extrapolated from the fit and, separately, from the full run's σ alone).

Usage: ``python benchmarks/remd_cost.py [RUN_DIR] [--out benchmarks/results/remd_cost.json]``.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from trade_md.analysis.remd import analyse_reference
from trade_md.formats.files import write_json_atomic
from trade_md.formats.remd import read_storage

TARGET_SIGMA_KT = 0.1
FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
TEMPERATURE = 300.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="ref/ala2", help="directory written by trade-md remd")
    parser.add_argument("--out", default="benchmarks/results/remd_cost.json", help="JSON output")
    args = parser.parse_args(argv)

    full = read_storage(args.run_dir)
    record = full.record
    settings = record["settings"]
    k = full.temperatures.size
    ps_per_iteration = settings["steps_per_iteration"] * settings["timestep_fs"] * 1e-3
    cpu_s = sum(s["cpu_s"] * s["n_ranks"] for s in record["segments"])
    wall_s = sum(s["wall_s"] for s in record["segments"])
    timed_iterations = sum(s["last_iteration"] - s["first_iteration"] for s in record["segments"])
    cpu_per_iteration = cpu_s / timed_iterations
    total_ns = full.n_iterations * k * ps_per_iteration * 1e-3

    rows = []
    for fraction in FRACTIONS:
        n = max(2, round(fraction * full.n_iterations))
        data = full if n >= full.n_iterations else read_storage(args.run_dir, max_iterations=n)
        summary, _, _ = analyse_reference(data, [TEMPERATURE], histograms=False)
        rows.append({
            "iterations": n,
            "ns_per_replica": n * ps_per_iteration * 1e-3,
            "cpu_s": n * cpu_per_iteration,
            "delta_f_kT": summary["delta_f_kT"][0],
            "delta_f_sem_kT": summary["delta_f_sem_kT"][0],
            "statistical_inefficiency_iterations": summary["decorrelation"]["statistical_inefficiency_iterations"],
            "n_blocks": summary["decorrelation"]["n_blocks"],
            "warnings": summary["warnings"],
        })
    usable = [r for r in rows if r["delta_f_sem_kT"] is not None and r["delta_f_sem_kT"] > 0]
    t = np.array([r["cpu_s"] for r in usable])
    sigma = np.array([r["delta_f_sem_kT"] for r in usable])
    # σ = a t^(-1/2): least squares for ln a at fixed slope; also the free slope as a check of the 1/sqrt(t) law
    log_a = float(np.mean(np.log(sigma) + 0.5 * np.log(t))) if usable else math.nan
    slope = float(np.polyfit(np.log(t), np.log(sigma), 1)[0]) if len(usable) >= 2 else math.nan
    extrapolated = (math.exp(log_a) / TARGET_SIGMA_KT) ** 2 if usable else math.nan
    final = rows[-1]["delta_f_sem_kT"]
    from_full_run = rows[-1]["cpu_s"] * (final / TARGET_SIGMA_KT) ** 2 if final else math.nan
    measured = next((r["cpu_s"] for r in rows if r["delta_f_sem_kT"] is not None
                     and r["delta_f_sem_kT"] < TARGET_SIGMA_KT), None)
    result = {
        "run_dir": str(args.run_dir),
        "command": record.get("command"),
        "ladder_K": full.temperatures.tolist(),
        "platform": record["platform"]["name"],
        "iterations": full.n_iterations,
        "ns_per_replica": full.n_iterations * ps_per_iteration * 1e-3,
        "aggregate_ns": total_ns,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "ns_per_day_per_core": total_ns / cpu_s * 86400.0,
        "ns_per_day_wall": total_ns / wall_s * 86400.0,
        "temperature_K": TEMPERATURE,
        "target_sigma_kT": TARGET_SIGMA_KT,
        "prefixes": rows,
        "fit": {"model": "sigma_kT = a / sqrt(cpu_s)", "a": math.exp(log_a) if usable else None,
                "free_slope": slope},
        "cpu_s_to_target_measured": measured,
        "cpu_s_to_target_extrapolated": extrapolated,
        "cpu_s_to_target_from_full_run": from_full_run,
        "note": "CPU time is the run's own process time (one core per MPI rank); the machine was shared, so wall "
                "time exceeds it",
    }
    print(f"{'iterations':>10} {'ns/replica':>10} {'CPU s':>9} {'dF(300K)/kT':>12} {'sem/kT':>8} {'g/iter':>7} "
          f"{'blocks':>6}")
    for r in rows:
        df = "inf" if r["delta_f_kT"] is None else f"{r['delta_f_kT']:.3f}"
        se = "inf" if r["delta_f_sem_kT"] is None else f"{r['delta_f_sem_kT']:.3f}"
        print(f"{r['iterations']:>10d} {r['ns_per_replica']:>10.3f} {r['cpu_s']:>9.0f} {df:>12} {se:>8} "
              f"{r['statistical_inefficiency_iterations']:>7.1f} {r['n_blocks']:>6d}")
    print(f"throughput: {result['ns_per_day_per_core']:.0f} ns/day per core (aggregate over {k} replicas), "
          f"{result['ns_per_day_wall']:.0f} ns/day wall; platform {result['platform']}")
    print(f"sigma(dF 300 K) = {result['fit']['a']:.3g}/sqrt(CPU s) (free slope {slope:.2f}); CPU-s to "
          f"{TARGET_SIGMA_KT} kT: measured {measured}, extrapolated {extrapolated:.0f} (fit over prefixes), "
          f"{from_full_run:.0f} (full run's sigma alone)")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

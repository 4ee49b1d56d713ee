"""The cost race of issue 28 on alanine dipeptide: a temperature-transferable generator (``trade-md run``) against
replica exchange (``trade-md remd`` + MBAR), in CPU-seconds on one machine.

    trade-md run --system alanine-dipeptide --out runs/main                                  # (a)
    trade-md remd --system alanine-dipeptide --ns-per-replica 10 --out ref/race               # (b), ~50 CPU-min
    python benchmarks/cost_race.py --run runs/main --remd ref/race \
        --out benchmarks/results/cost_race/cost_race.json

**Task.** ΔF = F(φ > 0) − F(φ < 0) in k_BT at 300, 450, 600, 800 and 1000 K (reference: the combined umbrella values,
``benchmarks/results/umbrella/compare.json``; 450, 600 and 800 K lie off the default replica ladder), and at other
temperatures given a reference (``--temperatures ...,350 --extra-reference S``, S a ``trade-md umbrella`` summary at
350 K). A method has *reached* a temperature once |ΔF − ΔF_ref| + σ ≤ 0.1 k_BT, σ its own standard error, and it
keeps holding to the end of the measured series; its cost is the CPU-seconds at that point, the task's the largest
over the temperatures.

- (a) generator: the CPU-seconds of the run's MD, boundary and transfer stages (its ``report/report.json``), plus at
  each temperature the CPU-seconds of drawing and weighting ``--chunk`` samples at a time (one core) until the
  criterion has held over a doubling of the samples, or ``--max-samples``. σ after each chunk is the delta-method
  error of self-normalised importance sampling, σ_P = sqrt(Σ w_i² (1[φ_i > 0] − P)²), σ_ΔF = σ_P / (P (1 − P)).
- (b) replica exchange: the run truncated to ``--prefixes`` shares of its iterations, MBAR at the temperatures
  on each (``trade_md.analysis.remd.analyse_reference``); CPU-seconds = the share of the run's own CPU time
  (``run.json`` segments) plus the analysis' CPU time. Where the whole run does not reach a temperature, its cost
  there is also extrapolated from the last point, as for an unbiased estimate whose σ falls as 1/√(CPU-s): the
  expected |ΔF − ref| + σ is 1.80 σ, so σ must fall to 0.056 k_BT (``extrapolated_cost``).

**Per effective sample at 300 K**, once trained or equilibrated: (a) sampling CPU-s per sample / Kish ESS; (b) the
full run's CPU-s / its MBAR effective (decorrelated) samples at 300 K. The generator's fixed cost (its training) is
repaid after N* = C_train / (c_remd − c_gen) effective samples. Prints the tables, writes the JSON and
``cost_race.png`` (|ΔF − ref| + σ against CPU-seconds, per temperature) beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from trade_md.analysis.phi_basins import Backbone
from trade_md.analysis.remd import analyse_reference
from trade_md.features import basin_populations
from trade_md.formats.files import json_safe, write_json_atomic
from trade_md.formats.remd import read_storage
from trade_md.recipe.cost import Meter
from trade_md.sampler import Sampler
from trade_md.thermo import kT

HERE = Path(__file__).resolve().parent
TARGET_KT = 0.1
TEMPERATURES = (300.0, 450.0, 600.0, 800.0, 1000.0)
TRAINING_STAGES = ("md", "boundary", "transfer")


def references(umbrella_compare: Path, extra_reference: Path | None) -> dict[float, tuple[float, float]]:
    """ΔF ± σ (k_BT) of the reference per temperature: the combined umbrella values, then those of ``extra_reference``
    (a ``trade-md umbrella`` summary) at temperatures the combined table lacks."""
    combined = json.loads(umbrella_compare.read_text())["umbrella_combined"]
    values = {float(t): tuple(entry["delta_f_kT"]) for t, entry in combined.items()}
    if extra_reference is not None:
        summary = json.loads(extra_reference.read_text())
        for t, value, sem in zip(summary["temperatures"], summary["delta_f_kT"], summary["delta_f_sem_kT"]):
            values.setdefault(float(t), (value, sem))
    return values


def reached_at(series: list[dict], reference: float) -> dict | None:
    """The first point of ``series`` (dicts with cost_cpu_s, delta_f_kT, sem_kT) from which
    |ΔF − ref| + σ ≤ TARGET_KT holds to the end, or None."""
    first = None
    for point in series:
        ok = point["delta_f_kT"] is not None and math.isfinite(point["sem_kT"]) and \
            abs(point["delta_f_kT"] - reference) + point["sem_kT"] <= TARGET_KT
        first = (first or point) if ok else None
    return first


EXPECTED_ERROR_PER_SIGMA = 1.0 + math.sqrt(2.0 / math.pi)
"""E|ΔF − ΔF_ref| + σ in units of σ for an unbiased Gaussian estimate (E|N(0, σ²)| = σ √(2/π))."""


def extrapolated_cost(series: list[dict]) -> float | None:
    """CPU-seconds at which an unbiased method whose σ falls as 1/√(CPU-s) expects |ΔF − ref| + σ ≤ TARGET_KT, from
    the last point of ``series`` (σ ≤ TARGET_KT / EXPECTED_ERROR_PER_SIGMA = 0.056 k_BT); None without a finite σ."""
    last = series[-1]
    if last["delta_f_kT"] is None or not math.isfinite(last["sem_kT"]):
        return None
    return last["cost_cpu_s"] * (last["sem_kT"] * EXPECTED_ERROR_PER_SIGMA / TARGET_KT) ** 2


def weighted_delta_f(phi: np.ndarray, log_w: np.ndarray) -> tuple[float | None, float]:
    """ΔF (k_BT) between the φ basins from unnormalised log-weights ``[n]`` and its delta-method error (module docs)."""
    w = np.exp(log_w - np.max(log_w))
    w /= w.sum()
    p = basin_populations(phi, w)[1]
    inside = (phi > 0).astype(np.float64)
    if not 0.0 < p < 1.0:
        return None, math.inf
    sigma_p = math.sqrt(float(np.sum(w**2 * (inside - p) ** 2)))
    return -math.log(p / (1.0 - p)), sigma_p / (p * (1.0 - p))


def generator_race(run: Path, temperatures: list[float], refs: dict, chunk: int, max_samples: int) -> dict:
    """(a): training cost from the run's report, then sampling in chunks at each temperature until reached."""
    report = json.loads((run / "report" / "report.json").read_text())
    training_cpu_s = sum(report["cost"]["stages"][name]["cpu_s"] for name in TRAINING_STAGES)
    torch.manual_seed(0)
    sampler = Sampler.from_checkpoint(run / "transfer", n_workers=1, platform="Reference")
    backbone = Backbone.of(sampler.topology)
    rows, ess_300 = {}, None
    with sampler:
        for t in temperatures:
            phi, log_w, series, spent = [], [], [], 0.0
            while sum(p.size for p in phi) < max_samples:
                meter = Meter()
                samples = sampler.sample(chunk, t, progress=False)
                # unnormalised log w = −U/k_BT − log q, so that chunks join (dropped samples stay at −inf)
                log_w.append(np.where(np.isfinite(samples.log_weights), -samples.energies / kT(t) - samples.log_q,
                                      -np.inf))
                phi.append(backbone.phi(samples.positions)[:, 0])
                spent += meter.cpu_s
                joined_w = np.concatenate(log_w)
                value, sem = weighted_delta_f(np.concatenate(phi), joined_w)
                series.append({"samples": int(joined_w.size), "sampling_cpu_s": spent,
                               "cost_cpu_s": training_cpu_s + spent, "delta_f_kT": value, "sem_kT": sem})
                reached = reached_at(series, refs[t][0])
                if reached is not None and series[-1]["samples"] >= 2 * reached["samples"]:
                    break
            weights = np.exp(joined_w - np.max(joined_w))
            ess = float(weights.sum() ** 2 / (weights ** 2).sum() / weights.size)
            if t == 300.0:
                ess_300 = {"ess": ess, "cpu_s_per_sample": spent / series[-1]["samples"]}
            rows[t] = {"series": series, "reached": reached_at(series, refs[t][0]), "ess": ess}
    sampling = sum((r["reached"] or r["series"][-1])["sampling_cpu_s"] for r in rows.values())
    per_effective = None if ess_300 is None else ess_300["cpu_s_per_sample"] / ess_300["ess"]
    return {"run": str(run), "training_cpu_s": training_cpu_s, "temperatures": rows,
            "task_cpu_s": training_cpu_s + sampling if all(r["reached"] for r in rows.values()) else None,
            "cpu_s_per_effective_sample_300": per_effective}


def remd_race(remd: Path, temperatures: list[float], refs: dict, prefixes: list[float]) -> dict:
    """(b): MBAR on growing prefixes of the replica-exchange run."""
    full = read_storage(remd)
    record = full.record
    cpu_s = sum(s["cpu_s"] * s["n_ranks"] for s in record["segments"])
    timed = sum(s["last_iteration"] - s["first_iteration"] for s in record["segments"])
    series: dict[float, list[dict]] = {t: [] for t in temperatures}
    effective_300 = None
    for share in prefixes:
        n = max(2, round(share * full.n_iterations))
        meter = Meter()
        data = full if n >= full.n_iterations else read_storage(remd, max_iterations=n)
        summary, _, _ = analyse_reference(data, temperatures, histograms=False)
        cost = n * cpu_s / timed + meter.cpu_s
        for i, t in enumerate(temperatures):
            value, sem = summary["delta_f_kT"][i], summary["delta_f_sem_kT"][i]
            series[t].append({"iterations": n, "cost_cpu_s": cost, "delta_f_kT": value,
                              "sem_kT": math.inf if sem is None else sem})
        effective_300 = summary["effective_samples"][temperatures.index(300.0)] if 300.0 in temperatures else None
    rows = {t: {"series": s, "reached": reached_at(s, refs[t][0]), "extrapolated_cpu_s": extrapolated_cost(s)}
            for t, s in series.items()}
    return {"remd": str(remd), "ladder_K": full.temperatures.tolist(), "cpu_s": cpu_s,
            "iterations": full.n_iterations, "temperatures": rows,
            "task_cpu_s": max(r["reached"]["cost_cpu_s"] for r in rows.values())
            if all(r["reached"] for r in rows.values()) else None,
            "task_cpu_s_extrapolated": _task_extrapolated(rows),
            "effective_samples_300": effective_300,
            "cpu_s_per_effective_sample_300": None if not effective_300 else cpu_s / effective_300}


def _task_extrapolated(rows: dict) -> float | None:
    """The task's CPU-s with each temperature not reached by the end of the run extrapolated (extrapolated_cost)."""
    costs = [r["reached"]["cost_cpu_s"] if r["reached"] else r["extrapolated_cpu_s"] for r in rows.values()]
    return None if any(c is None for c in costs) else max(costs)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temperatures = result["temperatures"]
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3 * len(temperatures), 3), sharey=True)
    for ax, t in zip(np.atleast_1d(axes), temperatures):
        ref = result["references"][str(t)][0]
        for name, colour in (("generator", "C0"), ("remd", "C1")):
            series = result[name]["temperatures"][str(t)]["series"]
            ax.plot([p["cost_cpu_s"] / 3600 for p in series],
                    [abs(p["delta_f_kT"] - ref) + p["sem_kT"] if p["delta_f_kT"] is not None else np.nan
                     for p in series], "o-", color=colour, ms=3, label=name)
            extrapolated = result[name]["temperatures"][str(t)].get("extrapolated_cpu_s")
            if extrapolated and not result[name]["temperatures"][str(t)]["reached"]:
                ax.plot([series[-1]["cost_cpu_s"] / 3600, extrapolated / 3600],
                        [abs(series[-1]["delta_f_kT"] - ref) + series[-1]["sem_kT"], TARGET_KT], ":", color=colour)
                ax.plot([extrapolated / 3600], [TARGET_KT], "o", mfc="none", color=colour,
                        label=f"{name}, extrapolated" if t == temperatures[0] else None)
        ax.axhline(TARGET_KT, color="k", lw=0.8, ls="--")
        ax.set(title=f"{t:g} K", xlabel="CPU hours", yscale="log")
    np.atleast_1d(axes)[0].set_ylabel("|ΔF − ref| + σ  (k_BT)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished trade-md run directory")
    parser.add_argument("--remd", type=Path, required=True, help="a trade-md remd directory")
    parser.add_argument("--umbrella", type=Path, default=HERE / "results" / "umbrella" / "compare.json")
    parser.add_argument("--extra-reference", type=Path,
                        help="a trade-md umbrella summary: reference ΔF at temperatures the combined table lacks")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES))
    parser.add_argument("--chunk", type=int, default=20000, help="samples per generator chunk")
    parser.add_argument("--max-samples", type=int, default=1_000_000, help="per temperature")
    parser.add_argument("--prefixes", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cost_race" / "cost_race.json")
    args = parser.parse_args(argv)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    refs = references(args.umbrella, args.extra_reference)
    missing = [t for t in temperatures if t not in refs]
    if missing:
        parser.error(f"no reference ΔF at {missing} K; pass --extra-reference (a trade-md umbrella summary)")
    generator = generator_race(args.run, temperatures, refs, args.chunk, args.max_samples)
    remd = remd_race(args.remd, temperatures, refs, [float(s) for s in args.prefixes.split(",")])
    print("| T/K | reference ΔF k_BT | generator: samples, CPU-s (ΔF ± σ) | REMD: CPU-s (ΔF ± σ) |")
    print("|---|---|---|---|")
    for t in temperatures:
        cells = []
        for side, key in ((generator, "samples"), (remd, "iterations")):
            reached = side["temperatures"][t]["reached"]
            last = reached or side["temperatures"][t]["series"][-1]
            where = f"{last[key]:,} {key}, {last['cost_cpu_s']:,.0f}" if reached else \
                f"not reached by {last['cost_cpu_s']:,.0f}"
            if not reached and side["temperatures"][t].get("extrapolated_cpu_s"):
                where += f", ~{side['temperatures'][t]['extrapolated_cpu_s']:,.0f} extrapolated"
            value = "–" if last["delta_f_kT"] is None else f"{last['delta_f_kT']:.2f} ± {last['sem_kT']:.2f}"
            cells.append(f"{where} ({value})")
        print(f"| {t:g} | {refs[t][0]:.2f} ± {refs[t][1]:.2f} | {cells[0]} | {cells[1]} |")
    ratio = None
    if generator["task_cpu_s"] and remd["task_cpu_s"]:
        ratio = generator["task_cpu_s"] / remd["task_cpu_s"]
    c_gen, c_remd = generator["cpu_s_per_effective_sample_300"], remd["cpu_s_per_effective_sample_300"]
    overtake = generator["training_cpu_s"] / (c_remd - c_gen) if c_gen and c_remd and c_remd > c_gen else None
    extrapolated = remd["task_cpu_s_extrapolated"]
    ratio_extrapolated = generator["task_cpu_s"] / extrapolated if generator["task_cpu_s"] and extrapolated else None
    print(f"ΔF task CPU-s: generator {generator['task_cpu_s']}, REMD {remd['task_cpu_s']} (extrapolated where not "
          f"reached: {extrapolated}), ratio {ratio} (with the extrapolation: {ratio_extrapolated})")
    print(f"CPU-s per effective sample at 300 K: generator {c_gen}, REMD {c_remd}; generator overtakes after "
          f"{overtake} effective samples")
    result = json_safe({
        "command": "python benchmarks/cost_race.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
        "target_kT": TARGET_KT, "temperatures": temperatures,
        "references": {str(t): refs[t] for t in temperatures},
        "generator": {**generator, "temperatures": {str(t): v for t, v in generator["temperatures"].items()}},
        "remd": {**remd, "temperatures": {str(t): v for t, v in remd["temperatures"].items()}},
        "task_ratio_generator_over_remd": ratio,
        "task_ratio_generator_over_remd_extrapolated": ratio_extrapolated,
        "per_effective_sample_ratio_remd_over_generator": c_remd / c_gen if c_gen and c_remd else None,
        "generator_overtakes_after_effective_samples": overtake,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

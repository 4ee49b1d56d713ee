"""Spread of a shipped model's ESS and ΔF over repeated draws, and the regression floors set from it.

    python benchmarks/shipped_model_spread.py --system alanine-dipeptide --repeats 6

draws ``--n`` samples at each of ``--temperatures`` ``--repeats`` times (seeds 0, 1, ...) from the generator shipped
with the built-in system (``trade_md.systems.pretrained_model``) and compares each draw with the system's shipped
reference (``trade_md.analysis.evaluation.evaluate``). It prints a table and writes ``regression.json`` beside the
model (read by ``tests/test_shipped_models.py``) and a copy under ``benchmarks/results/shipped_models/``.

The floors, per temperature, from the R draws:
- ESS floor = ½ × min_r ESS_r: half the worst of R draws of the same model (the ESS of one draw is heavy-tailed, so a
  standard deviation says little below the mean), far above the ≲ 0.1 % of a broken model;
- ΔF tolerance = max_r |ΔF_r − ΔF_ref| + 2 × sd_r(ΔF_r), in k_BT: a draw is accepted when |ΔF − ΔF_ref| stays within
  it (the reference's own error is a fixed offset, already in the deviations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from trade_md.analysis.evaluation import evaluate
from trade_md.formats.files import write_json_atomic
from trade_md.systems import pretrained_model

RESULTS = Path(__file__).resolve().parent / "results" / "shipped_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--temperatures", default="300,600,1000")
    parser.add_argument("--n", type=int, default=20000, help="samples per temperature and draw")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    model = pretrained_model(args.system)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    draws: dict[float, list[dict[str, float]]] = {t: [] for t in temperatures}
    started = time.perf_counter()
    for seed in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            metrics = evaluate(model, out, temperatures=temperatures, n_samples=args.n, seed=seed, progress=False)
        for row in metrics["per_temperature"]:
            f_kt = row["delta_f_kT"]
            draws[row["temperature"]].append({"seed": seed, "ess": row["ess"], "pareto_k": row["pareto_k"],
                                              "delta_f_kT": f_kt["generator"], "reference": f_kt["reference"],
                                              "reference_sem": f_kt["reference_sem"]})
        print(f"draw {seed + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", flush=True)
    floors = {}
    print(f"\n{args.system}: {args.repeats} draws of {args.n} samples")
    print("| T/K | ESS % mean ± sd (min) | ESS floor % | ΔF − ref k_BT mean ± sd (max abs) | ΔF tolerance |")
    print("|---|---|---|---|---|")
    for temperature, rows in draws.items():
        ess = [row["ess"] for row in rows]
        deviation = [row["delta_f_kT"] - row["reference"] for row in rows]
        ess_sd, dev_sd = statistics.stdev(ess), statistics.stdev(deviation)
        floor = 0.5 * min(ess)
        tolerance = max(abs(d) for d in deviation) + 2.0 * dev_sd
        floors[f"{temperature:g}"] = {"ess_floor": floor, "delta_f_kT_tolerance": tolerance}
        print(f"| {temperature:g} | {100 * statistics.mean(ess):.2f} ± {100 * ess_sd:.2f} ({100 * min(ess):.2f}) | "
              f"{100 * floor:.2f} | {statistics.mean(deviation):+.3f} ± {dev_sd:.3f} "
              f"({max(abs(d) for d in deviation):.3f}) | {tolerance:.3f} |")
    result = {"format": "trade-md regression floors/1", "system": args.system, "n_samples": args.n,
              "repeats": args.repeats, "rule": __doc__.split("The floors, per temperature, from the R draws:\n")[1],
              "command": f"python benchmarks/shipped_model_spread.py --system {args.system} --repeats {args.repeats}"
                         f" --n {args.n} --temperatures {args.temperatures}",
              "floors": floors, "draws": {f"{t:g}": rows for t, rows in draws.items()},
              "seconds": time.perf_counter() - started}
    write_json_atomic(model / "regression.json", result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.system}.json", result)
    print(f"wrote {model / 'regression.json'}")


if __name__ == "__main__":
    main()

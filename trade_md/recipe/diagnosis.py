"""What limits a finished ``trade-md run``, and what to try, read from the numbers of its report.

Rules, in this order (each a finding, most with the change that addresses it):

1. **The fit at T0**: ESS at T0 (the self-check's row at T0, else the boundary's best validation) below
   :data:`ESS_GOAL` limits every temperature, since the transfer starts from that model. Then:

   - its fit gap (validation minus training NLL, nats; :func:`trade_md.stopping.fit_gap`) above :data:`GAP_LIMIT`:
     the boundary learned its frames more than the molecule, and more T0 data is the lever (results §0e: twice the MD
     closed capped PHE's gap from 2.9 to 0.55 nats and roughly doubled its ESS at T0; more steps on the same data
     had widened it);
   - otherwise, fewer boundary steps than the recipe wants: the ``--budget`` that gives them;
   - otherwise no lever is named (results §0e: a larger flow or more reverse KL did not lift capped PHE's ESS).
2. **The transfer**: ESS below :data:`ESS_GOAL` at evaluated temperatures other than T0 while T0 reaches it (with
   nothing measured at T0, those temperatures are named without a cause).
3. **Heavy tails**: tail shape k above 0.7 at a temperature: its ESS and estimates rest on a few weights.

Nothing flagged, the run says so; a ``--quick`` run gets no finding but that its numbers mean nothing. The findings
go into ``report/report.json`` (``diagnosis``), ``summary.md`` and the run's last lines.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ESS_GOAL", "GAP_LIMIT", "diagnose"]

ESS_GOAL = 0.05
"""Kish ESS (fraction of the samples) below which a temperature counts as limited: 5,000 effective samples per
100,000 draws."""
GAP_LIMIT = 1.5
"""Fit gap (nats per molecule) above which the boundary counts as overfitted: alanine dipeptide's default run
reached 0.8 with an ESS at T0 of 25 %, capped PHE 2.9 on 38 ns of MD and 0.55 on 76 ns (results §0e)."""


def diagnose(report: dict[str, Any], run: str = "RUN") -> list[str]:
    """The findings (one sentence or two each, markdown) for a report dict of :mod:`trade_md.recipe.report` of the
    run directory ``run`` (named in the commands it suggests)."""
    if (report.get("options") or {}).get("quick"):
        return ["A `--quick` run: its tiny preset says nothing about the molecule; drop `--quick` for the real result."]
    rows = {row["temperature"]: row for row in report["self_check"]}
    boundary = report["stages"]["boundary"]
    t0 = report["t0"]
    at_t0 = rows[t0]["ess"] if t0 in rows else (boundary.get("best_validation") or {}).get("val_ess")
    findings = []
    if at_t0 is not None and at_t0 < ESS_GOAL:
        findings.append(f"The fit at T0 limits this run: ESS {100 * at_t0:.2f} % at {t0:g} K, below "
                        f"{100 * ESS_GOAL:g} %, and every temperature starts from it. " + _boundary_advice(report))
    low = [t for t, row in rows.items() if t != t0 and row["ess"] < ESS_GOAL]
    if low and at_t0 is None:
        findings.append(f"ESS below {100 * ESS_GOAL:g} % at {_temperatures(low)}; nothing measured at T0 tells "
                        "whether the boundary or the transfer limits it (evaluate T0 too: `--temperatures`).")
    elif low and not findings:
        findings.append(f"The transfer limits {_temperatures(low)}: ESS below {100 * ESS_GOAL:g} % there, "
                        f"{100 * at_t0:.1f} % at T0. The transfer variants (`--transfer`, `--boundary-from` for "
                        "one boundary) are compared in the results page's §0.")
    heavy = [t for t, row in rows.items() if row["unreliable"]]
    if heavy:
        n = max(row["n_samples"] for row in rows.values())
        findings.append(f"Heavy tails at {_temperatures(heavy)} (k > 0.7): their ESS and estimates rest on a few "
                        f"weights; draw more samples there before trusting them, e.g. `trade-md sample --model {run} "
                        f"--temperature {min(heavy):g} --n {3 * n}`.")
    return findings or [f"Nothing limits this run by these rules: ESS at least {100 * ESS_GOAL:g} % and tails "
                        "k ≤ 0.7 at every evaluated temperature."]


def _boundary_advice(report: dict[str, Any]) -> str:
    boundary = report["stages"]["boundary"]
    gap = (boundary.get("fit_gap") or {}).get("gap")
    choice = boundary.get("flow_choice") or {}
    ns = report["data"].get("ns")
    if gap is not None and gap > GAP_LIMIT:
        more = f"`md: {{ns: {2 * ns:.0f}}}`" if ns else "a longer MD"
        return (f"The boundary fits its training frames {gap:.2f} nats better than held-out ones (over "
                f"{GAP_LIMIT:g}: it learned the frames more than the molecule); more T0 data is the lever: a new run "
                f"with {more} in its `--config` file, and a `--budget` that keeps the boundary's minutes.")
    if choice.get("budget_short"):
        return (f"The boundary ran {boundary['steps']:,} steps, fewer than the {choice['min_steps']:,} the recipe "
                f"wants: `--budget {choice['budget_for_min_steps']:g}` gives them"
                + (f" (its fit gap, {gap:.2f} nats, leaves room)." if gap is not None else "."))
    return ("The boundary had its steps" + (f" and a fit gap of {gap:.2f} nats" if gap is not None else "")
            + ", so neither data nor steps is short by these rules; the results page's §0e lists what else was tried "
              "on capped PHE (flow size, reverse KL at T0).")


def _temperatures(temperatures: list[float]) -> str:
    return ", ".join(f"{t:g}" for t in sorted(temperatures)) + " K"

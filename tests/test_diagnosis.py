"""trade_md.recipe.diagnosis: what limits a run, from the numbers of its report."""

from __future__ import annotations

from typing import Any

from trade_md.recipe.diagnosis import diagnose


def _report(ess: dict[float, float], *, gap: float | None = 0.6, short: bool = False, k: float = 0.5,
            t0: float = 600.0) -> dict[str, Any]:
    """A report dict with what the rules read: self-check ESS and tail k per temperature, the boundary's fit gap
    and flow choice, the data's ns."""
    return {
        "t0": t0, "data": {"ns": 38.0},
        "self_check": [{"temperature": t, "ess": e, "pareto_k": k, "unreliable": k > 0.7, "n_samples": 300000}
                       for t, e in ess.items()],
        "stages": {"boundary": {
            "steps": 9525, "best_validation": {"val_ess": 0.03},
            "fit_gap": None if gap is None else {"train_nll": -304.29, "val_nll": -304.29 + gap, "gap": gap},
            "flow_choice": {"budget_short": short, "min_steps": 20000, "budget_for_min_steps": 380.0}}},
    }


FIVE = (300.0, 450.0, 600.0, 800.0, 1000.0)


def test_an_overfitted_boundary_asks_for_more_t0_data_and_not_for_steps() -> None:
    (finding,) = diagnose(_report(dict(zip(FIVE, (0.01, 0.006, 0.011, 0.004, 0.002))), gap=2.94, short=True))
    assert finding.startswith("The fit at T0 limits this run: ESS 1.10 % at 600 K")
    assert "2.94 nats better than held-out ones" in finding and "`md: {ns: 76}`" in finding
    assert "--budget 380" not in finding                       # more steps on the same frames would overfit more


def test_a_boundary_short_of_steps_is_given_the_budget_that_reaches_them() -> None:
    (finding,) = diagnose(_report(dict(zip(FIVE, (0.01, 0.02, 0.03, 0.01, 0.01))), gap=0.55, short=True))
    assert "ran 9,525 steps, fewer than the 20,000" in finding and "`--budget 380` gives them" in finding
    (finding,) = diagnose(_report(dict(zip(FIVE, (0.01, 0.02, 0.03, 0.01, 0.01))), gap=0.55))
    assert "neither data nor steps is short" in finding


def test_a_good_boundary_points_at_the_transfer_and_heavy_tails_are_named() -> None:
    findings = diagnose(_report(dict(zip(FIVE, (0.25, 0.31, 0.25, 0.068, 0.045))), k=0.5))
    assert findings == ["The transfer limits 1000 K: ESS below 5 % there, 25.0 % at T0. The transfer variants "
                        "(`--transfer`, `--boundary-from` for one boundary) are compared in the results page's §0."]
    heavy = _report(dict(zip(FIVE, (0.25, 0.31, 0.25, 0.068, 0.15))))
    heavy["self_check"][4].update(pareto_k=0.9, unreliable=True)
    assert diagnose(heavy, "runs/phe") == [
        "Heavy tails at 1000 K (k > 0.7): their ESS and estimates rest on a few weights; draw more samples there "
        "before trusting them, e.g. `trade-md sample --model runs/phe --temperature 1000 --n 900000`."]
    assert diagnose(_report(dict(zip(FIVE, (0.25, 0.31, 0.25, 0.068, 0.15)))))[0].startswith("Nothing limits")
    quick = {**_report(dict(zip(FIVE, (0.01,) * 5)), gap=2.9), "options": {"quick": True}}
    assert diagnose(quick) == ["A `--quick` run: its tiny preset says nothing about the molecule; drop `--quick` for "
                               "the real result."]


def test_without_a_t0_row_the_boundary_validation_decides() -> None:
    without = _report({300.0: 0.2, 1000.0: 0.01}, gap=None)
    without["stages"]["boundary"]["best_validation"] = None                  # nothing known at T0
    assert diagnose(without) == ["ESS below 5 % at 1000 K; nothing measured at T0 tells whether the boundary or the "
                                 "transfer limits it (evaluate T0 too: `--temperatures`)."]
    (finding,) = diagnose(_report({300.0: 0.2, 1000.0: 0.1}, gap=None))
    assert finding.startswith("The fit at T0 limits this run: ESS 3.00 % at 600 K")
    assert "had its steps, so neither" in finding

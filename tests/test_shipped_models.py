"""Regression of the shipped generators on their molecules: a change that breaks the internal coordinates, the
flow, the energies or the sampler on a real molecule fails here even while the toys pass.

Each built-in system with a shipped model (``systems/<name>/model/``) draws 20,000 samples at 300, 600 and 1000 K
and must reach the Kish ESS floor and the ΔF tolerance (against the system's shipped reference) stored in the
model's ``regression.json``. The floors come from repeated draws of the same model
(``benchmarks/shipped_model_spread.py``; the rule is in that file and in the JSON); this test's seed is not one of
them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trade_md.analysis.evaluation import evaluate
from trade_md.systems import SYSTEMS_DIR, pretrained_model

SHIPPED = sorted(path.parent.parent.name for path in SYSTEMS_DIR.glob("*/model/checkpoint.pt"))
SEED = 1000


def test_alanine_dipeptide_ships_a_model_with_its_card_and_floors() -> None:
    model = pretrained_model("alanine-dipeptide")
    card = json.loads((model / "card.json").read_text())
    assert card["system"] == "alanine-dipeptide" and card["per_temperature"] and card["cost"]
    assert (model / "README.md").is_file() and (model / "regression.json").is_file()
    assert (model / "checkpoint.pt").stat().st_size < 8e6                # a few MB in every clone


@pytest.mark.slow
@pytest.mark.parametrize("directory", SHIPPED)
def test_a_shipped_model_keeps_its_ess_and_free_energy(directory: str, tmp_path: Path) -> None:
    name = yaml.safe_load((SYSTEMS_DIR / directory / "config.yaml").read_text())["name"]
    model = pretrained_model(name)
    floors = json.loads((model / "regression.json").read_text())["floors"]
    temperatures = [float(t) for t in floors]
    metrics = evaluate(model, tmp_path, temperatures=temperatures, n_samples=20000, seed=SEED, progress=False)
    failures = []
    for row in metrics["per_temperature"]:
        floor = floors[f"{row['temperature']:g}"]
        f_kt = row["delta_f_kT"]
        deviation = f_kt["generator"] - f_kt["reference"]
        if not row["ess"] >= floor["ess_floor"]:
            failures.append(f"{row['temperature']:g} K: ESS {100 * row['ess']:.2f} % < floor "
                            f"{100 * floor['ess_floor']:.2f} %")
        if not abs(deviation) <= floor["delta_f_kT_tolerance"]:
            failures.append(f"{row['temperature']:g} K: ΔF {f_kt['generator']:.3f} k_BT vs reference "
                            f"{f_kt['reference']:.3f}, off by {deviation:+.3f} > {floor['delta_f_kT_tolerance']:.3f}")
    assert not failures, f"{name}: " + "; ".join(failures)

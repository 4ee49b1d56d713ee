"""The X–H bond-stretch check: 1 for exact conditional Boltzmann draws, clearly above 1 for too-hot vibrations."""

from __future__ import annotations

import numpy as np
import pytest

from trade_md.bondcheck import bond_stretch_ratios, hydrogen_bonds
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError
from trade_md.systems import load_system
from trade_md.thermo import KB

TEMPERATURE = 600.0
GRID = 31


def exact_bond_draws(system, bridge, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every X–H bond length of every frame redrawn, one hydrogen after the other, from its conditional Boltzmann
    law on the same discrete grid the check uses (so the draws are exact for that law)."""
    x = positions.copy()
    kt = KB * TEMPERATURE
    for hydrogen, partner, r0, k in hydrogen_bonds(system):
        grid = r0 + np.sqrt(kt / k) * np.linspace(-6.0, 6.0, GRID)
        direction = x[:, hydrogen] - x[:, partner]
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        moved = np.repeat(x[:, None], GRID, axis=1)
        moved[:, :, hydrogen] = x[:, None, partner] + grid[None, :, None] * direction[:, None, :]
        log_p = 2.0 * np.log(grid) - bridge.energies(moved.reshape(-1, *x.shape[1:])).reshape(len(x), GRID) / kt
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        choice = np.minimum((cumulative < rng.random((len(x), 1))).sum(axis=1), GRID - 1)
        x[:, hydrogen] = x[:, partner] + grid[choice, None] * direction
    return x


def test_exact_draws_give_one_and_hot_vibrations_do_not() -> None:
    # 200 frames x 12 X-H bonds: the mean ratio has a standard error of about sqrt(2 / 2400) = 0.029 (the bonds
    # couple only weakly, so sequential redraws are exact to well below that); exact draws must land within 4 of
    # those errors of 1, and stretches scaled by 1.1 about the conditional mean (expected ratio 1.21) must not.
    system = load_system("alanine-dipeptide")
    rng = np.random.default_rng(0)
    frames = system.positions[None] + 0.004 * rng.normal(size=(200, system.n_atoms, 3))
    with EnergyBridge(system, platform="CPU") as bridge:
        exact = exact_bond_draws(system, bridge, frames, rng)
        ratios = bond_stretch_ratios(system, exact, TEMPERATURE, bridge.energies, grid_points=GRID)
        hot = exact.copy()
        for check in ratios:
            hydrogen, partner = check.hydrogen, check.partner
            vector = hot[:, hydrogen] - hot[:, partner]
            r = np.linalg.norm(vector, axis=1, keepdims=True)
            r0 = next(b[2] for b in hydrogen_bonds(system) if b[0] == hydrogen)
            hot[:, hydrogen] = hot[:, partner] + vector / r * (r0 + 1.1 * (r - r0))
        hot_ratios = bond_stretch_ratios(system, hot, TEMPERATURE, bridge.energies, grid_points=GRID)
    assert len(ratios) == 12 and all(check.effective_frames == pytest.approx(200.0) for check in ratios)
    mean = np.mean([check.ratio for check in ratios])
    assert abs(mean - 1.0) < 4.0 * np.sqrt(2.0 / 2400.0), mean
    assert abs(np.mean([check.shift for check in ratios])) < 4.0 * np.sqrt(1.0 / 2400.0)
    assert np.mean([check.ratio for check in hot_ratios]) > 1.12


def test_bad_input_is_named() -> None:
    system = load_system("alanine-dipeptide")
    frames = system.positions[None].repeat(2, axis=0)
    with pytest.raises(InputError, match="temperature"):
        bond_stretch_ratios(system, frames, 0.0, lambda x: np.zeros(len(x)))
    with pytest.raises(InputError, match="finite"):
        bond_stretch_ratios(system, frames * np.nan, 300.0, lambda x: np.zeros(len(x)))
    with pytest.raises(InputError, match="weights"):
        bond_stretch_ratios(system, frames, 300.0, lambda x: np.zeros(len(x)), weights=np.array([1.0, -1.0]))

"""The generator MCMC move satisfies detailed balance: it leaves a known distribution invariant."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmmtools import cache, states
from scipy.stats import norm

from trade_md.flows import ConditionalSplineFlow
from trade_md.generator import BoxCoordinates, Generator
from trade_md.mcmc import GeneratorMove, frame_of, place_in_frame
from trade_md.thermo import kT

SPRING = 200.0  # kJ/mol/nm²


def _harmonic_particle() -> openmm.System:
    system = openmm.System()
    system.addParticle(12.0)
    force = openmm.CustomExternalForce("0.5*k*(x*x + y*y + z*z)")
    force.addGlobalParameter("k", SPRING)
    force.addParticle(0, [])
    system.addForce(force)
    return system


HALF_WIDTH = 0.25  # nm: the proposal box, about 2.2 σ of the target at 300 K


def _skewed_generator() -> Generator:
    """An untrained-but-perturbed flow: a proposal clearly different from the target, inside the box."""
    coordinates = BoxCoordinates(-HALF_WIDTH, HALF_WIDTH, dim=3)
    flow = ConditionalSplineFlow(coordinates.domains, n_layers=2, hidden=8)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return Generator(coordinates, flow, reference_temperature=300.0).double()


def test_move_leaves_harmonic_distribution_invariant() -> None:
    # Proposals stay in the box, so the invariant law is the Gaussian (variance kT/k per axis, σ = 0.11 nm at
    # 300 K) truncated to the box, whose ⟨x²⟩ per axis is exactly σ²(1 − 2aφ(a)/(2Φ(a) − 1)), a = L/σ.
    temperature = 300.0
    thermodynamic_state = states.ThermodynamicState(_harmonic_particle(), temperature * unit.kelvin)
    sampler_state = states.SamplerState(np.zeros((1, 3)) * unit.nanometer)
    move = GeneratorMove(_skewed_generator(), frame_atoms=None, n_proposals=1, seed=7)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    squares = []
    for _ in range(4000):
        move.apply(thermodynamic_state, sampler_state, context_cache)
        squares.append(np.sum(sampler_state.positions.value_in_unit(unit.nanometer) ** 2))
    squares = np.asarray(squares[200:])
    # Error bar: block averages (20 blocks) absorb the chain's autocorrelation.
    sigma = np.sqrt(kT(temperature) / SPRING)
    a = HALF_WIDTH / sigma
    exact = 3.0 * sigma**2 * (1.0 - 2.0 * a * norm.pdf(a) / (2.0 * norm.cdf(a) - 1.0))
    assert abs(exact - 3.0 * sigma**2) > 0.1 * exact  # the truncation matters: a wrong kernel cannot pass by luck
    blocks = squares[: len(squares) // 20 * 20].reshape(20, -1).mean(axis=1)
    error = blocks.std(ddof=1) / np.sqrt(len(blocks))
    assert 0.05 < move.acceptance_rate < 0.95
    assert abs(squares.mean() - exact) < 4.0 * error, (squares.mean(), exact, error)
    assert error < 0.1 * exact


def test_frame_placement_keeps_pose_and_shape(rng: np.random.Generator) -> None:
    target = rng.normal(size=(6, 3))
    shape = rng.normal(size=(6, 3))
    placed = place_in_frame(shape, target, (0, 1, 2))
    origin, axes = frame_of(target, (0, 1, 2))
    placed_origin, placed_axes = frame_of(placed, (0, 1, 2))
    np.testing.assert_allclose(placed_origin, origin, atol=1e-12)
    np.testing.assert_allclose(placed_axes, axes, atol=1e-12)
    pairwise = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(pairwise(placed), pairwise(shape), atol=1e-12)


def test_in_memory_move_refuses_storage_with_advice() -> None:
    move = GeneratorMove(_skewed_generator(), frame_atoms=None)
    with pytest.raises(Exception, match="from_checkpoint"):
        move.__getstate__()

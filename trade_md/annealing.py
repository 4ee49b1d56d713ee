"""Annealed importance sampling (AIS) in a generator's base space: exact weights, fewer heavy ones.

Plain importance sampling weights each draw ``x = f(u)`` of ``q(x | T)`` by ``w = exp(−U(x)/k_B T) / q(x | T)``.
Where ``q`` misses the shape of the Boltzmann density inside a basin, a few draws carry most of ``Σ w`` and the
Kish ESS collapses. AIS (Neal, Statistics and Computing 11, 125, 2001) moves every draw through a ladder of
intermediate densities before weighting it. In the flow's base space, where ``q`` is uniform, the Boltzmann
density pulled back through ``x = f(u)`` is proportional to ``w(u)``, so the ladder is

    π_k(u) ∝ w(u)^{b_k},   b_k = k / K,   k = 0 … K,

``π_0`` the uniform base (plain draws of ``q``) and ``π_K`` the target. A draw starts at ``u_0`` uniform; at level
``k = 1 … K`` it gains ``(b_k − b_{k−1}) log w(u_{k−1})`` of log-weight and, below the top level, takes ``steps``
random-walk Metropolis steps that leave ``π_k`` invariant. The last state mapped through the flow, with weight
``W = Π_k w(u_{k−1})^{b_k − b_{k−1}}``, is an exact importance sample of the Boltzmann density: self-normalised
averages converge to Boltzmann ones for any step size (a poor one only lowers the ESS), and with ``steps = 0``
this is plain importance sampling. Draws stay independent (no resampling), so the Kish ESS keeps its meaning.

Random walk: a Gaussian step of ``step_size`` × each base coordinate's range, then dihedral coordinates wrap and
interval coordinates reflect at their ends (a symmetric proposal, so the uniform base stays invariant and the
acceptance is ``min(1, exp(b_k Δ log w))``). Draws whose ``log w`` is ``−inf`` (non-finite energy, or a wrong-handed
chiral centre when those are dropped) get weight zero and no move ever enters such a state. Cost:
``1 + (levels − 1) × steps`` energies and flow passes per sample (:attr:`Annealing.energies_per_sample`).

>>> Annealing(levels=10, steps=2).energies_per_sample
19
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trade_md.errors import InputError
from trade_md.thermo import beta

__all__ = ["Annealing", "AnnealedDraws", "anneal"]


@dataclass(frozen=True)
class Annealing:
    """An AIS ladder: ``levels`` K >= 1 (equal steps in b from 0 to 1), ``steps`` >= 0 Metropolis steps at each
    intermediate level, ``step_size`` in (0, 1]: the random-walk standard deviation as a fraction of each base
    coordinate's range (dihedrals: 2π; bonds and angles: their normalisation interval)."""

    levels: int = 10
    steps: int = 2
    step_size: float = 0.03

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)) or self.levels < 1:
            raise InputError(f"annealing levels must be a whole number >= 1, got {self.levels!r}; e.g. 10")
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise InputError(f"annealing steps per level must be a whole number >= 0, got {self.steps!r}; e.g. 2")
        if not (np.isfinite(self.step_size) and 0.0 < self.step_size <= 1.0):
            raise InputError(f"annealing step size must lie in (0, 1] (a fraction of each coordinate's range), got "
                             f"{self.step_size!r}; e.g. 0.03")

    @property
    def energies_per_sample(self) -> int:
        """Energy evaluations (and flow passes) per sample: ``1 + (levels − 1) × steps``."""
        return 1 + (self.levels - 1) * self.steps

    @property
    def betas(self) -> np.ndarray:
        """Ladder exponents ``b_k = k / K``, ``[levels + 1]``."""
        return np.linspace(0.0, 1.0, self.levels + 1)

    @classmethod
    def parse(cls, text: str) -> Annealing:
        """From the command-line form ``LEVELS:STEPS:STEP_SIZE`` (e.g. ``10:2:0.03``)."""
        try:
            levels, steps, step_size = text.split(":")
            return cls(int(levels), int(steps), float(step_size))
        except ValueError:
            raise InputError(f"--anneal takes LEVELS:STEPS:STEP_SIZE (e.g. 10:2:0.03), got {text!r}") from None

    def describe(self) -> str:
        return (f"annealed importance sampling, {self.levels} levels x {self.steps} Metropolis steps (step "
                f"{self.step_size:g} of each range; {self.energies_per_sample} energies per sample)")


@dataclass
class AnnealedDraws:
    """The result of :func:`anneal` for ``n`` draws: positions ``[n, ...]`` (model dtype, nm), energies ``[n]``
    kJ/mol, log_weights ``[n]`` (unnormalised ``log W``, ``−inf`` for weight zero), wrong_chirality ``[n]`` and the
    Metropolis acceptance rate of each intermediate level ``[levels − 1]`` (NaN where no step was taken)."""

    positions: torch.Tensor
    energies: np.ndarray
    log_weights: np.ndarray
    wrong_chirality: np.ndarray
    acceptance: np.ndarray


@torch.no_grad()
def anneal(
    generator: torch.nn.Module,
    energy: Callable[[np.ndarray], np.ndarray],
    n: int,
    temperature: float,
    annealing: Annealing,
    *,
    drop_wrong_chirality: bool = True,
) -> AnnealedDraws:
    """``n`` annealed importance samples of the Boltzmann density at ``temperature`` K (module docstring).

    generator: a :class:`trade_md.generator.Generator`; energy: positions ``[n, ...]`` nm → U ``[n]`` kJ/mol. Random
    numbers come from torch's global generator (``torch.manual_seed`` makes a draw reproducible).
    """
    beta_t = beta(temperature)

    def log_w(u: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
        x, log_q = generator.from_base(u, temperature)
        wrong = generator.chirality_flags(x).cpu().numpy().astype(bool)
        energies = np.asarray(energy(x.detach().cpu().double().numpy()), dtype=np.float64)
        values = -beta_t * energies - log_q.detach().cpu().double().numpy()
        dropped = ~np.isfinite(values) | (wrong if drop_wrong_chirality else False)
        return np.where(dropped, -np.inf, values), x, energies, wrong

    u = generator.draw_base(n)
    current, x, energies, wrong = log_w(u)
    betas = annealing.betas
    log_weights = np.zeros(n)
    acceptance = np.full(annealing.levels - 1, np.nan)
    scale = annealing.step_size * generator.flow.base_width.to(u)
    for k in range(1, annealing.levels + 1):
        log_weights = log_weights + (betas[k] - betas[k - 1]) * current
        if k == annealing.levels or annealing.steps == 0:
            continue
        accepted = 0
        alive = np.isfinite(log_weights)
        for _ in range(annealing.steps):
            proposal = generator.flow.fold_into_base(u + scale * torch.randn_like(u))
            proposed, x_new, energies_new, wrong_new = log_w(proposal)
            threshold = np.log(torch.rand(n, dtype=torch.float64).numpy())
            with np.errstate(invalid="ignore"):
                accept = np.isfinite(proposed) & (betas[k] * (proposed - current) > threshold)
            accept_t = torch.as_tensor(accept, device=u.device)
            u = torch.where(accept_t[:, None], proposal, u)
            x = torch.where(accept_t.reshape(-1, *([1] * (x.dim() - 1))), x_new, x)
            current = np.where(accept, proposed, current)
            energies = np.where(accept, energies_new, energies)
            wrong = np.where(accept, wrong_new, wrong)
            accepted += int(np.count_nonzero(accept & alive))
        acceptance[k - 1] = accepted / max(1, annealing.steps * int(np.count_nonzero(alive)))
    return AnnealedDraws(x, energies, log_weights, wrong, acceptance)

"""An openmmtools ``MCMCMove`` that proposes independent configurations from a trained generator.

At the thermodynamic state's temperature T the move draws ``x' ~ q(· | T)`` and accepts it with the
independence Metropolis–Hastings probability

    min(1, exp[(−u(x') − log q(x' | T)) − (−u(x) − log q(x | T))]),   u = U / (k_B T),

which satisfies detailed balance with respect to exp(−u) exactly, whatever the quality of q (a poor q only
lowers the acceptance rate). For molecules the generator's density covers the 3N − 6 internal degrees of
freedom; the proposal is placed in the rigid-body frame of the current configuration (origin, axis and plane
of three frame atoms), so translation and orientation are left unchanged and the rigid-body Jacobian cancels in
the ratio. Wrong-handed proposals (chirality) are rejected.

Usable on its own (``move.apply(thermodynamic_state, sampler_state)``) and inside openmmtools samplers, e.g.
``SequenceMove([GeneratorMove(...), LangevinDynamicsMove(...)])`` in a ``ReplicaExchangeSampler``. Storage
needs the move to be rebuilt from disk, so a move made with ``from_checkpoint`` serialises as its checkpoint path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import openmm.unit as unit
import torch
from openmmtools.mcmc import MCMCMove

from trade_md.errors import InputError
from trade_md.formats.checkpoint import load_generator
from trade_md.thermo import to_kelvin

__all__ = ["GeneratorMove", "frame_of", "place_in_frame"]


def frame_of(positions: np.ndarray, atoms: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rigid-body frame ``(origin [3] nm, rotation [3, 3])`` of three non-collinear atoms of ``positions [atoms, 3]``.

    Rows of the rotation are the frame axes: x towards the second atom, y in the plane of the three atoms.
    """
    a, b, c = (positions[i] for i in atoms)
    e1 = b - a
    e1 = e1 / np.linalg.norm(e1)
    v = c - a
    e2 = v - np.dot(v, e1) * e1
    norm = np.linalg.norm(e2)
    if norm < 1e-8:
        raise InputError(f"frame atoms {atoms} are collinear; choose three atoms that span a plane")
    e2 = e2 / norm
    return a, np.stack([e1, e2, np.cross(e1, e2)])


def place_in_frame(positions: np.ndarray, target: np.ndarray, atoms: tuple[int, int, int]) -> np.ndarray:
    """``positions [atoms, 3]`` moved rigidly so that the frame of ``atoms`` coincides with that of ``target``."""
    origin, axes = frame_of(positions, atoms)
    target_origin, target_axes = frame_of(target, atoms)
    return (positions - origin) @ axes.T @ target_axes + target_origin


class GeneratorMove(MCMCMove):
    """Independence Metropolis–Hastings move with proposals from a generator ``q(x | T)``.

    generator: a :class:`trade_md.generator.Generator`; frame_atoms: three atoms fixing the rigid-body frame, or
    None for densities that are not rotation-invariant (e.g. a particle in an external field), in which case the
    proposal replaces all coordinates; n_proposals: proposals per ``apply``; checkpoint: where the generator
    came from (recorded so openmmtools storage can rebuild the move); seed: for the acceptance draws.
    Statistics: ``n_proposed``, ``n_accepted``, ``acceptance_rate``.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        *,
        frame_atoms: tuple[int, int, int] | None = (0, 1, 2),
        n_proposals: int = 1,
        checkpoint: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if n_proposals < 1:
            raise InputError(f"n_proposals must be >= 1, got {n_proposals}")
        self.generator = generator
        self.frame_atoms = None if frame_atoms is None else tuple(int(i) for i in frame_atoms)
        self.n_proposals = n_proposals
        self.checkpoint = checkpoint
        self._rng = np.random.default_rng(seed)
        self.n_proposed = 0
        self.n_accepted = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: str, **kwargs: Any) -> GeneratorMove:
        """A move whose generator is loaded from a training checkpoint directory."""
        return cls(load_generator(checkpoint).generator, checkpoint=str(checkpoint), **kwargs)

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted proposals so far (NaN before the first)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else math.nan

    @torch.no_grad()
    def _log_q(self, positions_nm: np.ndarray, temperature: float) -> float:
        x = torch.as_tensor(self._shape(positions_nm)[None], dtype=self.generator.dtype)
        return float(self.generator.log_prob(x, temperature)[0])

    def _shape(self, positions_nm: np.ndarray) -> np.ndarray:
        """Positions ``[atoms, 3]`` in the layout the generator models (``[atoms, 3]``, or flat for box toys)."""
        return positions_nm if self.frame_atoms is not None else positions_nm.reshape(-1)

    @torch.no_grad()
    def _propose(self, current_nm: np.ndarray, temperature: float) -> tuple[np.ndarray, float] | None:
        x, log_q = self.generator.sample(1, temperature)
        if bool(self.generator.chirality_flags(x)[0]):
            return None
        proposal = x[0].double().cpu().numpy().reshape(current_nm.shape)
        if self.frame_atoms is not None:
            proposal = place_in_frame(proposal, current_nm, self.frame_atoms)
        return proposal, float(log_q[0])

    def apply(self, thermodynamic_state: Any, sampler_state: Any, context_cache: Any = None) -> None:
        """Make ``n_proposals`` independence MH steps at the state's temperature; updates ``sampler_state``."""
        temperature = to_kelvin(thermodynamic_state.temperature)
        context, _ = self._get_context_cache(context_cache).get_context(thermodynamic_state)
        sampler_state.apply_to_context(context, ignore_velocities=True)
        current = np.asarray(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        log_w_current = -thermodynamic_state.reduced_potential(context) - self._log_q(current, temperature)
        for _ in range(self.n_proposals):
            self.n_proposed += 1
            proposed = self._propose(current, temperature)
            if proposed is None:
                continue
            positions, log_q = proposed
            context.setPositions(positions * unit.nanometer)
            log_w = -thermodynamic_state.reduced_potential(context) - log_q
            if np.isfinite(log_w) and math.log(self._rng.random() + 1e-300) < log_w - log_w_current:
                current, log_w_current = positions, log_w
                self.n_accepted += 1
        context.setPositions(current * unit.nanometer)
        sampler_state.update_from_context(context, ignore_velocities=True)

    def __getstate__(self) -> dict[str, Any]:
        if self.checkpoint is None:
            raise InputError("this GeneratorMove holds an in-memory generator and cannot be stored; build it with "
                             "GeneratorMove.from_checkpoint(path) to use it inside openmmtools storage")
        return {"checkpoint": self.checkpoint, "frame_atoms": self.frame_atoms, "n_proposals": self.n_proposals,
                "n_proposed": self.n_proposed, "n_accepted": self.n_accepted}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(load_generator(state["checkpoint"]).generator, frame_atoms=state["frame_atoms"],
                      n_proposals=state["n_proposals"], checkpoint=state["checkpoint"])
        self.n_proposed, self.n_accepted = state["n_proposed"], state["n_accepted"]

"""Analytic toy systems whose Boltzmann densities are known exactly at every temperature.

Each toy is a potential ``U(x)`` in kJ/mol of positions ``x [n, d]`` (nm) restricted to a box ``[low, high]``
(per dimension) that holds nearly all of the mass in the temperatures one trains over. Every exact quantity is
the one of the density restricted to the box, p(x | T) = exp(−U(x)/(k_B T)) / Z(T) on the box, so a flow on the
same box (:class:`trade_md.flows.BoxCoordinates`) can match it exactly:

- :class:`HarmonicOscillator`: ``U = Σ_i k_i x_i² / 2`` on ``[−L, L]^d``; ``log Z(T)`` and ``E_T[U]`` in closed
  form (truncated Gaussians), any ``d``.
- :class:`DoubleWell1D` and :class:`DoubleWell2D`: tilted double wells (the tilt makes the basin populations
  change with T); ``log Z(T)`` and ``E_T[U]`` by composite Gauss–Legendre quadrature on a fixed grid (exact to
  ~1e-12), in float64 torch, so they are differentiable with respect to T as well.

Temperatures are floats (K) or tensors ``[m]`` (K); exact quantities come back as float64 tensors of shape
``[]`` or ``[m]``. :meth:`ToySystem.sample` draws exact samples (rejection sampling, no approximation) for
maximum-likelihood boundaries; :func:`kl_divergence` compares a model density with the exact one.

>>> toy = HarmonicOscillator(stiffness=(50.0,), half_width=3.0)
>>> round(float(reduced_potential(toy.mean_energy(300.0), 300.0)), 6)   # equipartition: k_B T / 2 per dimension
0.5
>>> well = DoubleWell1D()
>>> x = torch.linspace(-1.7, 1.7, 4001, dtype=torch.float64).unsqueeze(-1)
>>> round(float(torch.trapezoid(torch.exp(well.log_density(x, 450.0)), x[:, 0])), 6)   # normalised on the box
1.0
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trade_md.errors import InputError
from trade_md.flows import ConditionalSplineFlow
from trade_md.generator import BoxCoordinates, Generator
from trade_md.thermo import beta, reduced_potential, to_kelvin

__all__ = [
    "QUADRATURE_PANELS",
    "TOYS",
    "DoubleWell1D",
    "DoubleWell2D",
    "HarmonicOscillator",
    "ToySystem",
    "kl_divergence",
    "make_toy",
    "toy_from_spec",
    "toy_generator",
]

_CHUNK_ELEMENTS = 1 << 22
"""Largest ``[temperatures, grid points]`` block evaluated at once by the quadrature (float64: 32 MiB)."""
QUADRATURE_PANELS: dict[int, int] = {1: 500, 2: 60}
"""Gauss–Legendre panels (4 nodes each) per dimension of the quadrature grid, by the toy's dimension."""


def _temperatures(temperature: float | Tensor) -> Tensor:
    """Temperatures as a float64 tensor ``[]`` or ``[m]`` K, keeping any autograd graph; rejects T <= 0."""
    if isinstance(temperature, Tensor):
        t = temperature.to(torch.float64)
        if not bool(torch.all(t > 0)) or not bool(torch.all(torch.isfinite(t))):
            raise InputError("temperatures must be finite and > 0 K")
        return t
    return torch.tensor(to_kelvin(temperature), dtype=torch.float64)


def _gauss_legendre(low: float, high: float, panels: int) -> tuple[Tensor, Tensor]:
    """Nodes ``[4 panels]`` and log weights of composite 4-point Gauss–Legendre quadrature on ``[low, high]``.

    An open rule (no node on the box's faces, where a model density is unconstrained by any data) of order h^8.
    """
    points, weights = np.polynomial.legendre.leggauss(4)
    edges = np.linspace(low, high, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    nodes = (0.5 * (edges[1:] + edges[:-1]))[:, None] + half[:, None] * points[None, :]
    return torch.from_numpy(nodes.reshape(-1)), torch.from_numpy(np.log(half[:, None] * weights[None, :]).reshape(-1))


class ToySystem(ABC):
    """A potential ``U(x)`` (kJ/mol) on a box in ``R^d`` (nm) with exact thermodynamics; see the module docs.

    Subclasses implement :meth:`potential` and :attr:`params`; exact quantities default to Gauss–Legendre
    quadrature on the box (:data:`QUADRATURE_PANELS`, ``d <= 2``), which subclasses with closed forms override.
    """

    name: str = "toy"

    def __init__(self, low: Sequence[float], high: Sequence[float]) -> None:
        self.low = tuple(float(v) for v in low)
        self.high = tuple(float(v) for v in high)
        if len(self.low) != len(self.high) or any(h <= lo for lo, h in zip(self.low, self.high)):
            raise InputError(f"a toy box needs low < high in every dimension, got {self.low} and {self.high}")
        self._grid: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the configuration space."""
        return len(self.low)

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able constructor arguments; ``type(self)(**params)`` rebuilds the toy."""

    @abstractmethod
    def potential(self, x: Tensor) -> Tensor:
        """``U(x)`` ``[n]`` in kJ/mol of ``x [n, d]`` nm; differentiable; dtype and device of ``x``."""

    def spec(self) -> dict[str, Any]:
        """JSON-able description that :func:`toy_from_spec` turns back into this toy (stored in checkpoints)."""
        return {"kind": "toy", "name": self.name, "params": self.params}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the toy when a checkpoint is loaded: the full spec."""
        return self.spec()

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise InputError(f"{self.name} positions must have shape [n, {self.dim}], got {list(x.shape)}")

    def quadrature(self) -> tuple[Tensor, Tensor, Tensor]:
        """Fixed tensor-product Gauss–Legendre grid on the box: points ``[G, d]``, log weights ``[G]``, U ``[G]``."""
        if self._grid is None:
            if self.dim > 2:
                raise InputError(f"quadrature on a grid needs d <= 2, {self.name} has d = {self.dim}")
            panels = QUADRATURE_PANELS[self.dim]
            axes = [_gauss_legendre(lo, h, panels) for lo, h in zip(self.low, self.high)]
            points = torch.cartesian_prod(*[nodes for nodes, _ in axes]).reshape(-1, self.dim)
            log_weights = torch.cartesian_prod(*[lw for _, lw in axes]).reshape(-1, self.dim).sum(dim=-1)
            with torch.no_grad():
                energies = self.potential(points)
            self._grid = (points, log_weights, energies)
        return self._grid

    def _reduce_over_grid(self, temperature: float | Tensor, mean: bool) -> Tensor:
        t = _temperatures(temperature)
        _, log_weights, energies = self.quadrature()
        flat = t.reshape(-1)
        chunk = max(1, _CHUNK_ELEMENTS // energies.numel())
        results = []
        for start in range(0, flat.numel(), chunk):
            log_terms = log_weights - reduced_potential(energies, flat[start:start + chunk, None])
            if mean:
                results.append(torch.sum(torch.softmax(log_terms, dim=-1) * energies, dim=-1))
            else:
                results.append(torch.logsumexp(log_terms, dim=-1))
        return torch.cat(results).reshape(t.shape)

    def log_Z(self, temperature: float | Tensor) -> Tensor:
        """``log ∫_box exp(−U(x)/(k_B T)) dx`` (x in nm), float64 ``[]`` or ``[m]``, differentiable in T."""
        return self._reduce_over_grid(temperature, mean=False)

    def mean_energy(self, temperature: float | Tensor) -> Tensor:
        """``E_T[U]`` in kJ/mol, float64 ``[]`` or ``[m]``."""
        return self._reduce_over_grid(temperature, mean=True)

    def log_density(self, x: Tensor, temperature: float | Tensor) -> Tensor:
        """Exact ``log p(x | T)`` ``[n]`` (1/nm^d) on the box; x ``[n, d]``; T float or ``[n]``; differentiable in T."""
        self._check(x)
        t = _temperatures(temperature)
        return -reduced_potential(self.potential(x.to(torch.float64)), t) - self.log_Z(t)

    def _energy_lower_bound(self) -> float:
        """A number <= min U over the box (grid minimum less a margin that covers the grid spacing)."""
        _, _, energies = self.quadrature()
        return float(energies.min()) - 0.1

    def sample(self, n: int, temperature: float, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, d]`` (float64, nm) of p(x | T): rejection from the uniform box distribution."""
        inverse_kt = beta(temperature)
        bound = self._energy_lower_bound()
        low = torch.tensor(self.low, dtype=torch.float64)
        width = torch.tensor(self.high, dtype=torch.float64) - low
        accepted: list[Tensor] = []
        count = 0
        while count < n:
            proposal = low + width * torch.rand(max(4 * n, 1024), self.dim, generator=generator, dtype=torch.float64)
            energies = self.potential(proposal)
            if bool(torch.any(energies < bound)):
                raise RuntimeError(f"{self.name}: energy below the rejection bound {bound}; refine the grid")
            keep = torch.rand(proposal.shape[0], generator=generator, dtype=torch.float64) < torch.exp(
                -inverse_kt * (energies - bound)
            )
            accepted.append(proposal[keep])
            count += int(keep.sum())
        return torch.cat(accepted)[:n]


class HarmonicOscillator(ToySystem):
    """``U(x) = Σ_i k_i x_i² / 2`` (k_i in kJ/mol/nm²) on ``Π_i [−L_i, L_i]``; exact in closed form, any d.

    stiffness: ``(k_1, ..., k_d)``; half_width: ``L`` in nm, one for all dimensions or one per dimension. Per
    dimension, σ_i² = k_B T / k_i, a_i = L_i / σ_i, Z_i = σ_i √(2π) erf(a_i/√2) and
    E[k_i x_i²/2] = (k_B T / 2) (1 − 2 a_i φ(a_i) / erf(a_i/√2)). The defaults put the box faces at 6.8 k_B T
    at 600 K (27 k_B T at 150 K) in both dimensions.
    """

    name = "harmonic-oscillator"

    def __init__(self, stiffness: Sequence[float] = (40.0, 10.0), half_width: float | Sequence[float] = (1.3, 2.6)
                 ) -> None:
        self.stiffness = tuple(float(k) for k in stiffness)
        widths = [float(half_width)] * len(self.stiffness) if np.ndim(half_width) == 0 else list(half_width)
        if not self.stiffness or any(k <= 0 for k in self.stiffness) or len(widths) != len(self.stiffness) or any(
            w <= 0 for w in widths
        ):
            raise InputError(f"harmonic oscillator needs stiffness > 0 and half_width > 0 (one or one per "
                             f"dimension), got {stiffness}, {half_width}")
        self.half_width = tuple(float(w) for w in widths)
        super().__init__([-w for w in self.half_width], self.half_width)

    @property
    def params(self) -> dict[str, Any]:
        return {"stiffness": list(self.stiffness), "half_width": list(self.half_width)}

    def potential(self, x: Tensor) -> Tensor:
        self._check(x)
        k = torch.tensor(self.stiffness, dtype=x.dtype, device=x.device)
        return 0.5 * torch.sum(k * x * x, dim=-1)

    def _per_dimension(self, temperature: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = _temperatures(temperature)
        kt = 1.0 / reduced_potential(1.0, t).unsqueeze(-1)          # k_B T in kJ/mol: 1 over the u of 1 kJ/mol
        sigma = torch.sqrt(kt / torch.tensor(self.stiffness, dtype=torch.float64))
        a = torch.tensor(self.half_width, dtype=torch.float64) / sigma
        return kt, sigma, a

    def log_Z(self, temperature: float | Tensor) -> Tensor:
        _, sigma, a = self._per_dimension(temperature)
        per_dim = torch.log(sigma) + 0.5 * math.log(2.0 * math.pi) + torch.log(torch.special.erf(a / math.sqrt(2.0)))
        return per_dim.sum(dim=-1)

    def mean_energy(self, temperature: float | Tensor) -> Tensor:
        kt, _, a = self._per_dimension(temperature)
        phi = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
        return (0.5 * kt * (1.0 - 2.0 * a * phi / torch.special.erf(a / math.sqrt(2.0)))).sum(dim=-1)

    def sample(self, n: int, temperature: float, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, d]``: Gaussians with samples outside the box rejected."""
        _, sigma, _ = self._per_dimension(temperature)
        accepted: list[Tensor] = []
        count = 0
        while count < n:
            proposal = sigma * torch.randn(max(2 * n, 256), self.dim, generator=generator, dtype=torch.float64)
            keep = torch.all(proposal.abs() <= torch.tensor(self.half_width, dtype=torch.float64), dim=-1)
            accepted.append(proposal[keep])
            count += int(keep.sum())
        return torch.cat(accepted)[:n]


class DoubleWell1D(ToySystem):
    """``U(x) = h ((x/s)² − 1)² + t x / s`` on ``[−L, L]``: wells near ±s, barrier ≈ h, tilt t favours x < 0.

    barrier ``h``, tilt ``t`` in kJ/mol; scale ``s``, half_width ``L`` in nm. Defaults: h = 7.5 kJ/mol (3 k_B T
    at 300 K), t = 1.5 kJ/mol; between 150 K and 600 K the well populations go from about 11:1 to 1.8:1.
    """

    name = "double-well-1d"

    def __init__(self, barrier: float = 7.5, tilt: float = 1.5, scale: float = 1.0, half_width: float = 1.7) -> None:
        if barrier <= 0 or scale <= 0 or half_width <= scale:
            raise InputError(f"double well needs barrier > 0 and half_width > scale > 0, got {barrier}, {scale}, "
                             f"{half_width}")
        self.barrier, self.tilt, self.scale = float(barrier), float(tilt), float(scale)
        self.half_width = float(half_width)
        super().__init__([-self.half_width], [self.half_width])

    @property
    def params(self) -> dict[str, Any]:
        return {"barrier": self.barrier, "tilt": self.tilt, "scale": self.scale, "half_width": self.half_width}

    def potential(self, x: Tensor) -> Tensor:
        self._check(x)
        y = x[:, 0] / self.scale
        return self.barrier * (y * y - 1.0) ** 2 + self.tilt * y


class DoubleWell2D(ToySystem):
    """``U(x, y) = h (x² − 1)² + t x + k (y − c x)² / 2``: a tilted double well in x with a skewed harmonic
    valley in y (non-separable for c != 0), on ``[−Lx, Lx] × [−Ly, Ly]``.

    barrier ``h``, tilt ``t`` in kJ/mol; stiffness ``k`` in kJ/mol/nm²; coupling ``c`` dimensionless; x, y in nm.
    """

    name = "double-well-2d"

    def __init__(
        self,
        barrier: float = 7.5,
        tilt: float = 1.5,
        stiffness: float = 20.0,
        coupling: float = 0.5,
        half_width: Sequence[float] = (1.7, 2.5),
    ) -> None:
        if barrier <= 0 or stiffness <= 0 or len(half_width) != 2 or min(half_width) <= 1.0:
            raise InputError(f"2-D double well needs barrier > 0, stiffness > 0 and two half widths > 1 nm, got "
                             f"{barrier}, {stiffness}, {half_width}")
        self.barrier, self.tilt = float(barrier), float(tilt)
        self.stiffness, self.coupling = float(stiffness), float(coupling)
        self.half_width = tuple(float(v) for v in half_width)
        super().__init__([-v for v in self.half_width], self.half_width)

    @property
    def params(self) -> dict[str, Any]:
        return {"barrier": self.barrier, "tilt": self.tilt, "stiffness": self.stiffness,
                "coupling": self.coupling, "half_width": list(self.half_width)}

    def potential(self, x: Tensor) -> Tensor:
        self._check(x)
        a, b = x[:, 0], x[:, 1]
        return self.barrier * (a * a - 1.0) ** 2 + self.tilt * a + 0.5 * self.stiffness * (b - self.coupling * a) ** 2


TOYS: dict[str, type[ToySystem]] = {
    HarmonicOscillator.name: HarmonicOscillator,
    DoubleWell1D.name: DoubleWell1D,
    DoubleWell2D.name: DoubleWell2D,
}
"""Built-in toys by name."""


def make_toy(name: str, **params: Any) -> ToySystem:
    """A built-in toy by name (see :data:`TOYS`) with optional constructor arguments."""
    if name not in TOYS:
        raise InputError(f"unknown toy {name!r}; choose one of {sorted(TOYS)}")
    try:
        return TOYS[name](**params)
    except TypeError as error:
        raise InputError(f"bad parameters for toy {name!r}: {error}") from None


def toy_from_spec(spec: dict[str, Any]) -> ToySystem:
    """Rebuild a toy from :meth:`ToySystem.spec`."""
    if spec.get("kind") != "toy":
        raise InputError(f"not a toy spec: {spec!r}")
    return make_toy(spec["name"], **spec.get("params", {}))


def kl_divergence(
    toy: ToySystem,
    log_prob: Callable[[Tensor, Tensor], Tensor],
    temperature: float,
    *,
    n_samples: int = 20000,
    generator: torch.Generator | None = None,
) -> float:
    """``KL(p_T ‖ q_T) = E_p[log p − log q]`` in nats of a model density against the exact one.

    log_prob: ``(x [n, d], T [n] K) -> log q [n]`` (e.g. ``Generator.log_prob``), evaluated without gradients.
    For ``d <= 2`` the integral is the toy's Gauss–Legendre quadrature on the box; for larger ``d`` a Monte Carlo
    average over ``n_samples`` exact samples (standard error ≈ std(log p − log q)/√n).
    """
    t = to_kelvin(temperature)
    with torch.no_grad():
        if toy.dim <= 2:
            points, log_weights, _ = toy.quadrature()
            log_p = toy.log_density(points, t)
            chunks = [
                log_prob(chunk, torch.full((chunk.shape[0],), t, dtype=torch.float64)).to(torch.float64)
                for chunk in torch.split(points, 8192)
            ]
            log_q = torch.cat(chunks)
            return float(torch.sum(torch.exp(log_weights + log_p) * (log_p - log_q)))
        x = toy.sample(n_samples, t, generator=generator)
        log_q = log_prob(x, torch.full((n_samples,), t, dtype=torch.float64)).to(torch.float64)
        return float(torch.mean(toy.log_density(x, t) - log_q))


def toy_generator(toy: ToySystem, reference_temperature: float, **flow_kwargs: Any) -> Generator:
    """A :class:`~trade_md.flows.Generator` on the toy's box (``BoxCoordinates``), context ``log(T / T0)``.

    flow_kwargs: :class:`~trade_md.flows.ConditionalSplineFlow` arguments (n_layers, hidden, n_bins, seed, ...).
    """
    coordinates = BoxCoordinates(toy.low, toy.high)
    flow = ConditionalSplineFlow(coordinates.domains, context_dim=1, **flow_kwargs)
    return Generator(coordinates, flow, reference_temperature)

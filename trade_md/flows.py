"""Temperature-conditioned rational-quadratic spline coupling flows and the `Generator` model object.

Features ``z [n, d]`` live in a product of one-dimensional domains (:class:`Domain`): circles ``[-pi, pi)``
(dihedrals) or intervals ``[low, high]`` (normalised bonds and angles, toy coordinates). The flow maps a uniform
base distribution on that product (it does NOT depend on temperature) through coupling layers whose conditioners
see the passive features and a context vector; :class:`Generator` feeds ``context = log(T / T0)`` and composes the
flow with a :class:`CoordinateTransform` from physical coordinates ``x`` to features ``z``.

Rational-quadratic splines follow Durkan et al., "Neural Spline Flows" (2019). On an interval the spline is a
monotonic bijection of ``[low, high]``; on the circle the derivative at ``-pi`` and ``pi`` is shared, so the map is
a diffeomorphism of the circle, and each layer is followed by a fixed (non-learned) rotation of the circular
features so that the seam at ``+-pi`` moves from layer to layer. Every layer starts as the exact identity (the
conditioner's output layer is zero-initialised). An optional last layer, :class:`ThermalScaling`, builds in the
temperature dependence of harmonic degrees of freedom (each feature scaled about its centre by ``(T/T0)^(a/2)``):
it is the identity at T0 and gives TRADE the right starting point for bonds, angles and stiff dihedrals, which
an untrained conditioner would otherwise hold at their T0 widths at every temperature. Everything is
differentiable twice (TRADE differentiates ``log q`` with respect to the context with ``create_graph=True``).

>>> flow = ConditionalSplineFlow([Domain.circular(), Domain.interval(0.0, 1.0)], context_dim=1, n_layers=2)
>>> z, log_q = flow.sample(torch.zeros(5, 1))
>>> torch.allclose(flow.log_prob(z, torch.zeros(5, 1)), log_q, atol=1e-5)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from trade_md.errors import InputError
from trade_md.thermo import to_kelvin

__all__ = [
    "ADDABLE_FLOW_PARTS",
    "BoxCoordinates",
    "ConditionalSplineFlow",
    "CoordinateTransform",
    "Domain",
    "Generator",
    "SplineCoupling",
    "ThermalScaling",
    "molecule_generator",
    "rational_quadratic_spline",
]

MIN_BIN_WIDTH = 1e-3
"""Smallest bin width (and height) as a fraction of the domain length."""
MIN_DERIVATIVE = 1e-3
"""Smallest knot derivative of a spline."""


@dataclass(frozen=True)
class Domain:
    """A one-dimensional feature domain: ``"circular"`` (always ``[-pi, pi)``) or ``"interval"`` ``[low, high]``."""

    kind: Literal["circular", "interval"]
    low: float = -math.pi
    high: float = math.pi

    def __post_init__(self) -> None:
        if self.kind == "circular":
            if self.low != -math.pi or self.high != math.pi:
                raise InputError(f"a circular domain is always [-pi, pi), got [{self.low}, {self.high}); "
                                 "use Domain.circular()")
        elif self.kind == "interval":
            if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
                raise InputError(f"an interval domain needs finite low < high, got [{self.low}, {self.high}]")
        else:
            raise InputError(f"unknown domain kind {self.kind!r}; use 'circular' or 'interval'")

    @classmethod
    def circular(cls) -> Domain:
        """The circle ``[-pi, pi)``."""
        return cls("circular")

    @classmethod
    def interval(cls, low: float, high: float) -> Domain:
        """The closed interval ``[low, high]``."""
        return cls("interval", float(low), float(high))

    @property
    def is_circular(self) -> bool:
        return self.kind == "circular"

    @property
    def length(self) -> float:
        return self.high - self.low


def _wrap(angle: Tensor) -> Tensor:
    """Angles mapped onto ``[-pi, pi)``."""
    return torch.remainder(angle + math.pi, 2.0 * math.pi) - math.pi


def _knots(raw: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Knot positions ``[..., K + 1]`` from unnormalised bin sizes ``[..., K]`` (softmax with a floor)."""
    n_bins = raw.shape[-1]
    weights = torch.exp(raw - raw.detach().amax(dim=-1, keepdim=True))  # softmax; 3x faster than torch's on CPU
    sizes = MIN_BIN_WIDTH + (1.0 - MIN_BIN_WIDTH * n_bins) * weights / weights.sum(dim=-1, keepdim=True)
    cumulative = torch.cumsum(sizes, dim=-1)
    low, high = low.unsqueeze(-1), high.unsqueeze(-1)
    inner = low + (high - low) * cumulative[..., :-1]
    return torch.cat([low.expand_as(raw[..., :1]), inner, high.expand_as(raw[..., :1])], dim=-1)


_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _derivatives(raw: Tensor, circular: Tensor) -> Tensor:
    """Knot derivatives ``[..., K + 1]``; raw zeros give derivative 1; where circular, the last equals the first."""
    derivatives = MIN_DERIVATIVE + functional.softplus(raw + _DERIVATIVE_SHIFT)
    last = torch.where(circular, derivatives[..., 0], derivatives[..., -1])
    return torch.cat([derivatives[..., :-1], last.unsqueeze(-1)], dim=-1)


def rational_quadratic_spline(
    inputs: Tensor,
    raw_widths: Tensor,
    raw_heights: Tensor,
    raw_derivatives: Tensor,
    low: float | Tensor,
    high: float | Tensor,
    circular: bool | Tensor = False,
    *,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline of ``[low, high]`` onto itself, elementwise.

    inputs: ``[...]``; raw_widths, raw_heights: ``[..., K]``; raw_derivatives: ``[..., K + 1]``; low, high,
    circular: floats/bools or tensors broadcastable to ``inputs``. Where ``circular`` the derivative at ``high``
    is the one at ``low`` (the last raw derivative is unused), so the map is a diffeomorphism of the circle.
    Returns ``(outputs [...], log|d out / d in| [...])``. All raw zeros give the identity. Inputs outside the
    domain are clamped onto its edge.
    """
    low = torch.as_tensor(low, dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
    high = torch.as_tensor(high, dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
    circular = torch.as_tensor(circular, device=inputs.device).expand_as(inputs)
    x_knots = _knots(raw_widths, low, high)
    y_knots = _knots(raw_heights, low, high)
    derivatives = _derivatives(raw_derivatives, circular)
    values = torch.minimum(torch.maximum(inputs, low), high)

    search = y_knots if inverse else x_knots
    index = (values.unsqueeze(-1) >= search[..., 1:-1].detach()).sum(dim=-1, keepdim=True)

    def pick(table: Tensor, offset: int = 0) -> Tensor:
        return torch.gather(table, -1, index + offset).squeeze(-1)

    x_k, x_k1 = pick(x_knots), pick(x_knots, 1)
    y_k, y_k1 = pick(y_knots), pick(y_knots, 1)
    d_k, d_k1 = pick(derivatives), pick(derivatives, 1)
    width = x_k1 - x_k
    height = y_k1 - y_k
    slope = height / width
    curvature = d_k1 + d_k - 2.0 * slope

    if inverse:
        shifted = values - y_k
        a = height * (slope - d_k) + shifted * curvature
        b = height * d_k - shifted * curvature
        c = -slope * shifted
        discriminant = (b * b - 4.0 * a * c).clamp(min=0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(discriminant))
        outputs = x_k + xi * width
    else:
        xi = (values - x_k) / width
    one_minus = 1.0 - xi
    mixed = xi * one_minus
    denominator = slope + curvature * mixed
    if not inverse:
        outputs = y_k + height * (slope * xi * xi + d_k * mixed) / denominator
    numerator = slope * slope * (d_k1 * xi * xi + 2.0 * slope * mixed + d_k * one_minus * one_minus)
    log_derivative = torch.log(numerator) - 2.0 * torch.log(denominator)
    return outputs, (-log_derivative if inverse else log_derivative)


def _zero_output_mlp(n_inputs: int, hidden: int, n_hidden_layers: int, n_outputs: int) -> nn.Sequential:
    """SiLU MLP ``n_inputs -> hidden (x n_hidden_layers) -> n_outputs`` whose output layer starts at zero."""
    layers: list[nn.Module] = []
    width = n_inputs
    for _ in range(n_hidden_layers):
        layers.extend([nn.Linear(width, hidden), nn.SiLU()])
        width = hidden
    output = nn.Linear(width, n_outputs)
    nn.init.zeros_(output.weight)
    nn.init.zeros_(output.bias)
    layers.append(output)
    return nn.Sequential(*layers)


class SplineCoupling(nn.Module):
    """One coupling layer: RQ splines on the ``transformed`` dims, conditioned on the others and the context.

    domains: all ``d`` feature domains; transformed: indices of the dims this layer changes; the conditioner is
    an MLP (SiLU) on ``[embedded passive features, context]`` whose output layer starts at zero (identity layer)
    and whose weights on the context start at zero, so that a model trained at T0 alone is the same model at
    every T until its temperature dependence is trained. With ``temperature_head`` a second MLP of the same shape
    adds ``Σ_k context_k · head_k(features)`` to the spline parameters: a temperature dependence that vanishes at
    T0 (context 0) whatever its weights, so it can be trained without touching the model at T0.
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        transformed: Sequence[int],
        context_dim: int,
        hidden: int,
        n_hidden_layers: int,
        n_bins: int,
        temperature_head: bool = False,
    ) -> None:
        super().__init__()
        self.domains = list(domains)
        self.n_bins = n_bins
        self.transformed = [int(i) for i in transformed]
        self.passive = [i for i in range(len(self.domains)) if i not in set(self.transformed)]
        chosen = [self.domains[i] for i in self.transformed]
        self.register_buffer("transformed_index", torch.tensor(self.transformed, dtype=torch.long))
        self.register_buffer("passive_index", torch.tensor(self.passive, dtype=torch.long))
        self.register_buffer("unshuffle", torch.argsort(torch.tensor(self.passive + self.transformed)))
        self.register_buffer("_low", torch.tensor([d.low for d in chosen], dtype=torch.float64), persistent=False)
        self.register_buffer("_high", torch.tensor([d.high for d in chosen], dtype=torch.float64), persistent=False)
        self.register_buffer("_circular", torch.tensor([d.is_circular for d in chosen]), persistent=False)
        passive_domains = [self.domains[i] for i in self.passive]
        angles = [m for m, d in enumerate(passive_domains) if d.is_circular]
        intervals = [m for m, d in enumerate(passive_domains) if not d.is_circular]
        self.register_buffer("_passive_angles", torch.tensor(angles, dtype=torch.long), persistent=False)
        self.register_buffer("_passive_intervals", torch.tensor(intervals, dtype=torch.long), persistent=False)
        interval_low = [passive_domains[m].low for m in intervals]
        interval_length = [passive_domains[m].length for m in intervals]
        self.register_buffer("_interval_low", torch.tensor(interval_low, dtype=torch.float64), persistent=False)
        self.register_buffer("_interval_length", torch.tensor(interval_length, dtype=torch.float64),
                             persistent=False)
        n_inputs = 2 * len(angles) + len(intervals) + context_dim
        n_outputs = len(self.transformed) * (3 * n_bins + 1)
        self.conditioner = _zero_output_mlp(n_inputs, hidden, n_hidden_layers, n_outputs)
        self.temperature_head = (
            _zero_output_mlp(n_inputs, hidden, n_hidden_layers, context_dim * n_outputs) if temperature_head else None
        )
        self.context_dim = context_dim
        self.reset_context_weights()

    @torch.no_grad()
    def reset_context_weights(self) -> None:
        """Zero the conditioner's weights on the context (the last inputs): the layer forgets its temperature
        dependence. A run at T0 alone never trains them (the context is 0 there)."""
        self.conditioner[0].weight[:, -self.context_dim:] = 0.0

    def _embed(self, passive: Tensor) -> Tensor:
        """Conditioner features: ``(cos, sin)`` of circular dims, interval dims rescaled onto ``[-1, 1]``."""
        angles = passive[:, self._passive_angles]
        intervals = passive[:, self._passive_intervals]
        low, length = self._interval_low.to(passive.dtype), self._interval_length.to(passive.dtype)
        return torch.cat([torch.cos(angles), torch.sin(angles), 2.0 * (intervals - low) / length - 1.0], dim=-1)

    def _couple(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        passive = z[:, self.passive_index]
        features = torch.cat([self._embed(passive), context], dim=-1)
        k = self.n_bins
        raw = self.conditioner(features)
        if self.temperature_head is not None:
            head = self.temperature_head(features).reshape(z.shape[0], self.context_dim, -1)
            raw = raw + torch.einsum("nk,nko->no", context, head)
        raw = raw.reshape(z.shape[0], len(self.transformed), 3 * k + 1)
        y, logdet = rational_quadratic_spline(
            z[:, self.transformed_index], raw[..., :k], raw[..., k:2 * k], raw[..., 2 * k:],
            self._low.to(z.dtype), self._high.to(z.dtype), self._circular, inverse=inverse,
        )
        return torch.cat([passive, y], dim=-1)[:, self.unshuffle], logdet.sum(dim=-1)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Base side to feature side: ``(z' [n, d], log|dz'/dz| [n])``."""
        return self._couple(z, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature side to base side: ``(z' [n, d], log|dz'/dz| [n])``."""
        return self._couple(z, context, inverse=True)


STIFF_CIRCULAR_STD = 0.5
"""Circular standard deviation (rad) below which :meth:`ThermalScaling.initialise` treats a dihedral as stiff."""
_EDGE = 1e-6
"""Interval features are kept this far (as a fraction of the half length) inside their edges before unfolding."""
_UNFOLD_POWER = 8
"""``p`` of the unfolding ``w = v / (1 - v^p)^(1/p)`` of ``(-1, 1)`` onto the line: linear within 0.3 % up to
``|v| = 0.6`` (``atanh`` is off by 15 % there), so the scaling stays a scaling out to 3.6 data standard deviations."""


def _unfold(v: Tensor) -> Tensor:
    """``w = v / (1 - v^p)^(1/p)``: ``(-1, 1)`` onto the real line, odd, ``w ~ v`` near 0."""
    return v * torch.exp(-torch.log1p(-v.abs() ** _UNFOLD_POWER) / _UNFOLD_POWER)


def _fold(w: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`_unfold`, ``v = w / (1 + w^p)^(1/p)``, and ``log dv/dw = -(1 + 1/p) log(1 + w^p)``."""
    log_1p = torch.log1p(w.abs() ** _UNFOLD_POWER)
    return w * torch.exp(-log_1p / _UNFOLD_POWER), -(1.0 + 1.0 / _UNFOLD_POWER) * log_1p


class ThermalScaling(nn.Module):
    """The harmonic temperature dependence as a fixed-form last layer: feature ``i`` is scaled about its centre
    ``c_i`` by ``s_i = (T / T0)^(a_i / 2)``, made a bijection of its domain.

    Interval ``[low, high]``: with ``v = 2 (z - low) / (high - low) - 1`` unfolded onto the line,
    ``w = v / (1 - v^8)^(1/8)``, the map is ``w' = c + s (w - c)`` (``c`` in ``w`` units): a plain scaling over the
    bulk of the interval (bonds and angles span +-6 data standard deviations) that never leaves it. Circle:
    ``theta' = c + 2 atan2(s sin h, cos h)`` with ``h = wrap(theta - c) / 2``, a diffeomorphism of the circle with
    slope ``s`` at ``c``. Exponent ``a = 1`` is the exact temperature dependence
    of a harmonic degree of freedom about its minimum (every coordinate of a Gaussian scales by ``sqrt(T / T0)``
    about the mode, whatever its correlations); ``a = 0`` leaves a feature alone. At ``T0`` (context 0) the layer
    is the identity for any ``c`` and ``a``, so a boundary fit never sees it; centres and exponents are trained by
    the TRADE term only. Parameters start at ``c = 0, a = 0`` (identity); :meth:`initialise` sets them from data.
    """

    def __init__(self, domains: Sequence[Domain]) -> None:
        super().__init__()
        d = len(domains)
        self.centre = nn.Parameter(torch.zeros(d))
        self.exponent = nn.Parameter(torch.zeros(d))
        self.register_buffer("_circular", torch.tensor([dom.is_circular for dom in domains]), persistent=False)
        self.register_buffer("_low", torch.tensor([dom.low for dom in domains], dtype=torch.float64), persistent=False)
        self.register_buffer("_length", torch.tensor([dom.length for dom in domains], dtype=torch.float64),
                             persistent=False)

    @torch.no_grad()
    def initialise(self, z: Tensor, stiff_std: float = STIFF_CIRCULAR_STD) -> None:
        """Centres at the mean of features ``z [n, d]`` (circular mean on circles); exponent 1 on every interval
        feature and on dihedrals whose circular standard deviation is below ``stiff_std`` rad, 0 elsewhere."""
        z = z.detach().to(torch.float64)
        mean_v = (2.0 * (z - self._low) / self._length - 1.0).mean(0).clamp(-1.0 + _EDGE, 1.0 - _EDGE)
        resultant = torch.complex(torch.cos(z).mean(0), torch.sin(z).mean(0))
        circular_std = torch.sqrt(-2.0 * torch.log(resultant.abs().clamp(min=1e-12)))
        centre = torch.where(self._circular, torch.angle(resultant), _unfold(mean_v))
        stiff = ~self._circular | (circular_std < stiff_std)
        self.centre.copy_(centre.to(self.centre.dtype))
        self.exponent.copy_(stiff.to(self.exponent.dtype))

    def centres(self) -> Tensor:
        """The centres in feature units ``[d]`` (angles on circles)."""
        with torch.no_grad():
            folded, _ = _fold(self.centre)
            interval = self._low.to(folded) + 0.5 * self._length.to(folded) * (folded + 1.0)
            return torch.where(self._circular, _wrap(self.centre), interval).detach()

    def _scale(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(s [n, d], log s [n, d])`` for context ``log(T / T0)`` ``[n, 1]``."""
        log_s = 0.5 * self.exponent.to(context.dtype) * context
        return torch.exp(log_s), log_s

    def _map(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        s, log_s = self._scale(context)
        if inverse:
            s, log_s = 1.0 / s, -log_s
        centre = self.centre.to(z.dtype)
        low, length = self._low.to(z.dtype), self._length.to(z.dtype)
        v = (2.0 * (z - low) / length - 1.0).clamp(-1.0 + _EDGE, 1.0 - _EDGE)
        w = _unfold(v)
        v_new, log_fold_new = _fold(centre + s * (w - centre))
        _, log_fold = _fold(w)
        interval = low + 0.5 * length * (v_new + 1.0)
        interval_log = log_s + log_fold_new - log_fold
        h = 0.5 * _wrap(z - centre)
        angle = _wrap(centre + 2.0 * torch.atan2(s * torch.sin(h), torch.cos(h)))
        angle_log = log_s - torch.log(torch.cos(h) ** 2 + (s * torch.sin(h)) ** 2)
        out = torch.where(self._circular, angle, interval)
        log_derivative = torch.where(self._circular, angle_log, interval_log)
        return out, log_derivative.sum(dim=-1)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Flow side to feature side at context ``[n, 1]``: ``(z' [n, d], log|dz'/dz| [n])``."""
        return self._map(z, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature side to flow side: ``(z' [n, d], log|dz'/dz| [n])``."""
        return self._map(z, context, inverse=True)


def _masks(d: int, n_layers: int, generator: torch.Generator) -> list[list[int]]:
    """Transformed dims per layer: random halves, each followed by its complement, so every dim moves twice."""
    if d == 1:
        return [[0] for _ in range(n_layers)]
    masks: list[list[int]] = []
    for layer in range(n_layers):
        if layer % 2 == 0:
            permutation = torch.randperm(d, generator=generator).tolist()
            half = sorted(permutation[: d // 2])
            masks.append(half)
        else:
            masks.append([i for i in range(d) if i not in set(masks[-1])])
    return masks


class ConditionalSplineFlow(nn.Module):
    """A context-conditioned RQ-spline coupling flow over features ``z [n, d]`` in a product of domains.

    domains: the ``d`` feature domains; context_dim: width of the context (1 for ``log(T / T0)``);
    n_layers: coupling layers; hidden, n_hidden_layers: conditioner MLP shape; n_bins: spline bins;
    seed: fixes the coupling masks and the circular phase shifts (stored as buffers and in :meth:`config`);
    thermal_scaling: end with a :class:`ThermalScaling` layer (the harmonic temperature dependence, identity at
    T0; set its centres and exponents from data with :meth:`Generator.initialise_thermal_scaling`);
    temperature_head: give every coupling a temperature head (see :class:`SplineCoupling`), zero at T0.
    The base distribution is uniform on the product of domains and independent of the context.
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        context_dim: int = 1,
        n_layers: int = 8,
        hidden: int = 128,
        n_hidden_layers: int = 2,
        n_bins: int = 8,
        seed: int = 0,
        thermal_scaling: bool = False,
        temperature_head: bool = False,
    ) -> None:
        super().__init__()
        self.domains = [d if isinstance(d, Domain) else Domain(**d) for d in domains]
        if not self.domains:
            raise InputError("a flow needs at least one feature domain")
        if context_dim < 1 or n_layers < 1 or hidden < 1 or n_hidden_layers < 1 or n_bins < 2:
            raise InputError(
                f"flow sizes must be context_dim >= 1, n_layers >= 1, hidden >= 1, n_hidden_layers >= 1, "
                f"n_bins >= 2; got {context_dim}, {n_layers}, {hidden}, {n_hidden_layers}, {n_bins}"
            )
        self.context_dim = int(context_dim)
        self._settings = {"n_layers": int(n_layers), "hidden": int(hidden), "n_hidden_layers": int(n_hidden_layers),
                          "n_bins": int(n_bins), "seed": int(seed), "thermal_scaling": bool(thermal_scaling),
                          "temperature_head": bool(temperature_head)}
        generator = torch.Generator().manual_seed(int(seed))
        d = len(self.domains)
        self.layers = nn.ModuleList(
            SplineCoupling(self.domains, mask, self.context_dim, hidden, n_hidden_layers, n_bins, temperature_head)
            for mask in _masks(d, n_layers, generator)
        )
        circular = torch.tensor([dom.is_circular for dom in self.domains])
        shifts = (torch.rand(n_layers, d, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.pi
        self.register_buffer("phase_shifts", torch.where(circular, shifts, torch.zeros_like(shifts)))
        self.register_buffer("_circular", circular, persistent=False)
        self.register_buffer("_low", torch.tensor([dom.low for dom in self.domains], dtype=torch.float64))
        self.register_buffer("_high", torch.tensor([dom.high for dom in self.domains], dtype=torch.float64))
        self.scaling = ThermalScaling(self.domains) if thermal_scaling else None

    def reset_context_weights(self) -> None:
        """Zero every coupling's weights on the context (see :meth:`SplineCoupling.reset_context_weights`)."""
        for layer in self.layers:
            layer.reset_context_weights()

    def temperature_gradient_masks(self) -> list[tuple[nn.Parameter, Tensor]]:
        """The parameters that act only away from T0, each with a 0/1 mask ``[same shape]`` of the entries that do:
        the conditioners' input weights on the context (multiplied by ``log(T / T0) = 0`` at T0), the temperature
        heads and the thermal scaling layer (both zero or the identity at T0). Training only these entries leaves
        ``q(x | T0)`` exactly as it is."""
        masks = []
        for layer in self.layers:
            weight = layer.conditioner[0].weight
            mask = torch.zeros_like(weight)
            mask[:, -self.context_dim:] = 1.0
            masks.append((weight, mask))
            if layer.temperature_head is not None:
                masks.extend((p, torch.ones_like(p)) for p in layer.temperature_head.parameters())
        if self.scaling is not None:
            masks.extend((p, torch.ones_like(p)) for p in self.scaling.parameters())
        return masks

    @property
    def dim(self) -> int:
        """Number of features ``d``."""
        return len(self.domains)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (weights come from the state dict)."""
        return {"domains": [asdict(d) for d in self.domains], "context_dim": self.context_dim, **self._settings}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConditionalSplineFlow:
        return cls(**config)

    def _context(self, context: Tensor, n: int) -> Tensor:
        if context.dim() == 1 and self.context_dim == 1:
            context = context.unsqueeze(-1)
        if context.dim() != 2 or context.shape[1] != self.context_dim or context.shape[0] not in (1, n):
            raise InputError(f"context must have shape [{n}, {self.context_dim}] (or [1, {self.context_dim}]), "
                             f"got {list(context.shape)}")
        return context.expand(n, self.context_dim)

    def _rotate(self, z: Tensor, layer: int, sign: float) -> Tensor:
        shifted = _wrap(z + sign * self.phase_shifts[layer].to(z.dtype))
        return torch.where(self._circular, shifted, z)

    def base_log_prob(self, u: Tensor) -> Tensor:
        """Log density ``[n]`` of the uniform base distribution (constant on the product of domains)."""
        return torch.full_like(u[:, 0], -float(torch.log(self._high - self._low).sum()))

    def transform(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Base point ``u [n, d]`` to feature ``z [n, d]``; returns ``(z, log|dz/du| [n])``."""
        context = self._context(context, u.shape[0]).to(u.dtype)
        z, logdet = u, torch.zeros_like(u[:, 0])
        for index, layer in enumerate(self.layers):
            z, ld = layer(z, context)
            z = self._rotate(z, index, 1.0)
            logdet = logdet + ld
        if self.scaling is not None:
            z, ld = self.scaling(z, context)
            logdet = logdet + ld
        return z, logdet

    def inverse_transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature ``z [n, d]`` to base point ``u [n, d]``; returns ``(u, log|du/dz| [n])``."""
        self._check(z)
        context = self._context(context, z.shape[0]).to(z.dtype)
        u, logdet = z, torch.zeros_like(z[:, 0])
        if self.scaling is not None:
            u, logdet = self.scaling.inverse(u, context)
        for index in reversed(range(len(self.layers))):
            u = self._rotate(u, index, -1.0)
            u, ld = self.layers[index].inverse(u, context)
            logdet = logdet + ld
        return u, logdet

    def _check(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise InputError(f"features must have shape [n, {self.dim}], got {list(z.shape)}")

    def log_prob(self, z: Tensor, context: Tensor) -> Tensor:
        """``log q(z | context)`` ``[n]``; z: ``[n, d]``, context: ``[n, c]``."""
        u, logdet = self.inverse_transform(z, context)
        return self.base_log_prob(u) + logdet

    def draw_base(
        self, n: int, *, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` points ``[n, d]`` of the uniform base distribution on the product of domains."""
        source = device if generator is None else generator.device
        uniform = torch.rand(n, self.dim, generator=generator, dtype=dtype, device=source).to(device)
        low, high = self._low.to(dtype=dtype, device=device), self._high.to(dtype=dtype, device=device)
        return low + (high - low) * uniform

    @property
    def base_width(self) -> Tensor:
        """Length ``[d]`` of each base domain (2π for dihedrals, the interval's width otherwise), float64."""
        return self._high - self._low

    def fold_into_base(self, v: Tensor) -> Tensor:
        """Points ``v [n, d]`` moved back onto the base domains: circular coordinates wrap, interval coordinates
        reflect at their ends. A symmetric random-walk step followed by this fold is again a symmetric proposal,
        so the uniform base density stays invariant under it (used by :mod:`trade_md.annealing`)."""
        low, width = self._low.to(v.dtype), (self._high - self._low).to(v.dtype)
        wrapped = low + torch.remainder(v - low, width)
        bounced = torch.remainder(v - low, 2.0 * width)
        reflected = low + torch.where(bounced > width, 2.0 * width - bounced, bounced)
        return torch.where(self._circular, wrapped, reflected)

    def from_base(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Base points ``u [n, d]`` to ``(z [n, d], log q(z | context) [n])``."""
        z, logdet = self.transform(u, context)
        return z, self.base_log_prob(u) - logdet

    def sample(self, context: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One sample per context row: ``(z [n, d], log q(z | context) [n])``; dtype/device of the context."""
        if context.dim() == 1 and self.context_dim == 1:
            context = context.unsqueeze(-1)
        u = self.draw_base(context.shape[0], dtype=context.dtype, device=context.device, generator=generator)
        return self.from_base(u, context)


@runtime_checkable
class CoordinateTransform(Protocol):
    """Physical coordinates ``x`` <-> flow features ``z [n, d]`` in ``domains``.

    ``forward(x) -> (z, log|det dz/dx| [n])``, ``inverse(z) -> (x, log|det dx/dz| [n])``; ``n_dof`` is ``d``;
    ``config()`` returns a JSON-able dict with a ``"type"`` key that :meth:`Generator.from_config` understands.
    """

    domains: list[Domain]

    @property
    def n_dof(self) -> int: ...

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]: ...

    def config(self) -> dict[str, Any]: ...


class BoxCoordinates(nn.Module):
    """Toy coordinates: ``x [n, d]`` in the box ``[low, high]`` (per dim); ``z = x``, interval domains.

    low, high: floats (with ``dim``) or sequences of length ``d``.
    """

    def __init__(self, low: float | Sequence[float], high: float | Sequence[float], dim: int | None = None) -> None:
        super().__init__()
        lows = [float(v) for v in np.atleast_1d(np.asarray(low, dtype=np.float64))]
        highs = [float(v) for v in np.atleast_1d(np.asarray(high, dtype=np.float64))]
        size = max(len(lows), len(highs), dim or 1)
        lows, highs = (lows * size if len(lows) == 1 else lows), (highs * size if len(highs) == 1 else highs)
        if len(lows) != len(highs) or (dim is not None and len(lows) != dim):
            raise InputError(f"box bounds disagree in length: low {lows}, high {highs}, dim {dim}")
        self.domains = [Domain.interval(a, b) for a, b in zip(lows, highs)]

    @property
    def n_dof(self) -> int:
        return len(self.domains)

    def config(self) -> dict[str, Any]:
        return {"type": "box", "low": [d.low for d in self.domains], "high": [d.high for d in self.domains]}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [n, d]`` -> ``(z = x, 0 [n])``."""
        if x.dim() != 2 or x.shape[1] != self.n_dof:
            raise InputError(f"box coordinates need x of shape [n, {self.n_dof}], got {list(x.shape)}")
        return x, torch.zeros_like(x[:, 0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [n, d]`` -> ``(x = z, 0 [n])``."""
        return z, torch.zeros_like(z[:, 0])


def _coordinates_from_config(config: dict[str, Any]) -> nn.Module:
    kind = config.get("type")
    if kind == "box":
        return BoxCoordinates(config["low"], config["high"])
    if kind == "internal":
        from trade_md.ic import InternalCoordinates

        return InternalCoordinates.from_config(config)
    raise InputError(f"unknown coordinate transform type {kind!r} in the model config; expected 'box' or "
                     "'internal' (was the checkpoint written by another version of trade-md?)")


ADDABLE_FLOW_PARTS: dict[str, str] = {"thermal_scaling": ".scaling.", "temperature_head": ".temperature_head."}
"""Flow settings that may be switched on for a model trained without them (they act only away from T0), with the
name fragment of their weights."""


class Generator(nn.Module):
    """The temperature-conditioned Boltzmann generator ``q(x | T)``: coordinates + flow, context ``log(T / T0)``.

    coordinates: a :class:`CoordinateTransform` (``BoxCoordinates`` for toys, ``trade_md.ic.InternalCoordinates``
    for molecules); flow: a :class:`ConditionalSplineFlow` over its domains with ``context_dim == 1``;
    reference_temperature: ``T0`` in K. Densities are in the physical coordinates ``x`` (nm for molecules).
    """

    def __init__(self, coordinates: nn.Module, flow: ConditionalSplineFlow, reference_temperature: float) -> None:
        super().__init__()
        if list(coordinates.domains) != list(flow.domains):
            raise InputError("the flow's domains differ from the coordinate transform's domains; build the flow "
                             "with ConditionalSplineFlow(coordinates.domains, ...)")
        if flow.context_dim != 1:
            raise InputError(f"a Generator's flow needs context_dim=1 (log T/T0), got {flow.context_dim}")
        self.coordinates = coordinates
        self.flow = flow
        self.reference_temperature = to_kelvin(reference_temperature)

    @property
    def n_dof(self) -> int:
        """Degrees of freedom the density covers (``3N - 6`` minus constrained bonds for molecules, ``d`` for toys)."""
        return int(self.coordinates.n_dof)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    def context(self, temperature: float | Tensor, n: int) -> Tensor:
        """``log(T / T0)`` as ``[n, 1]`` in the model's dtype; temperature: float K or tensor ``[]``/``[n]`` K.

        Tensors keep their autograd graph, so ``d/dT`` (or ``d/dlog T``) flows through.
        """
        if isinstance(temperature, Tensor):
            t = temperature.to(dtype=self.dtype, device=self.device)
            if t.dim() == 0 or t.numel() == 1:
                t = t.reshape(1).expand(n)
            if t.shape != (n,):
                raise InputError(f"temperature must be a float or a tensor of shape [] or [{n}], got {list(t.shape)}")
            if not bool(torch.all(t > 0)):
                raise InputError("temperatures must be > 0 K")
            return torch.log(t / self.reference_temperature).unsqueeze(-1)
        value = math.log(to_kelvin(temperature) / self.reference_temperature)
        return torch.full((n, 1), value, dtype=self.dtype, device=self.device)

    def log_prob(self, x: Tensor, temperature: float | Tensor) -> Tensor:
        """``log q(x | T)`` ``[n]``; x: ``[n, atoms, 3]`` nm or ``[n, d]``; temperature: float K or ``[n]`` K."""
        x = x.to(dtype=self.dtype, device=self.device)
        z, logdet = self.coordinates.forward(x)
        return self.flow.log_prob(z, self.context(temperature, z.shape[0])) + logdet

    def sample(
        self, n: int, temperature: float | Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` samples at temperature T (float K or ``[n]`` K): ``(x, log q(x | T) [n])``, consistent with log_prob."""
        if n < 1:
            raise InputError(f"number of samples must be >= 1, got {n}")
        z, log_q = self.flow.sample(self.context(temperature, n), generator=generator)
        x, logdet = self.coordinates.inverse(z)
        return x, log_q - logdet

    def draw_base(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points ``[n, d]`` of the flow's uniform base distribution (model dtype and device)."""
        return self.flow.draw_base(n, dtype=self.dtype, device=self.device, generator=generator)

    def from_base(self, u: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
        """Base points ``u [n, d]`` to samples at T: ``(x, log q(x | T) [n])``, as :meth:`sample` maps its draws."""
        u = u.to(dtype=self.dtype, device=self.device)
        z, log_q = self.flow.from_base(u, self.context(temperature, u.shape[0]))
        x, logdet = self.coordinates.inverse(z)
        return x, log_q - logdet

    def in_support(self, x: Tensor) -> Tensor:
        """``bool [n]``: all features of ``x`` inside their domains (outside, log_prob is that of the nearest edge)."""
        z, _ = self.coordinates.forward(x.to(dtype=self.dtype, device=self.device))
        low = self.flow._low.to(z.dtype)
        high = self.flow._high.to(z.dtype)
        inside = (z >= low) & (z <= high)
        return torch.all(inside | self.flow._circular, dim=-1)

    def initialise_thermal_scaling(self, x: Tensor) -> None:
        """Set the flow's :class:`ThermalScaling` centres and exponents from frames ``x`` (nm, at T0)."""
        if self.flow.scaling is None:
            raise InputError("this flow has no thermal scaling layer; build it with thermal_scaling=True")
        with torch.no_grad():
            z, _ = self.coordinates.forward(torch.as_tensor(x).to(dtype=self.dtype, device=self.device))
        self.flow.scaling.initialise(z)

    def chirality_flags(self, x: Tensor) -> Tensor:
        """``bool [n]``, True where a chiral centre is wrong-handed; all False for coordinates without centres."""
        flags = getattr(self.coordinates, "chirality_flags", None)
        if flags is None:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return flags(x)

    def config(self) -> dict[str, Any]:
        """JSON-able description; ``Generator.from_config(cfg)`` + ``load_state_dict`` rebuild the model."""
        return {
            "coordinates": self.coordinates.config(),
            "flow": self.flow.config(),
            "reference_temperature": self.reference_temperature,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], state_dict: dict[str, Tensor] | None = None, adding: Sequence[str] = ()
    ) -> Generator:
        """Rebuild from :meth:`config` (weights random) and, if given, load ``state_dict`` (dtype follows it).

        adding: flow parts (:data:`ADDABLE_FLOW_PARTS`) to switch on for weights trained without them; they act
        only away from T0, so the model at T0 is the saved one. They start at the identity (zero heads; the
        scaling layer still needs :meth:`initialise_thermal_scaling`).
        """
        unknown = set(adding) - set(ADDABLE_FLOW_PARTS)
        if unknown:
            raise InputError(f"only {', '.join(ADDABLE_FLOW_PARTS)} can be added to a trained flow, not "
                             f"{', '.join(sorted(unknown))}")
        coordinates = _coordinates_from_config(config["coordinates"])
        flow = ConditionalSplineFlow.from_config({**config["flow"], **{part: True for part in adding}})
        model = cls(coordinates, flow, config["reference_temperature"])
        if state_dict is not None:
            dtype = next(v.dtype for k, v in state_dict.items() if k.startswith("flow.layers") and "conditioner" in k)
            model.to(dtype)
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
            if unexpected or any(not any(ADDABLE_FLOW_PARTS[part] in key for part in adding) for key in missing):
                raise InputError(f"these weights do not fit the flow (missing {missing}, unexpected {unexpected}); "
                                 "start from a checkpoint that trade-md wrote for these flow settings")
        return model


def molecule_generator(
    system: Any, training_positions: Any, reference_temperature: float, **kwargs: Any
) -> Generator:
    """A molecular :class:`Generator` (internal coordinates + flow); see :func:`trade_md.ic.molecule_generator`."""
    from trade_md.ic import molecule_generator as build

    return build(system, training_positions, reference_temperature, **kwargs)

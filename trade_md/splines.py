"""Rational-quadratic splines on one-dimensional feature domains (circles and intervals).

Features live in a product of one-dimensional domains (:class:`Domain`): circles ``[-pi, pi)`` (dihedrals) or
intervals ``[low, high]`` (normalised bonds and angles, toy coordinates). :func:`rational_quadratic_spline` is the
elementwise monotonic bijection of such a domain that the coupling layers of :mod:`trade_md.flows` apply; it follows
Durkan et al., "Neural Spline Flows" (2019). On an interval the spline maps ``[low, high]`` onto itself; on the
circle the derivative at ``-pi`` and ``pi`` is shared, so the map is a diffeomorphism of the circle. All raw
parameters zero give the identity. Everything is differentiable twice.

>>> x = torch.linspace(-1.0, 1.0, 5)
>>> y, log_det = rational_quadratic_spline(x, torch.zeros(5, 4), torch.zeros(5, 4), torch.zeros(5, 5), -1.0, 1.0)
>>> torch.allclose(y, x), torch.allclose(log_det, torch.zeros(5), atol=1e-6)
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional

from trade_md.errors import InputError

__all__ = ["MIN_BIN_WIDTH", "MIN_DERIVATIVE", "Domain", "rational_quadratic_spline", "wrap_angles"]

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


def wrap_angles(angle: Tensor) -> Tensor:
    """Angles (tensor, radians) mapped onto ``[-pi, pi)``."""
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

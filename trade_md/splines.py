"""Rational-quadratic splines on one-dimensional feature domains (circles and intervals).

Features live in a product of one-dimensional domains (:class:`Domain`): circles ``[-pi, pi)`` (dihedrals) or
intervals ``[low, high]`` (normalised bonds and angles, toy coordinates). :func:`rational_quadratic_spline` is the
elementwise monotonic bijection of such a domain that the coupling layers of :mod:`trade_md.flows` apply; it follows
Durkan et al., "Neural Spline Flows" (2019). On an interval the spline maps ``[low, high]`` onto itself; on the
circle the derivative at ``-pi`` and ``pi`` is shared, so the map is a diffeomorphism of the circle. All raw
parameters zero give the identity. Everything is differentiable twice. The coupling layers call
:func:`spline_columns`, the same map with bins in the middle and samples last, whose per-bin part (softmax knots,
running sums, bin search) has a hand-written gradient that touches the bin tables a few times instead of autograd's
twenty (and is itself differentiable, for TRADE's derivative with respect to the temperature).

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
from torch.autograd import forward_ad
from torch.nn import functional

from trade_md.errors import InputError

__all__ = ["MIN_BIN_WIDTH", "MIN_DERIVATIVE", "Domain", "rational_quadratic_spline", "spline_columns", "wrap_angles"]

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


_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _sum_bins(weights: Tensor) -> Tensor:
    """``weights [a, 2, K, n]`` summed over dim 2 in sequence (bin 0 first), kept as ``[a, 2, 1, n]``: the order in
    which ``sum`` adds a contiguous row of bins, so that the knots do not depend on the layout or the batch size."""
    bins = weights.unbind(2)
    total = bins[0]
    for part in bins[1:]:
        total = total + part
    return total.unsqueeze(2)


def _softmax_sizes(raw: Tensor, k: int, *, graph: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``(weights [a, 2, K, n], total [a, 2, 1, n], cumulative [a, 2, K, n])``: the softmax of the raw widths and
    heights over bins (with a floor of :data:`MIN_BIN_WIDTH`) and the running sums of the bin sizes. Without
    ``graph`` the sizes are computed in place (the same operations on the same numbers, fewer tables in memory)."""
    sizes_raw = raw[:, : 2 * k].unflatten(1, (2, k))                      # [a, 2 (widths, heights), K, n]
    peak = sizes_raw.detach().amax(dim=2, keepdim=True)
    if graph:
        weights = torch.exp(sizes_raw - peak)
        total = _sum_bins(weights)
        sizes = MIN_BIN_WIDTH + (1.0 - MIN_BIN_WIDTH * k) * weights / total
    else:
        weights = torch.sub(sizes_raw, peak).exp_()
        total = _sum_bins(weights)
        sizes = torch.mul(weights, 1.0 - MIN_BIN_WIDTH * k).div_(total).add_(MIN_BIN_WIDTH)
    return weights, total, torch.cumsum(sizes, dim=2)                    # cumsum accumulates in double, as ever


def _pick(cumulative: Tensor, pair: Tensor) -> Tensor:
    """``cumulative [a, 2, K, n]`` at the bins ``pair [a, 2, n]`` (for both sides): ``[a, 2, 2, n]``."""
    a, _, _, n = cumulative.shape
    return torch.gather(cumulative, 2, pair.unsqueeze(1).expand(a, 2, 2, n))


def _bin_tables(
    raw: Tensor, values: Tensor, low: Tensor, length: Tensor, circular: Tensor, k: int, inverse: bool
) -> tuple[Tensor, ...]:
    """The per-bin part of the spline: knot tables from ``raw [a, 3K + 1, n]``, the bin of each ``values [a, n]``
    and what the bin needs. Returns ``picked [a, 2 (x, y), 2 (k, k + 1), n]`` (cumulative bin sizes at the bin's
    two knots: ``low + length * picked`` are the knots, except at the domain's ends), ``raw derivatives [a, 2, n]``
    at the bin's two knots, ``index [a, n]``, then for the gradient ``above [a, K - 1, n]`` (value at or above
    each inner knot), ``pair`` and ``derivative_pair`` (gather indices ``[a, 2, n]``), ``weights`` and ``total``."""
    weights, total, cumulative = _softmax_sizes(raw, k, graph=False)     # never recorded: see spline_columns
    # bin search on the inner knots of the searched side: x forward, y inverse
    inner = torch.mul(cumulative[:, 1 if inverse else 0, : k - 1], length.unsqueeze(1)).add_(low.unsqueeze(1))
    above = values.unsqueeze(1) >= inner                                  # [a, K - 1, n] (bin search)
    index = above.sum(dim=1)                                              # [a, n] (bin search)
    pair = torch.stack([(index - 1).clamp(min=0), index], dim=1)          # [a, 2, n]
    picked = _pick(cumulative, pair)
    following = index + 1                                                 # on a circle the last knot is the first
    following = torch.where(circular & (following == k), torch.zeros_like(following), following)
    derivative_pair = torch.stack([index, following], dim=1)
    raw_derivatives = torch.gather(raw[:, 2 * k:], 1, derivative_pair)
    return picked, raw_derivatives, index, above, pair, derivative_pair, weights, total


def _bin_tables_gradient(
    raw: Tensor, weights: Tensor, total: Tensor, picked: Tensor, above: Tensor, index: Tensor,
    derivative_pair: Tensor, grad_picked: Tensor, grad_derivatives: Tensor, k: int,
) -> Tensor:
    """The gradient ``[a, 3K + 1, n]`` with respect to ``raw`` of :func:`_bin_tables`' ``picked`` and ``raw
    derivatives``, given theirs.

    Only two running sums per element carry a gradient (``g0`` at bin ``index - 1``, ``g1`` at ``index``), so the
    gradient of bin size ``j`` is ``g0 + g1`` below the bin, ``g1`` in it and 0 above: three values per element,
    chosen by the bin search's own comparisons. The softmax's correction ``Σ_j grad_j w_j / W`` is a sum over the
    bins up to ``index``, read off ``picked``: ``Σ_{j <= m} w_j / W = (cumulative_m - (m + 1) floor) / (1 - K floor)``.
    """
    scale = 1.0 - MIN_BIN_WIDTH * k
    g0, g1 = grad_picked.unbind(2)                                        # [a, 2, n] each
    c0, c1 = picked.unbind(2)
    count = index.unsqueeze(1).to(picked.dtype)                           # bins below the element's bin
    correction = (g1 * (c1 - (count + 1.0) * MIN_BIN_WIDTH) + g0 * (c0 - count * MIN_BIN_WIDTH)) / scale
    a, _, n = g0.shape
    above = above.to(picked.dtype)
    below = torch.cat([above, above.new_zeros(a, 1, n)], dim=1).unsqueeze(1)     # 1 where bin j < the element's
    upto = torch.cat([above.new_ones(a, 1, n), above], dim=1).unsqueeze(1)       # 1 where bin j <= the element's
    grad_sizes = torch.addcmul(torch.addcmul(-correction.unsqueeze(2), upto, g1.unsqueeze(2)), below, g0.unsqueeze(2))
    grad_sizes_raw = weights * (scale / total) * grad_sizes
    grad_raw_derivatives = torch.zeros_like(raw[:, 2 * k:]).scatter_add(1, derivative_pair, grad_derivatives)
    return torch.cat([grad_sizes_raw.flatten(1, 2), grad_raw_derivatives], dim=1)


class _BinTables(torch.autograd.Function):
    """:func:`_bin_tables` with its gradient written out (a few passes over the tables instead of autograd's
    twenty). Differentiable twice: under ``create_graph`` the softmax is recomputed from ``raw`` with a graph."""

    @staticmethod
    def forward(ctx, raw, values, low, length, circular, k, inverse):  # noqa: ANN001, ANN205 - autograd API
        picked, raw_derivatives, index, above, pair, derivative_pair, weights, total = _bin_tables(
            raw, values, low, length, circular, k, inverse)
        ctx.save_for_backward(raw, weights, total, picked, above, index, pair, derivative_pair)
        ctx.k = k
        ctx.mark_non_differentiable(index)
        return picked, raw_derivatives, index

    @staticmethod
    def backward(ctx, grad_picked, grad_derivatives, _grad_index):  # noqa: ANN001, ANN205 - autograd API
        raw, weights, total, picked, above, index, pair, derivative_pair = ctx.saved_tensors
        k = ctx.k
        if torch.is_grad_enabled():  # create_graph: the gradient must itself be differentiable in raw
            weights, total, cumulative = _softmax_sizes(raw, k)
            picked = _pick(cumulative, pair)
        grad = _bin_tables_gradient(raw, weights, total, picked, above, index, derivative_pair, grad_picked,
                                    grad_derivatives, k)
        return grad, None, None, None, None, None, None


class _BinTablesWithTangent(_BinTables):
    """:class:`_BinTables` with forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``), used only inside
    a dual level: torch.compile cannot trace a Function that defines ``jvp``."""

    @staticmethod
    def forward(ctx, raw, values, low, length, circular, k, inverse):  # noqa: ANN001, ANN205 - autograd API
        picked, raw_derivatives, index, above, pair, derivative_pair, weights, total = _bin_tables(
            raw, values, low, length, circular, k, inverse)
        ctx.save_for_backward(raw, weights, total, picked, above, index, pair, derivative_pair)
        ctx.save_for_forward(raw, weights, total, pair, derivative_pair)
        ctx.k = k
        ctx.mark_non_differentiable(index)
        return picked, raw_derivatives, index

    @staticmethod
    def jvp(ctx, raw_tangent, *_):  # noqa: ANN001, ANN205 - autograd API
        raw, weights, total, pair, derivative_pair = ctx.saved_tensors
        k = ctx.k
        if torch.is_grad_enabled() and raw.requires_grad:  # the tangent must be differentiable in raw
            weights, total, _ = _softmax_sizes(raw, k)
        weights_tangent = weights * raw_tangent[:, : 2 * k].unflatten(1, (2, k))
        share = weights * _sum_bins(weights_tangent) / total
        sizes_tangent = (1.0 - MIN_BIN_WIDTH * k) * (weights_tangent - share) / total
        return (_pick(torch.cumsum(sizes_tangent, dim=2), pair),
                torch.gather(raw_tangent[:, 2 * k:], 1, derivative_pair), None)


def spline_columns(
    inputs: Tensor, raw: Tensor, low: Tensor, high: Tensor, circular: Tensor, n_bins: int, *, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic_spline` in the layout of the coupling layers: bins in the middle, samples last.

    inputs: ``[a, n]``; raw: ``[a, 3K + 1, n]`` (``K`` widths, ``K`` heights, ``K + 1`` derivatives per row, as the
    conditioner's output rows); low, high, circular: ``[a, 1]`` or ``[a, n]``. Returns ``(outputs [a, n],
    log|d out / d in| [a, n])``. The arithmetic of every element is that of the reference formulation (softmax
    knots with a floor, a bin search on detached knots, the rational-quadratic map; sums over bins in bin order,
    cumulative sums accumulated in double); softplus is taken only of the two knot derivatives of each element's
    bin. With the bin dimension in the middle every operation over bins runs along contiguous rows of samples, and
    the per-bin part has a hand-written gradient (:class:`_BinTables`).
    """
    k = n_bins
    length = high - low
    values = torch.minimum(torch.maximum(inputs, low), high)
    if torch.is_grad_enabled() and raw.requires_grad:
        tables = _BinTablesWithTangent if forward_ad._current_level >= 0 else _BinTables   # inside a dual level
        picked, raw_derivatives, index = tables.apply(raw, values.detach(), low, length, circular, k, inverse)
    else:  # nothing to differentiate in the tables (the knots' dependence on low and length is added below)
        with torch.no_grad():
            picked, raw_derivatives, index = _bin_tables(raw, values, low, length, circular, k, inverse)[:3]

    # the knots on both sides of the bin: low + length * cumulative, exactly low / high at the ends
    knots = low[:, None, None, :] + length[:, None, None, :] * picked     # [a, 2 (x, y), 2 (k, k + 1), n]
    at_edge = torch.stack([index == 0, index == k - 1], dim=1).unsqueeze(1)
    edges = torch.stack([low, high], dim=1).unsqueeze(1)
    knots = torch.where(at_edge, edges, knots)
    x_k, x_k1, y_k, y_k1 = knots.flatten(1, 2).unbind(1)
    derivatives = MIN_DERIVATIVE + functional.softplus(raw_derivatives + _DERIVATIVE_SHIFT)
    d_k, d_k1 = derivatives.unbind(1)

    width = x_k1 - x_k
    height = y_k1 - y_k
    slope = height / width
    curvature = d_k1 + d_k - 2.0 * slope

    if inverse:
        shifted = values - y_k
        a_coefficient = height * (slope - d_k) + shifted * curvature
        b = height * d_k - shifted * curvature
        c = -slope * shifted
        discriminant = (b * b - 4.0 * a_coefficient * c).clamp(min=0.0)
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
    domain are clamped onto its edge. (The coupling layers call :func:`spline_columns`, the same map in their
    layout.)
    """
    shape = inputs.shape
    k = raw_widths.shape[-1]
    flat = inputs.reshape(1, -1)
    low = torch.as_tensor(low, dtype=inputs.dtype, device=inputs.device).expand(shape).reshape(1, -1)
    high = torch.as_tensor(high, dtype=inputs.dtype, device=inputs.device).expand(shape).reshape(1, -1)
    circular = torch.as_tensor(circular, device=inputs.device).expand(shape).reshape(1, -1)
    raw = torch.cat([raw_widths, raw_heights, raw_derivatives], dim=-1).reshape(-1, 3 * k + 1).t().unsqueeze(0)
    outputs, log_derivative = spline_columns(flat, raw, low, high, circular, k, inverse=inverse)
    return outputs.reshape(shape), log_derivative.reshape(shape)

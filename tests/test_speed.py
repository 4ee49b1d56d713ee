"""The fast paths of issue 28 compute what the formulations they replaced computed.

Each test holds a frozen copy of the code of commit 29047b0 (the reference: autograd through every step) and checks
the current code against it: the rational-quadratic spline in the coupling layers' layout with its hand-written
gradient of the per-bin tables (values, first and second derivatives), the flow's chunked evaluation of large
batches, the thermal scaling layer on feature rows, and the internal-coordinate placement by generations. The
recipe-size model as a whole is checked against numbers the old code wrote (tests/test_checkpoint_compat.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

import trade_md.flows as flows
from trade_md.flows import ConditionalSplineFlow
from trade_md.ic import InternalCoordinates, _place
from trade_md.splines import (MIN_BIN_WIDTH, MIN_DERIVATIVE, Domain, rational_quadratic_spline, spline_columns,
                              wrap_angles)
from trade_md.systems import load_system
from trade_md.thermal_scaling import ThermalScaling, _fold, _unfold

# ---------------------------------------------------------------- the reference (commit 29047b0)


def _reference_knots(raw, low, high):
    n_bins = raw.shape[-1]
    weights = torch.exp(raw - raw.detach().amax(dim=-1, keepdim=True))
    sizes = MIN_BIN_WIDTH + (1.0 - MIN_BIN_WIDTH * n_bins) * weights / weights.sum(dim=-1, keepdim=True)
    cumulative = torch.cumsum(sizes, dim=-1)
    low, high = low.unsqueeze(-1), high.unsqueeze(-1)
    inner = low + (high - low) * cumulative[..., :-1]
    return torch.cat([low.expand_as(raw[..., :1]), inner, high.expand_as(raw[..., :1])], dim=-1)


def _reference_spline(inputs, raw_widths, raw_heights, raw_derivatives, low, high, circular, inverse=False):
    low = torch.as_tensor(low, dtype=inputs.dtype).expand_as(inputs)
    high = torch.as_tensor(high, dtype=inputs.dtype).expand_as(inputs)
    circular = torch.as_tensor(circular).expand_as(inputs)
    x_knots, y_knots = _reference_knots(raw_widths, low, high), _reference_knots(raw_heights, low, high)
    derivatives = MIN_DERIVATIVE + functional.softplus(raw_derivatives + math.log(math.expm1(1.0 - MIN_DERIVATIVE)))
    last = torch.where(circular, derivatives[..., 0], derivatives[..., -1])
    derivatives = torch.cat([derivatives[..., :-1], last.unsqueeze(-1)], dim=-1)
    values = torch.minimum(torch.maximum(inputs, low), high)
    search = y_knots if inverse else x_knots
    index = (values.unsqueeze(-1) >= search[..., 1:-1].detach()).sum(dim=-1, keepdim=True)

    def pick(table, offset=0):
        return torch.gather(table, -1, index + offset).squeeze(-1)

    x_k, x_k1, y_k, y_k1 = pick(x_knots), pick(x_knots, 1), pick(y_knots), pick(y_knots, 1)
    d_k, d_k1 = pick(derivatives), pick(derivatives, 1)
    width, height = x_k1 - x_k, y_k1 - y_k
    slope = height / width
    curvature = d_k1 + d_k - 2.0 * slope
    if inverse:
        shifted = values - y_k
        a = height * (slope - d_k) + shifted * curvature
        b = height * d_k - shifted * curvature
        c = -slope * shifted
        xi = (2.0 * c) / (-b - torch.sqrt((b * b - 4.0 * a * c).clamp(min=0.0)))
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


def _reference_scaling(layer: ThermalScaling, z, context, inverse):
    log_s = 0.5 * layer.exponent.to(context.dtype) * context
    s = torch.exp(log_s)
    if inverse:
        s, log_s = 1.0 / s, -log_s
    centre = layer.centre.to(z.dtype)
    low, length = layer._low.to(z.dtype), layer._length.to(z.dtype)
    v = (2.0 * (z - low) / length - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    w = _unfold(v)
    v_new, log_fold_new = _fold(centre + s * (w - centre))
    _, log_fold = _fold(w)
    interval = low + 0.5 * length * (v_new + 1.0)
    h = 0.5 * wrap_angles(z - centre)
    angle = wrap_angles(centre + 2.0 * torch.atan2(s * torch.sin(h), torch.cos(h)))
    angle_log = log_s - torch.log(torch.cos(h) ** 2 + (s * torch.sin(h)) ** 2)
    out = torch.where(layer._circular, angle, interval)
    return out, torch.where(layer._circular, angle_log, log_s + log_fold_new - log_fold).sum(dim=-1)


def _reference_cartesian(transform: InternalCoordinates, bonds, angles, dihedrals):
    rows = transform.zmatrix.rows
    zeros = torch.zeros_like(bonds[:, 0])
    placed = [torch.stack([zeros, zeros, zeros], dim=-1), torch.stack([bonds[:, 0], zeros, zeros], dim=-1)]
    b2, a2 = bonds[:, 1], angles[:, 0]
    if rows[2][1] == rows[1][0]:
        placed.append(torch.stack([bonds[:, 0] - b2 * torch.cos(a2), b2 * torch.sin(a2), zeros], dim=-1))
    else:
        placed.append(torch.stack([b2 * torch.cos(a2), b2 * torch.sin(a2), zeros], dim=-1))
    rank = transform._rank
    for m in range(3, len(rows)):
        _, j, k, l = rows[m]
        placed.append(_place(placed[rank[j]], placed[rank[k]], placed[rank[l]],
                             bonds[:, m - 1], angles[:, m - 2], dihedrals[:, m - 3]))
    return torch.stack(placed, dim=1)[:, transform.inverse_order]


# ---------------------------------------------------------------- the spline


def _spline_case(dtype: torch.dtype, n: int = 300, k: int = 12, bins: int = 8, scale: float = 2.0, ends: bool = True):
    generator = torch.Generator().manual_seed(28)
    circular = torch.tensor([i % 2 == 0 for i in range(k)])
    low = torch.where(circular, -math.pi, -1.0).to(dtype)
    high = torch.where(circular, math.pi, 1.5).to(dtype)
    x = low + (high - low) * torch.rand(n, k, generator=generator, dtype=torch.float64).to(dtype)
    if ends:
        x[0], x[1] = low, high                                    # the domain's ends
    raw = scale * torch.randn(n, k, 3 * bins + 1, generator=generator, dtype=torch.float64).to(dtype)
    return x, raw, low, high, circular, bins


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spline_matches_the_reference_values_and_gradients(dtype: torch.dtype, inverse: bool) -> None:
    x, raw, low, high, circular, bins = _spline_case(dtype)
    x, raw = x.requires_grad_(), raw.requires_grad_()
    parts = (raw[..., :bins], raw[..., bins:2 * bins], raw[..., 2 * bins:])
    got = rational_quadratic_spline(x, *parts, low, high, circular, inverse=inverse)
    expected = _reference_spline(x, *parts, low, high, circular, inverse=inverse)
    columns = spline_columns(x.t(), raw.permute(1, 2, 0), low[:, None], high[:, None], circular[:, None], bins,
                             inverse=inverse)
    # the same operations on the same numbers, the sum over bins in bin order (torch's own order differs by
    # machine and dtype: float32 rows of 8 on this development CPU are summed in bin order, float64 ones are not)
    atol = 1e-9 if dtype == torch.float64 else 2e-4    # log-derivatives of the steepest bins amplify rounding
    for mine, theirs in zip(got, expected):
        assert torch.allclose(mine, theirs, rtol=0.0, atol=atol)
    for mine, theirs in zip(columns, expected):
        assert torch.allclose(mine.t(), theirs, rtol=0.0, atol=atol)
    weight = torch.cos(expected[0].detach())
    loss = lambda y, ld: (weight * y).sum() + (ld ** 2).sum()      # noqa: E731
    tolerance = 1e-10 if dtype == torch.float64 else 2e-4
    for mine, theirs in zip(torch.autograd.grad(loss(*got), (x, raw)), torch.autograd.grad(loss(*expected), (x, raw))):
        assert float((mine - theirs).abs().max() / theirs.abs().max()) < tolerance


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_second_derivatives_match_the_reference(inverse: bool) -> None:
    """TRADE differentiates the log-det with respect to the context with create_graph: the gradient of the
    tables' hand-written gradient must be that of the reference."""
    x, raw, low, high, circular, bins = _spline_case(torch.float64, n=60)
    x, raw = x.requires_grad_(), raw.requires_grad_()
    parts = (raw[..., :bins], raw[..., bins:2 * bins], raw[..., 2 * bins:])
    direction = torch.cos(raw.detach())
    results = []
    for spline in (rational_quadratic_spline, _reference_spline):
        y, log_derivative = spline(x, *parts, low, high, circular, inverse=inverse)
        (first,) = torch.autograd.grad(log_derivative.sum() + y.sum(), raw, create_graph=True)
        results.append(torch.autograd.grad((first * direction).sum(), (x, raw)))
    for mine, theirs in zip(*results):
        assert float((mine - theirs).abs().max() / theirs.abs().max()) < 1e-10


def test_spline_gradients_pass_gradcheck_twice() -> None:
    x, raw, low, high, circular, bins = _spline_case(torch.float64, n=4, k=4, bins=5, scale=1.0, ends=False)
    for inverse in (False, True):
        def spline(x_t, raw_t, inverse=inverse):
            return spline_columns(x_t, raw_t, low[:, None], high[:, None], circular[:, None], bins, inverse=inverse)
        inputs = (x.t().contiguous().requires_grad_(), raw.permute(1, 2, 0).contiguous().requires_grad_())
        assert torch.autograd.gradcheck(spline, inputs)
        assert torch.autograd.gradgradcheck(spline, inputs)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_spline_forward_mode_derivatives_match_the_reference() -> None:
    """Forward-mode AD (torch.func.jvp, forward_ad) goes through the tables' hand-written tangent, and the tangent's
    own gradient (reverse over forward) is that of the reference."""
    import torch.autograd.forward_ad as fwad

    x, raw, low, high, circular, bins = _spline_case(torch.float64, n=50)
    tangent = torch.sin(raw)
    results = []
    for spline in (rational_quadratic_spline, _reference_spline):
        primal = raw.clone().requires_grad_()
        with fwad.dual_level():
            dual = fwad.make_dual(primal, tangent)
            outputs = spline(x, dual[..., :bins], dual[..., bins:2 * bins], dual[..., 2 * bins:], low, high, circular)
            tangents = [fwad.unpack_dual(value).tangent for value in outputs]
        (gradient,) = torch.autograd.grad(sum((t * t).sum() for t in tangents), primal)
        results.append([t.detach() for t in tangents] + [gradient])
    for mine, theirs in zip(*results):
        assert float((mine - theirs).abs().max() / theirs.abs().max()) < 1e-10


# ---------------------------------------------------------------- the flow and the thermal scaling layer


def test_large_batches_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    domains = [Domain.circular(), Domain.interval(-1.0, 2.0), Domain.circular(), Domain.interval(0.0, 1.0)]
    flow = ConditionalSplineFlow(domains, n_layers=4, hidden=16, thermal_scaling=True).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        context = torch.linspace(-0.5, 0.5, 50, dtype=torch.float64).unsqueeze(1)
        u = flow.draw_base(50, dtype=torch.float64, device=torch.device("cpu"))
        whole = flow.transform(u, context), flow.inverse_transform(u, context)
        monkeypatch.setattr(flows, "CHUNK", 7)
        chunked = flow.transform(u, context), flow.inverse_transform(u, context)
    for a, b in zip(whole, chunked):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("inverse", [False, True])
def test_thermal_scaling_on_rows_matches_the_reference(inverse: bool) -> None:
    domains = [Domain.circular(), Domain.interval(-1.0, 2.0), Domain.circular(), Domain.interval(0.0, 3.0)]
    layer = ThermalScaling(domains).double()
    with torch.no_grad():
        layer.centre.copy_(torch.tensor([0.4, -0.2, -2.5, 0.3]))
        layer.exponent.copy_(torch.tensor([1.0, 0.7, 1.4, 1.0]))
    low = torch.tensor([d.low for d in domains], dtype=torch.float64)
    high = torch.tensor([d.high for d in domains], dtype=torch.float64)
    z = low + (high - low) * torch.rand(200, 4, dtype=torch.float64)
    context = torch.linspace(-0.8, 0.6, 200, dtype=torch.float64).unsqueeze(1)
    expected = _reference_scaling(layer, z, context, inverse)
    got = layer.inverse(z, context) if inverse else layer(z, context)
    assert torch.allclose(got[0], expected[0], rtol=0.0, atol=1e-12)    # equal here; SIMD tails may differ elsewhere
    assert torch.allclose(got[1], expected[1], rtol=0.0, atol=1e-12)


# ---------------------------------------------------------------- internal coordinates


@pytest.mark.parametrize("name", ["alanine-dipeptide", "alanine-tetrapeptide"])
def test_placement_by_generations_equals_atom_by_atom(name: str) -> None:
    system = load_system(name)
    native = torch.as_tensor(system.positions, dtype=torch.float64)
    frames = native + 0.01 * torch.randn(16, *native.shape, generator=torch.Generator().manual_seed(3),
                                         dtype=torch.float64)
    transform = InternalCoordinates.of_system(system, frames)
    bonds, angles, dihedrals = transform.raw(frames)
    assert sum(transform._plan_sizes) == native.shape[0] - 3
    assert len(transform._plan_sizes) < native.shape[0] // 2          # far fewer steps than atoms
    expected = _reference_cartesian(transform, bonds, angles, dihedrals)
    assert torch.allclose(transform.cartesian(bonds, angles, dihedrals), expected, rtol=0.0, atol=1e-13)


def test_compile_is_opt_in_skips_temperature_gradients_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRADE_MD_COMPILE=1 routes a pass through torch.compile; a context with a gradient stays eager (double
    backward); a compiler that fails warns once and leaves the numbers to the eager pass."""
    calls: list[str] = []

    def failing_compile(function, **_):
        calls.append(function.__name__)

        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    flow = ConditionalSplineFlow([Domain.circular(), Domain.interval(0.0, 1.0)], n_layers=2, hidden=8).double()
    u = flow.draw_base(10, dtype=torch.float64, device=torch.device("cpu"))
    context = torch.full((10, 1), 0.3, dtype=torch.float64)
    expected = flow.transform(u, context)
    assert calls == []                                            # off by default
    monkeypatch.setenv(flows.COMPILE_VARIABLE, "1")
    flow.log_prob(u, context.clone().requires_grad_())            # a temperature gradient: never compiled
    assert calls == []
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        got = flow.transform(u, context)
    assert calls == ["_transform"] and all(torch.equal(a, b) for a, b in zip(got, expected))
    flow.transform(u, context)                                    # no second attempt
    assert calls == ["_transform"]

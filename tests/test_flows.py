"""Tests of the flow stack: splines (trade_md.splines), coupling layers and the conditional flow (trade_md.flows),
the thermal scaling layer (trade_md.thermal_scaling) and the Generator (trade_md.generator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from trade_md.errors import InputError
from trade_md.flows import ConditionalSplineFlow
from trade_md.generator import BoxCoordinates, Generator
from trade_md.splines import Domain, rational_quadratic_spline
from trade_md.thermal_scaling import ThermalScaling

MIXED = [Domain.circular(), Domain.interval(-1.0, 2.0), Domain.circular()]


def randomise(module: torch.nn.Module, scale: float = 0.4) -> torch.nn.Module:
    """Perturb every parameter so that no layer is the identity (weights start at zero in the output layers)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return module


def random_flow(domains, dtype=torch.float64, scale: float = 0.4, **kwargs) -> ConditionalSplineFlow:
    settings = {"n_layers": 4, "hidden": 16, "n_hidden_layers": 2, "n_bins": 6, "seed": 3}
    settings.update(kwargs)
    return randomise(ConditionalSplineFlow(domains, **settings), scale).to(dtype)


def uniform_points(domains, n: int, dtype=torch.float64) -> torch.Tensor:
    low = torch.tensor([d.low for d in domains], dtype=dtype)
    high = torch.tensor([d.high for d in domains], dtype=dtype)
    return low + (high - low) * torch.rand(n, len(domains), dtype=dtype)


def circular_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi


# ---------------------------------------------------------------- splines


def bounds(domain: Domain) -> tuple[float, float, bool]:
    return domain.low, domain.high, domain.is_circular


@pytest.mark.parametrize("domain", [Domain.interval(-1.5, 0.5), Domain.circular()])
def test_spline_zero_parameters_is_identity(domain: Domain) -> None:
    x = uniform_points([domain], 50)[:, 0]
    k = 5
    raw_d = torch.zeros(50, k + 1, dtype=torch.float64)
    y, logdet = rational_quadratic_spline(x, torch.zeros(50, k, dtype=torch.float64),
                                          torch.zeros(50, k, dtype=torch.float64), raw_d, *bounds(domain))
    assert torch.allclose(y, x, atol=1e-12)
    assert torch.allclose(logdet, torch.zeros_like(logdet), atol=1e-12)


@pytest.mark.parametrize("domain", [Domain.interval(-1.5, 0.5), Domain.circular()])
def test_spline_derivative_inverse_and_endpoints(domain: Domain) -> None:
    n, k = 400, 7
    raw_w = 2.0 * torch.randn(n, k, dtype=torch.float64)
    raw_h = 2.0 * torch.randn(n, k, dtype=torch.float64)
    raw_d = 2.0 * torch.randn(n, k + 1, dtype=torch.float64)
    x = uniform_points([domain], n)[:, 0].requires_grad_(True)
    y, logdet = rational_quadratic_spline(x, raw_w, raw_h, raw_d, *bounds(domain))
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(torch.log(dy_dx), logdet, atol=1e-10)
    assert torch.all((y >= domain.low) & (y <= domain.high))
    back, inverse_logdet = rational_quadratic_spline(y.detach(), raw_w, raw_h, raw_d, *bounds(domain), inverse=True)
    assert torch.allclose(back, x.detach(), atol=1e-10)
    assert torch.allclose(inverse_logdet, -logdet.detach(), atol=1e-8)
    # endpoints are fixed; on the circle the derivative at -pi equals the one at +pi (a circle diffeomorphism)
    # (inputs are clamped 1e-6 of the length inside, so compare with moderate parameters and tolerance)
    ends = torch.tensor([domain.low, domain.high], dtype=torch.float64)
    params = [0.5 * raw[:1].expand(2, raw.shape[1]) for raw in (raw_w, raw_h, raw_d)]
    y_ends, ld_ends = rational_quadratic_spline(ends, *params, *bounds(domain))
    assert torch.allclose(y_ends, ends, atol=1e-5 * domain.length)
    if domain.is_circular:
        assert abs(float(ld_ends[0] - ld_ends[1])) < 1e-3


# ---------------------------------------------------------------- flow Jacobians


def jacobian_logdet(function, point: torch.Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(function, point)
    sign, logabs = torch.linalg.slogdet(jacobian)
    assert float(sign) != 0.0
    return float(logabs)


@pytest.mark.parametrize("domains", [MIXED, [Domain.interval(0.0, 1.0)]], ids=["d3-mixed", "d1"])
def test_every_layer_logdet_matches_autograd_jacobian(domains) -> None:
    flow = random_flow(domains)
    z = uniform_points(domains, 6)
    context = torch.randn(6, 1, dtype=torch.float64)
    for index, layer in enumerate(flow.layers):
        for i in range(z.shape[0]):
            point, ctx = z[i : i + 1], context[i : i + 1]
            for direction in (layer.forward, layer.inverse):
                _, logdet = direction(point, ctx)
                expected = jacobian_logdet(lambda p, f=direction, c=ctx: f(p.unsqueeze(0), c)[0][0], point[0])
                assert abs(float(logdet[0].detach()) - expected) < 1e-6, (index, direction.__name__)
            forward, _ = layer(point, ctx)
            back, _ = layer.inverse(forward, ctx)
            assert torch.allclose(back, point, atol=1e-10)


@pytest.mark.parametrize("domains", [MIXED, [Domain.circular()], [Domain.circular(), Domain.interval(0.0, 3.0)]])
def test_full_flow_logdet_and_inverse(domains) -> None:
    flow = random_flow(domains)
    u = uniform_points(domains, 8)
    context = 0.5 * torch.randn(8, 1, dtype=torch.float64)
    z, logdet = flow.transform(u, context)
    u_back, inverse_logdet = flow.inverse_transform(z, context)
    circular = torch.tensor([d.is_circular for d in domains])
    difference = torch.where(circular, circular_difference(u_back, u), u_back - u)
    assert float(difference.detach().abs().max()) < 1e-5
    assert torch.allclose(inverse_logdet, -logdet, atol=1e-6)
    for i in range(u.shape[0]):
        ctx = context[i : i + 1]
        expected = jacobian_logdet(lambda p, c=ctx: flow.transform(p.unsqueeze(0), c)[0][0], u[i])
        assert abs(float(logdet[i].detach()) - expected) < 1e-6


def scaling_layer(domains, dtype=torch.float64) -> ThermalScaling:
    """A thermal scaling layer with random centres and exponents (0.3-2)."""
    layer = ThermalScaling(domains).to(dtype)
    with torch.no_grad():
        layer.centre.copy_(0.8 * torch.randn(len(domains)))
        layer.exponent.copy_(0.3 + 1.7 * torch.rand(len(domains)))
    return layer


def test_thermal_scaling_is_the_identity_at_t0_and_inverts_elsewhere() -> None:
    layer = scaling_layer(MIXED)
    z = uniform_points(MIXED, 200)
    at_t0, logdet = layer(z, torch.zeros(200, 1, dtype=torch.float64))
    assert torch.allclose(at_t0, z, atol=1e-12) and torch.allclose(logdet, torch.zeros(200, dtype=torch.float64))
    for log_t in (-0.8, 0.6):
        context = torch.full((200, 1), log_t, dtype=torch.float64)
        y, logdet = layer(z, context)
        back, inverse_logdet = layer.inverse(y, context)
        circular = torch.tensor([d.is_circular for d in MIXED])
        difference = torch.where(circular, circular_difference(back, z), back - z).detach()
        assert float(difference.abs().max()) < 1e-10 and torch.allclose(inverse_logdet, -logdet, atol=1e-10)
        assert float((y - z).detach().abs().max()) > 0.1
        inside = (y[:, 1] >= -1.0) & (y[:, 1] <= 2.0)
        assert bool(inside.all())
        for i in range(5):
            expected = jacobian_logdet(lambda p, c=context[:1]: layer(p.unsqueeze(0), c)[0][0], z[i])
            assert abs(float(logdet[i].detach()) - expected) < 1e-8


def test_thermal_scaling_scales_about_the_centre_by_the_harmonic_factor() -> None:
    """Near its centre a feature moves by ``(T / T0)^(a / 2)`` times its distance to the centre."""
    layer = scaling_layer(MIXED)
    with torch.no_grad():
        layer.centre[1] = 0.3                                    # well inside the interval [-1, 2]
    centre = layer.centres()
    log_t = 0.4
    expected = torch.exp(0.5 * layer.exponent.detach() * log_t)
    context = torch.full((1, 1), log_t, dtype=torch.float64)
    y, _ = layer(centre.unsqueeze(0) + 1e-5, context)
    assert torch.allclose(circular_difference(y.detach()[0], centre) / 1e-5, expected, rtol=1e-4)
    y, _ = layer(centre.unsqueeze(0) + 0.5, context)            # the interval stays a scaling over its bulk
    assert abs(float((y.detach()[0, 1] - centre[1]) / 0.5 / expected[1]) - 1.0) < 5e-3


def test_thermal_scaling_initialises_from_data() -> None:
    """Centres at the (circular) means; exponent 1 on intervals and stiff dihedrals, 0 on wide dihedrals."""
    generator = torch.Generator().manual_seed(0)
    n = 20000
    stiff = circular_difference(math.pi - 0.1 + 0.2 * torch.randn(n, generator=generator, dtype=torch.float64), 0)
    wide = torch.where(torch.rand(n, generator=generator) < 0.5, -1.5, 1.2) + 0.3 * torch.randn(n, generator=generator)
    interval = 0.5 + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)
    z = torch.stack([stiff, interval.double(), circular_difference(wide.double(), 0)], dim=1)
    layer = ThermalScaling(MIXED).double()
    layer.initialise(z)
    assert layer.exponent.tolist() == [1.0, 1.0, 0.0]
    centre = layer.centres()
    assert abs(float(circular_difference(centre[0], torch.tensor(math.pi - 0.1)))) < 0.01
    assert abs(float(centre[1]) - 0.5) < 0.01


def test_flow_with_thermal_scaling_is_consistent_and_round_trips() -> None:
    flow = random_flow(MIXED, thermal_scaling=True)
    assert flow.config()["thermal_scaling"] is True
    context = torch.full((500, 1), -0.5, dtype=torch.float64)
    with torch.no_grad():
        z, log_q = flow.sample(context)
        assert torch.allclose(flow.log_prob(z, context), log_q, atol=1e-8)
        rebuilt = ConditionalSplineFlow.from_config(flow.config()).double()
        rebuilt.load_state_dict(flow.state_dict())
        assert torch.allclose(rebuilt.log_prob(z, context), log_q, atol=1e-12)
    old = {key: value for key, value in flow.config().items() if key != "thermal_scaling"}
    assert ConditionalSplineFlow.from_config(old).scaling is None      # checkpoints from before the layer
    with pytest.raises(InputError, match="thermal_scaling=True"):
        Generator(BoxCoordinates(-1.0, 1.0, 1), ConditionalSplineFlow([Domain.interval(-1.0, 1.0)]),
                  300.0).initialise_thermal_scaling(torch.zeros(3, 1))


def test_context_enters_through_zero_weights_until_trained() -> None:
    """Weights on the context start at zero (and reset_context_weights zeroes them again): a model that only ever
    saw T0 is the same at every T, instead of being perturbed by untrained random weights."""
    flow = ConditionalSplineFlow(MIXED, n_layers=3, hidden=8).double()
    with torch.no_grad():
        for layer in flow.layers:
            layer.conditioner[-1].weight.normal_()            # a trained-looking layer, context weights untouched
    z = uniform_points(MIXED, 20)
    at = {c: flow.log_prob(z, torch.full((20, 1), c, dtype=torch.float64)).detach() for c in (0.0, 0.7)}
    assert torch.equal(at[0.0], at[0.7]) and float(at[0.0].std()) > 0.1
    randomise(flow)
    moved = flow.log_prob(z, torch.full((20, 1), 0.7, dtype=torch.float64)).detach()
    assert not torch.allclose(moved, flow.log_prob(z, torch.zeros(20, 1, dtype=torch.float64)).detach())
    flow.reset_context_weights()
    reset = flow.log_prob(z, torch.full((20, 1), 0.7, dtype=torch.float64)).detach()
    assert torch.allclose(reset, flow.log_prob(z, torch.zeros(20, 1, dtype=torch.float64)).detach(), atol=1e-12)


def test_temperature_masks_cover_exactly_what_acts_away_from_t0() -> None:
    """Changing every masked entry (context weights, scaling layer) leaves log q at T0 as it was (to rounding: the
    scaling layer computes c + 1 * (w - c)) and moves it elsewhere; changing an unmasked entry moves it at T0. Sampled points give back their log q."""
    flow = random_flow(MIXED, thermal_scaling=True)
    z = uniform_points(MIXED, 50)
    zero, hot = (torch.full((50, 1), c, dtype=torch.float64) for c in (0.0, 0.5))
    before = {c: flow.log_prob(z, ctx).detach() for c, ctx in (("zero", zero), ("hot", hot))}
    masks = flow.temperature_gradient_masks()
    assert len(masks) == len(flow.layers) + 2
    with torch.no_grad():
        for parameter, mask in masks:
            parameter.add_(mask * torch.randn_like(parameter))
    assert torch.allclose(flow.log_prob(z, zero).detach(), before["zero"], rtol=0.0, atol=1e-12)
    assert float((flow.log_prob(z, hot).detach() - before["hot"]).abs().max()) > 0.1
    with torch.no_grad():
        sampled, log_q = flow.sample(hot)
        assert torch.allclose(flow.log_prob(sampled, hot), log_q, atol=1e-8)
    with torch.no_grad():
        flow.layers[0].conditioner[0].weight[:, 0] += 1.0          # a weight on a passive feature
    assert not torch.allclose(flow.log_prob(z, zero).detach(), before["zero"])


def test_new_flow_is_identity_and_base_is_uniform() -> None:
    flow = ConditionalSplineFlow(MIXED, n_layers=3, hidden=8).double()
    z = uniform_points(MIXED, 20)
    log_q = flow.log_prob(z, torch.randn(20, 1, dtype=torch.float64))
    volume = (2 * math.pi) ** 2 * 3.0
    assert torch.allclose(log_q, torch.full_like(log_q, -math.log(volume)), atol=1e-10)


# ---------------------------------------------------------------- normalisation and sampling


def grid_1d(domain: Domain, n: int) -> tuple[torch.Tensor, float]:
    """Midpoints of n equal cells (midpoint rule; exact for periodic trigonometric content on the circle)."""
    h = domain.length / n
    return domain.low + h * (torch.arange(n, dtype=torch.float64) + 0.5), h


@pytest.mark.parametrize("log_t", [0.0, 0.7])
def test_density_integrates_to_one_1d(log_t: float) -> None:
    """Midpoint rule on 50k cells; tolerance 1e-4 (converged error ~1e-6, the clamp 1e-6 inside the edges)."""
    domain = Domain.interval(-2.0, 3.0)
    flow = random_flow([domain], n_layers=3, scale=0.25)
    points, h = grid_1d(domain, 50000)
    with torch.no_grad():
        density = flow.log_prob(points[:, None], torch.full((1, 1), log_t, dtype=torch.float64)).exp()
    assert abs(float(density.sum()) * h - 1.0) < 1e-4
    assert float(density.max() / density.min()) > 2.0  # the test density is far from uniform


@pytest.mark.parametrize("log_t", [-0.5, 0.5])
def test_density_integrates_to_one_2d_circular_by_interval(log_t: float) -> None:
    """Midpoint rule on a 400 x 400 grid; tolerance 1e-4 (measured error ~1e-5, density max/min ~200)."""
    domains = [Domain.circular(), Domain.interval(0.0, 1.5)]
    flow = random_flow(domains, scale=0.2)
    a, ha = grid_1d(domains[0], 400)
    b, hb = grid_1d(domains[1], 400)
    grid = torch.cartesian_prod(a, b)
    with torch.no_grad():
        density = flow.log_prob(grid, torch.full((1, 1), log_t, dtype=torch.float64)).exp()
    assert abs(float(density.sum()) * ha * hb - 1.0) < 1e-4
    assert float(density.max() / density.min()) > 2.0


def chi_square_pvalue(samples: torch.Tensor, flow, domain: Domain, log_t: float, n_bins: int = 40) -> float:
    """Pearson chi-square of a histogram (fixed edges over the domain) against the flow's bin probabilities."""
    edges = torch.linspace(domain.low, domain.high, n_bins + 1, dtype=torch.float64)
    points, h = grid_1d(domain, n_bins * 200)
    with torch.no_grad():
        density = flow.log_prob(points[:, None], torch.full((1, 1), log_t, dtype=torch.float64)).exp()
    expected = (density.reshape(n_bins, 200).sum(dim=1) * h).numpy()
    expected = expected / expected.sum() * samples.shape[0]
    observed = np.histogram(samples.numpy(), bins=edges.numpy())[0]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, n_bins - 1))


@pytest.mark.parametrize("domain", [Domain.interval(-1.0, 1.0), Domain.circular()], ids=["interval", "circular"])
def test_samples_follow_log_prob_at_several_temperatures(domain: Domain) -> None:
    """Histogram of samples vs the density at three contexts: chi-square p-value above 1e-3 (40 bins, 50k samples).

    Power check: samples drawn at one temperature are rejected (p < 1e-6) against the density at another.
    """
    flow = random_flow([domain], n_layers=3, scale=0.3)
    generator = torch.Generator().manual_seed(7)
    samples = {}
    for log_t in (-0.6, 0.0, 0.6):
        with torch.no_grad():
            z, log_q = flow.sample(torch.full((50000, 1), log_t, dtype=torch.float64), generator=generator)
            assert torch.allclose(flow.log_prob(z, torch.full((1, 1), log_t, dtype=torch.float64)), log_q, atol=1e-6)
        samples[log_t] = z[:, 0]
        assert chi_square_pvalue(z[:, 0], flow, domain, log_t) > 1e-3
    assert chi_square_pvalue(samples[-0.6], flow, domain, 0.6) < 1e-6


# ---------------------------------------------------------------- derivatives w.r.t. the context


def test_log_prob_context_derivatives_first_and_second_order() -> None:
    flow = random_flow(MIXED)
    z = uniform_points(MIXED, 5)
    context = 0.3 * torch.randn(5, 1, dtype=torch.float64)

    def function(c: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(z, c)

    assert torch.autograd.gradcheck(function, (context.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(function, (context.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)
    # explicit central difference of d log q / d context
    c = context.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(function(c).sum(), c)
    eps = 1e-5
    numeric = (function(context + eps) - function(context - eps)) / (2 * eps)
    assert torch.allclose(analytic[:, 0], numeric, atol=1e-7, rtol=1e-6)
    assert float(analytic.abs().min()) > 1e-4  # the context really reaches the density


def test_mixed_derivative_with_respect_to_parameters_for_trade() -> None:
    """d/dθ of (d log q / d context): autograd with create_graph vs a finite difference in one weight."""
    flow = random_flow(MIXED)
    z = uniform_points(MIXED, 4)
    context = 0.3 * torch.randn(4, 1, dtype=torch.float64)
    weight = flow.layers[1].conditioner[-1].weight

    def residual_loss() -> torch.Tensor:
        c = context.clone().requires_grad_(True)
        (d_context,) = torch.autograd.grad(flow.log_prob(z, c).sum(), c, create_graph=True)
        return (d_context**2).sum()

    (analytic,) = torch.autograd.grad(residual_loss(), weight)
    eps = 1e-6
    with torch.no_grad():
        weight[0, 0] += eps
    plus = float(residual_loss().detach())
    with torch.no_grad():
        weight[0, 0] -= 2 * eps
    minus = float(residual_loss().detach())
    with torch.no_grad():
        weight[0, 0] += eps
    assert abs(float(analytic[0, 0]) - (plus - minus) / (2 * eps)) < 1e-6 * max(1.0, abs(plus))


# ---------------------------------------------------------------- Generator


def toy_generator(dtype=torch.float64) -> Generator:
    coordinates = BoxCoordinates([-2.0, -1.0], [2.0, 3.0])
    flow = randomise(ConditionalSplineFlow(coordinates.domains, n_layers=4, hidden=16, seed=1))
    return Generator(coordinates, flow, reference_temperature=300.0).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_sample_log_prob_consistent(dtype: torch.dtype) -> None:
    model = toy_generator(dtype)
    assert model.n_dof == 2
    temperatures = torch.tensor([250.0, 300.0, 600.0, 1000.0], dtype=dtype).repeat_interleave(50)
    x, log_q = model.sample(200, temperatures)
    assert x.dtype == dtype and x.shape == (200, 2)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(model.log_prob(x, temperatures), log_q, atol=tolerance)
    x_one, log_q_one = model.sample(10, 450.0)
    assert torch.allclose(model.log_prob(x_one, 450.0), log_q_one, atol=tolerance)
    assert bool(model.in_support(x).all())


def test_generator_temperature_reaches_samples_and_density() -> None:
    model = toy_generator()
    with torch.no_grad():
        x, _ = model.sample(5, 300.0)
        assert float((model.log_prob(x, 300.0) - model.log_prob(x, 900.0)).abs().min()) > 1e-3
        a, _ = model.sample(2000, 300.0, generator=torch.Generator().manual_seed(0))
        b, _ = model.sample(2000, 900.0, generator=torch.Generator().manual_seed(0))
        assert float((a - b).abs().mean()) > 1e-2


def test_generator_derivative_with_respect_to_log_temperature() -> None:
    model = toy_generator()
    x, _ = model.sample(6, 500.0)
    log_t = torch.log(torch.full((6,), 500.0, dtype=torch.float64)).requires_grad_(True)
    (analytic,) = torch.autograd.grad(model.log_prob(x, torch.exp(log_t)).sum(), log_t, create_graph=True)
    eps = 1e-5
    numeric = (model.log_prob(x, 500.0 * math.exp(eps)) - model.log_prob(x, 500.0 * math.exp(-eps))) / (2 * eps)
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-6)
    analytic.pow(2).sum().backward()  # second order, as the TRADE residual needs
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.flow.parameters())


def test_generator_config_round_trip() -> None:
    model = toy_generator()
    clone = Generator.from_config(model.config(), model.state_dict())
    x, _ = model.sample(20, 700.0)
    assert torch.allclose(clone.log_prob(x, 700.0), model.log_prob(x, 700.0), atol=1e-12)
    assert clone.reference_temperature == 300.0
    fresh = Generator.from_config(model.config())
    assert fresh.dtype == torch.float32
    scaled = Generator.from_config(model.config(), model.state_dict(), adding=["thermal_scaling"])
    assert torch.allclose(scaled.log_prob(x, 300.0), model.log_prob(x, 300.0), atol=1e-12)
    assert scaled.flow.scaling is not None
    with pytest.raises(InputError, match="can be added"):
        Generator.from_config(model.config(), model.state_dict(), adding=["n_layers"])
    with pytest.raises(InputError, match="do not fit"):
        Generator.from_config(scaled.config(), model.state_dict())     # scaling weights missing, none added
    # configs written before temperature heads were removed name them: false loads, true is refused
    assert Generator.from_config({**model.config(), "flow": {**model.config()["flow"], "temperature_head": False}})
    with pytest.raises(InputError, match="temperature heads.*retrain"):
        Generator.from_config({**model.config(), "flow": {**model.config()["flow"], "temperature_head": True}})


def test_generator_input_errors() -> None:
    model = toy_generator()
    with pytest.raises(InputError, match="temperature"):
        model.log_prob(torch.zeros(3, 2, dtype=torch.float64), -5.0)
    with pytest.raises(InputError, match=r"\[n, 2\]"):
        model.log_prob(torch.zeros(3, 5, dtype=torch.float64), 300.0)
    with pytest.raises(InputError, match="temperature must be"):
        model.sample(4, torch.tensor([300.0, 400.0]))
    with pytest.raises(InputError, match="domains"):
        Generator(BoxCoordinates(0.0, 1.0, dim=2), ConditionalSplineFlow([Domain.circular()] * 2), 300.0)
    with pytest.raises(InputError, match="circular"):
        Domain("circular", 0.0, 1.0)

"""Temperature-conditioned rational-quadratic spline coupling flows over a product of feature domains.

Features ``z [n, d]`` live in a product of one-dimensional domains (:class:`~trade_md.splines.Domain`): circles
``[-pi, pi)`` (dihedrals) or intervals ``[low, high]`` (normalised bonds and angles, toy coordinates). The flow maps
a uniform base distribution on that product (it does NOT depend on temperature) through coupling layers
(:class:`SplineCoupling`, splines from :mod:`trade_md.splines`) whose conditioners see the passive features and a
context vector (``log(T / T0)`` in :class:`trade_md.generator.Generator`). Each layer is followed by a fixed
(non-learned) rotation of the circular features so that the seam at ``+-pi`` moves from layer to layer. Every layer
starts as the exact identity (the conditioner's output layer is zero-initialised). An optional last layer,
:class:`~trade_md.thermal_scaling.ThermalScaling`, builds in the temperature dependence of harmonic degrees of
freedom. Everything is differentiable twice (TRADE differentiates ``log q`` with respect to the context with
``create_graph=True``).

Performance (issue 28): inside the flow's passes the features are rows, ``[d, n]``: the conditioners multiply
feature columns, the splines (:func:`~trade_md.splines.spline_columns`) reduce over bins along contiguous rows of
samples, rotations and thermal scaling touch only their rows; large batches without gradients run in chunks of
:data:`CHUNK` rows. Inputs, outputs and numbers are those of the row-per-sample formulation up to the order of the
sums over features (tests/test_speed.py, tests/test_checkpoint_compat.py).

>>> flow = ConditionalSplineFlow([Domain.circular(), Domain.interval(0.0, 1.0)], context_dim=1, n_layers=2)
>>> z, log_q = flow.sample(torch.zeros(5, 1))
>>> torch.allclose(flow.log_prob(z, torch.zeros(5, 1)), log_q, atol=1e-5)
True
"""

from __future__ import annotations

import math
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from trade_md.errors import InputError
from trade_md.splines import Domain, spline_columns, wrap_angles
from trade_md.thermal_scaling import ThermalScaling

__all__ = ["ConditionalSplineFlow", "SplineCoupling"]


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


def _columns_mlp(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """``mlp`` applied to the columns of ``x [inputs, n]``: ``[outputs, n]`` (the transpose of ``mlp(x.T)``; the
    same products and sums, without transposing the features or the output)."""
    for module in mlp:
        x = torch.addmm(module.bias.unsqueeze(1), module.weight, x) if isinstance(module, nn.Linear) else module(x)
    return x


class SplineCoupling(nn.Module):
    """One coupling layer: RQ splines on the ``transformed`` dims, conditioned on the others and the context.

    domains: all ``d`` feature domains; transformed: indices of the dims this layer changes; the conditioner is
    an MLP (SiLU) on ``[embedded passive features, context]`` whose output layer starts at zero (identity layer)
    and whose weights on the context start at zero, so that a model trained at T0 alone is the same model at
    every T until its temperature dependence is trained.
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        transformed: Sequence[int],
        context_dim: int,
        hidden: int,
        n_hidden_layers: int,
        n_bins: int,
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
        column = {"dtype": torch.float64}                         # per-feature constants as columns [k, 1]
        self.register_buffer("_low", torch.tensor([d.low for d in chosen], **column).reshape(-1, 1), persistent=False)
        self.register_buffer("_high", torch.tensor([d.high for d in chosen], **column).reshape(-1, 1), persistent=False)
        self.register_buffer("_circular", torch.tensor([d.is_circular for d in chosen]).reshape(-1, 1),
                             persistent=False)
        passive_domains = [self.domains[i] for i in self.passive]
        angles = [m for m, d in enumerate(passive_domains) if d.is_circular]
        intervals = [m for m, d in enumerate(passive_domains) if not d.is_circular]
        # the passive features the conditioner sees, as rows of the features [d, n]
        self.register_buffer("_angle_rows", torch.tensor([self.passive[m] for m in angles], dtype=torch.long),
                             persistent=False)
        self.register_buffer("_interval_rows", torch.tensor([self.passive[m] for m in intervals], dtype=torch.long),
                             persistent=False)
        interval_low = [passive_domains[m].low for m in intervals]
        interval_length = [passive_domains[m].length for m in intervals]
        self.register_buffer("_interval_low", torch.tensor(interval_low, **column).reshape(-1, 1), persistent=False)
        self.register_buffer("_interval_length", torch.tensor(interval_length, **column).reshape(-1, 1),
                             persistent=False)
        n_inputs = 2 * len(angles) + len(intervals) + context_dim
        n_outputs = len(self.transformed) * (3 * n_bins + 1)
        self.conditioner = _zero_output_mlp(n_inputs, hidden, n_hidden_layers, n_outputs)
        self.context_dim = context_dim
        self.reset_context_weights()

    @torch.no_grad()
    def reset_context_weights(self) -> None:
        """Zero the conditioner's weights on the context (the last inputs): the layer forgets its temperature
        dependence. A run at T0 alone never trains them (the context is 0 there)."""
        self.conditioner[0].weight[:, -self.context_dim:] = 0.0

    def couple_columns(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The layer on features stored as columns: ``z [d, n]``, ``context [c, n]`` -> ``(z' [d, n], log-det [n])``.

        The flow keeps its features in this layout (one row per feature): the conditioner's products, the
        spline's sums over bins and the log-det's sum over features then all run along contiguous rows of samples.
        """
        dtype = z.dtype
        angles = z.index_select(0, self._angle_rows)
        intervals = z.index_select(0, self._interval_rows)
        low, length = self._interval_low.to(dtype), self._interval_length.to(dtype)
        # conditioner features: (cos, sin) of circular dims, interval dims rescaled onto [-1, 1], the context
        features = torch.cat([torch.cos(angles), torch.sin(angles), 2.0 * (intervals - low) / length - 1.0, context])
        raw = _columns_mlp(self.conditioner, features).unflatten(0, (len(self.transformed), 3 * self.n_bins + 1))
        y, log_derivative = spline_columns(
            z.index_select(0, self.transformed_index), raw, self._low.to(dtype), self._high.to(dtype),
            self._circular, self.n_bins, inverse=inverse,
        )
        return z.index_copy(0, self.transformed_index, y), log_derivative.sum(dim=0)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Base side to feature side: ``(z' [n, d], log|dz'/dz| [n])``."""
        out, logdet = self.couple_columns(z.t(), context.t(), inverse=False)
        return out.t(), logdet

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature side to base side: ``(z' [n, d], log|dz'/dz| [n])``."""
        out, logdet = self.couple_columns(z.t(), context.t(), inverse=True)
        return out.t(), logdet


CHUNK = 1024
"""Rows per pass of a large batch without gradients (sampling, validation): rows are independent, and passes of a
thousand rows keep the spline tables in cache (1.3x the rate of one pass over 4096 rows on the development CPU)."""


def _in_chunks(function: Any, points: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
    """``function(points, context)`` over row chunks of :data:`CHUNK` when no gradient is recorded, concatenated."""
    if torch.is_grad_enabled() or points.shape[0] <= CHUNK:
        return function(points, context)
    parts = [function(p, c) for p, c in zip(torch.split(points, CHUNK), torch.split(context, CHUNK))]
    return torch.cat([z for z, _ in parts]), torch.cat([logdet for _, logdet in parts])


COMPILE_VARIABLE = "TRADE_MD_COMPILE"
"""Set to 1 to run the flow's passes through ``torch.compile`` (opt-in, see :func:`_compiled`)."""
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # flow -> {pass name: compiled, "failed": bool}


def _compiled(flow: ConditionalSplineFlow, name: str, context: Tensor) -> Callable[[Tensor, Tensor], Any]:
    """``flow.<name>`` (a pass), through ``torch.compile`` when ``TRADE_MD_COMPILE=1``. On the 2-core development
    CPU (recipe flow, float32, torch 2.13) that gives 1.5x the eager rate of a sampling pass and 1.3x of a pass with
    its backward after 45-70 s of compilation per kind of pass, with results that differ by rounding: off by
    default. A context with a gradient (TRADE's derivative, a double backward) always runs eagerly; a failure to
    compile warns once and falls back to eager for good."""
    eager = getattr(flow, name)
    if os.environ.get(COMPILE_VARIABLE, "") not in ("1", "true", "yes") or context.requires_grad:
        return eager
    cache = _COMPILED.setdefault(flow, {})
    if cache.get("failed"):
        return eager
    if name not in cache:
        cache[name] = torch.compile(eager, dynamic=None)
    compiled = cache[name]

    def run(points: Tensor, columns: Tensor) -> Any:
        try:
            return compiled(points, columns)
        except Exception as error:  # noqa: BLE001 - whatever the compiler raises, the numbers come from eager
            cache["failed"] = True
            warnings.warn(f"torch.compile of the flow failed ({type(error).__name__}: {error}); running eagerly",
                          RuntimeWarning, stacklevel=3)
            return eager(points, columns)

    return run


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
    T0; set its centres and exponents from data with :meth:`Generator.initialise_thermal_scaling`).
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
                          "n_bins": int(n_bins), "seed": int(seed), "thermal_scaling": bool(thermal_scaling)}
        generator = torch.Generator().manual_seed(int(seed))
        d = len(self.domains)
        self.layers = nn.ModuleList(
            SplineCoupling(self.domains, mask, self.context_dim, hidden, n_hidden_layers, n_bins)
            for mask in _masks(d, n_layers, generator)
        )
        circular = torch.tensor([dom.is_circular for dom in self.domains])
        shifts = (torch.rand(n_layers, d, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.pi
        self.register_buffer("phase_shifts", torch.where(circular, shifts, torch.zeros_like(shifts)))
        self.register_buffer("_circular", circular, persistent=False)
        self.register_buffer("_circular_rows", torch.nonzero(circular).flatten(), persistent=False)
        self.register_buffer("_low", torch.tensor([dom.low for dom in self.domains], dtype=torch.float64))
        self.register_buffer("_high", torch.tensor([dom.high for dom in self.domains], dtype=torch.float64))
        self.scaling = ThermalScaling(self.domains) if thermal_scaling else None
        self._base_log_density: tuple[Any, float] | None = None

    def reset_context_weights(self) -> None:
        """Zero every coupling's weights on the context (see :meth:`SplineCoupling.reset_context_weights`)."""
        for layer in self.layers:
            layer.reset_context_weights()

    def temperature_gradient_masks(self) -> list[tuple[nn.Parameter, Tensor]]:
        """The parameters that act only away from T0, each with a 0/1 mask ``[same shape]`` of the entries that do:
        the conditioners' input weights on the context (multiplied by ``log(T / T0) = 0`` at T0) and the thermal
        scaling layer (the identity at T0). Training only these entries leaves ``q(x | T0)`` as it is: bit for bit
        without the scaling layer, to float rounding with it (it maps ``w`` to ``c + 1 (w - c)`` there)."""
        masks = []
        for layer in self.layers:
            weight = layer.conditioner[0].weight
            mask = torch.zeros_like(weight)
            mask[:, -self.context_dim:] = 1.0
            masks.append((weight, mask))
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
        """The flow of :meth:`config`. Configs written before temperature heads were removed name them (false)."""
        config = dict(config)
        if config.pop("temperature_head", False):
            raise InputError("this model has temperature heads, which trade-md no longer has (they did not help: "
                             "benchmarks/results/HISTORY.md, 12); retrain it with this version")
        return cls(**config)

    def _context(self, context: Tensor, n: int) -> Tensor:
        if context.dim() == 1 and self.context_dim == 1:
            context = context.unsqueeze(-1)
        if context.dim() != 2 or context.shape[1] != self.context_dim or context.shape[0] not in (1, n):
            raise InputError(f"context must have shape [{n}, {self.context_dim}] (or [1, {self.context_dim}]), "
                             f"got {list(context.shape)}")
        return context.expand(n, self.context_dim)

    def _rotate_columns(self, z: Tensor, layer: int, sign: float) -> Tensor:
        """The fixed rotation of the circular features after ``layer`` (``sign`` -1: undone), on ``z [d, n]``."""
        rows = self._circular_rows
        if rows.numel() == 0:
            return z
        shift = (sign * self.phase_shifts[layer].to(z.dtype)).index_select(0, rows).unsqueeze(1)
        return z.index_copy(0, rows, wrap_angles(z.index_select(0, rows) + shift))

    def base_log_prob(self, u: Tensor) -> Tensor:
        """Log density ``[n]`` of the uniform base distribution (constant on the product of domains)."""
        key = (self._high.dtype, self._high.device, self._high.data_ptr(), self._low.data_ptr())
        if self._base_log_density is None or self._base_log_density[0] != key:  # once per dtype and device
            self._base_log_density = (key, -float(torch.log(self._high - self._low).sum()))
        return torch.full_like(u[:, 0], self._base_log_density[1])

    def transform(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Base point ``u [n, d]`` to feature ``z [n, d]``; returns ``(z, log|dz/du| [n])``."""
        context = self._context(context, u.shape[0]).to(u.dtype)
        return _in_chunks(_compiled(self, "_transform", context), u, context)

    def _transform(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        z, columns = u.t().contiguous(), context.t().contiguous()   # features as rows (SplineCoupling.couple_columns)
        logdet = torch.zeros_like(u[:, 0])
        for index, layer in enumerate(self.layers):
            z, ld = layer.couple_columns(z, columns, inverse=False)
            z = self._rotate_columns(z, index, 1.0)
            logdet = logdet + ld
        if self.scaling is not None:
            z, ld = self.scaling.map_columns(z, columns, inverse=False)
            logdet = logdet + ld
        return z.t().contiguous(), logdet

    def inverse_transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature ``z [n, d]`` to base point ``u [n, d]``; returns ``(u, log|du/dz| [n])``."""
        self._check(z)
        context = self._context(context, z.shape[0]).to(z.dtype)
        return _in_chunks(_compiled(self, "_inverse_transform", context), z, context)

    def _inverse_transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        u, columns = z.t().contiguous(), context.t().contiguous()
        logdet = torch.zeros_like(z[:, 0])
        if self.scaling is not None:
            u, logdet = self.scaling.map_columns(u, columns, inverse=True)
        for index in reversed(range(len(self.layers))):
            u = self._rotate_columns(u, index, -1.0)
            u, ld = self.layers[index].couple_columns(u, columns, inverse=True)
            logdet = logdet + ld
        return u.t().contiguous(), logdet

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

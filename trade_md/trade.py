"""The TRADE loss: propagate a Boltzmann density across temperature from one boundary temperature T0.

Parametrisation (stated once, used everywhere). The model is q_θ(x | T) with context c = log(T / T0). With the
reduced energy u_T(x) = U(x) / (k_B T) (U in kJ/mol) the Boltzmann family p(x | T) = exp(−u_T(x)) / Z(T) obeys

    ∂/∂ log T  log p(x | T) = u_T(x) − E_T[u_T],            (∂ log Z / ∂ log T = E_T[U] / (k_B T) = E_T[u_T])

so the TRADE residual at a point (x, T) is

    r(x, T) = ∂_c log q_θ(x | T) − (u_T(x) − Ê_T[u_T]),

where ∂_c is taken by autograd through the temperature input (log T is a leaf, T = exp(log T)) and both terms of
the target carry the same single power of 1/T: u_T(x) = β U(x) and Ê_T[u_T] = β Ê_T[U] with β = 1/(k_B T) at the
point's own T. The reduced form keeps r of order √(degrees of freedom) at every temperature.

Two ways to obtain the constant Ê_T[u_T] of the target (``TrainConfig.expectation``):

- ``"grid"`` (the paper's): Ê_T[U] from self-normalised importance sampling on the expectation grid (below);
- ``"centred"``: the residual minus its own mean over the batch points that share a temperature,
  r_i = g_i − mean_{j: T_j = T_i} g_j with g = ∂_c log q − u_T. Because q is normalised, E_q[∂_c log q] = 0, so the
  only solution of ∂_c log q = u_T − c(T) for all x is c(T) = E_q[u_T] and q(· | T) ∝ q(· | T0) exp(−(β − β0) U):
  the exact Boltzmann tilt of the boundary model. No importance weights enter the loss, so it stays unbiased when
  the model's ESS is low (where a self-normalised Ê rests on a handful of samples and would drag the model; see
  :func:`centred_trade_residual`). The centre is detached: for a squared loss its gradient contribution is exactly
  zero (Σ (g_i − ḡ) = 0).

Ê_T[U] comes from the model itself by self-normalised importance sampling on flow samples at T:
log w = −u_T(x) − log q(x | T), Ê_T[U] = Σ w U / Σ w, with Kish ESS (Σw)² / (n Σw²). :class:`ExpectationGrid`
keeps these estimates in kJ/mol on log-spaced temperature nodes (T0 is a node), interpolates E[U] linearly in
log T (so Ê_T[u_T] = β(T) · E[U](T) at any T), keeps per-node running residual losses and turns them into causality
weights w_k = exp(−ε Σ_{j from T0's node up to, not including, k} L_j), and integrates the free-energy curve
log Z(T) − log Z(T0) = −∫_{β0}^{β} E[U] dβ' as a self-check.

Energies from an untrained flow can be huge: :func:`cap_reduced_energy` caps reduced energies smoothly (identity
below a threshold in k_B T units, logarithmic above, non-finite values mapped to a large finite value), so no
inf or NaN reaches the weights, the targets or the optimiser.

>>> u = torch.tensor([1.0, 1e3, 1e9, float("inf"), float("nan")])
>>> [round(v, 2) for v in cap_reduced_energy(u, threshold=100.0).tolist()]
[1.0, 106.8, 120.72, 200.0, 200.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from trade_md.errors import InputError
from trade_md.thermo import KB, to_kelvin

__all__ = [
    "DEFAULT_ENERGY_CAP",
    "NONFINITE_EXCESS",
    "ExpectationGrid",
    "cap_reduced_energy",
    "centred_trade_residual",
    "group_means",
    "group_softmax",
    "huber",
    "importance_estimate",
    "integrate_free_energy",
    "kish_ess",
    "log_temperature_derivative",
    "ramp",
    "reduced_energy",
    "sample_log_uniform",
    "trade_residual",
]

DEFAULT_ENERGY_CAP: float = 1000.0
"""Default threshold (in k_B T) above which reduced energies grow only logarithmically."""
NONFINITE_EXCESS: float = 100.0
"""A non-finite reduced energy (inf/NaN from a broken configuration) becomes ``threshold + NONFINITE_EXCESS``."""


def cap_reduced_energy(u: Tensor, threshold: float = DEFAULT_ENERGY_CAP) -> Tensor:
    """Smoothly capped reduced energy ``[n]`` (k_B T units): ``u`` for ``u <= threshold``, else
    ``threshold + log(1 + u − threshold)``; continuous with a continuous first derivative (1 at the threshold).

    inf and NaN become ``threshold + NONFINITE_EXCESS`` with zero gradient, so every output is finite.
    """
    finite = torch.isfinite(u)
    safe = torch.where(finite, u, torch.full_like(u, threshold))
    excess = (safe - threshold).clamp(min=0.0)
    capped = torch.where(safe > threshold, threshold + torch.log1p(excess), safe)
    return torch.where(finite, capped, torch.full_like(u, threshold + NONFINITE_EXCESS))


def reduced_energy(energy: Tensor, temperature: Tensor | float, threshold: float = DEFAULT_ENERGY_CAP) -> Tensor:
    """Capped ``u = U / (k_B T)`` ``[n]``; energy ``[n]`` kJ/mol, temperature float K or ``[n]`` K."""
    return cap_reduced_energy(energy / (KB * temperature), threshold)


def kish_ess(log_w: Tensor) -> Tensor:
    """Kish effective sample size as a fraction of n, ``(Σw)² / (n Σw²)`` in (0, 1]; −inf log-weights give w = 0."""
    return torch.exp(2.0 * torch.logsumexp(log_w, dim=-1) - torch.logsumexp(2.0 * log_w, dim=-1)) / log_w.shape[-1]


def importance_estimate(values: Tensor, u: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalised importance estimate of ``E_p[values]`` from samples of q, and its Kish ESS fraction.

    values: ``[n]``; u: reduced energies ``[n]`` (capped, so finite); log_q: ``log q(x)`` ``[n]`` of the samples.
    Weights ``log w = −u − log q``; samples with non-finite ``log q`` get weight zero. Returns ``(estimate, ess)``,
    both 0-dim tensors; raises :class:`InputError` when no sample has a finite weight.
    """
    log_w = -u - log_q
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    if not bool(torch.any(torch.isfinite(log_w))):
        raise InputError("no sample has a finite importance weight (log q is non-finite everywhere); the flow "
                         "diverged: restart from an earlier checkpoint or lower the learning rate")
    weights = torch.softmax(log_w, dim=-1)
    return torch.sum(weights * torch.where(weights > 0, values, torch.zeros_like(values))), kish_ess(log_w)


def sample_log_uniform(
    n: int, low: float, high: float, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` temperatures ``[n]`` K drawn log-uniformly (continuously) from ``[low, high]``."""
    lo, hi = math.log(to_kelvin(low)), math.log(to_kelvin(high))
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=dtype))


def log_temperature_derivative(
    log_prob: Callable[[Tensor, Tensor], Tensor], x: Tensor, temperature: Tensor
) -> tuple[Tensor, Tensor]:
    """``(log q(x | T) [n], ∂ log q(x | T) / ∂ log T [n])`` with a graph for training (``create_graph=True``).

    log_prob: ``(x, T [n] K) -> [n]`` differentiable in T (e.g. ``Generator.log_prob``); x: detached points;
    temperature: ``[n]`` K (detached; a fresh leaf log T is made here, T = exp(log T)).
    """
    log_t = torch.log(temperature.detach()).requires_grad_(True)
    log_q = log_prob(x, torch.exp(log_t))
    (derivative,) = torch.autograd.grad(log_q.sum(), log_t, create_graph=True)
    return log_q, derivative


def trade_residual(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    temperature: Tensor,
    energy: Tensor,
    mean_energy: Tensor,
    threshold: float = DEFAULT_ENERGY_CAP,
) -> Tensor:
    """TRADE residual ``r [n] = ∂_logT log q(x | T) − (u_T(x) − β Ê_T[U])`` (see the module docs).

    x: points ``[n, ...]`` (detached); temperature: ``[n]`` K; energy: ``U(x)`` ``[n]`` kJ/mol (detached);
    mean_energy: ``Ê_T[U]`` ``[n]`` kJ/mol at each point's temperature. u is capped (:func:`cap_reduced_energy`).
    """
    _, derivative = log_temperature_derivative(log_prob, x, temperature)
    t = temperature.detach().to(derivative.dtype)
    u = reduced_energy(energy.detach().to(derivative.dtype), t, threshold)
    mean_u = mean_energy.detach().to(derivative.dtype) / (KB * t)
    return derivative - (u - mean_u)


def group_means(
    values: Tensor, group: Tensor, n_groups: int, all_reduce: Callable[[Tensor, str], Tensor] | None = None
) -> Tensor:
    """Detached mean of ``values [n]`` over the points of each group, returned per point ``[n]``.

    group: ``[n]`` integer ids in ``[0, n_groups)``; all_reduce: ``(tensor, "sum") -> tensor`` pooling the sums and
    counts of all data-parallel ranks (None: one process). Groups without points get mean 0 (unused).
    """
    totals = torch.zeros(2, n_groups, dtype=torch.float64, device=values.device)
    totals[0].index_add_(0, group, values.detach().to(torch.float64))
    totals[1].index_add_(0, group, torch.ones_like(values, dtype=torch.float64))
    if all_reduce is not None:
        totals = all_reduce(totals, "sum")
    means = totals[0] / totals[1].clamp(min=1.0)
    return means[group].to(values.dtype)


def group_softmax(
    log_w: Tensor, group: Tensor, n_groups: int, all_reduce: Callable[[Tensor, str], Tensor] | None = None
) -> Tensor:
    """Detached self-normalised weights ``[n]``: ``exp(log_w)`` over its sum within each group (pooled over ranks
    with ``all_reduce``, as in :func:`group_means`); non-finite log-weights get weight 0."""
    log_w = log_w.detach().to(torch.float64)
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    peak = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=log_w.device)
    peak = peak.scatter_reduce(0, group, log_w, "amax")
    if all_reduce is not None:
        peak = all_reduce(peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(log_w - peak[group])
    totals = torch.zeros(n_groups, dtype=torch.float64, device=log_w.device).index_add_(0, group, weights)
    if all_reduce is not None:
        totals = all_reduce(totals, "sum")
    return weights / totals[group].clamp(min=1e-300)


def centred_trade_residual(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    temperature: Tensor,
    energy: Tensor,
    group: Tensor,
    n_groups: int,
    threshold: float = DEFAULT_ENERGY_CAP,
    all_reduce: Callable[[Tensor, str], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Centred TRADE residual ``r [n] = g − mean_group(g)``, ``g = ∂_logT log q(x | T) − u_T(x)`` (module docs).

    Points of one group must share one temperature (``temperature [n]`` K, ``group [n]`` ids in
    ``[0, n_groups)``); x ``[n, ...]`` and energy ``U [n]`` kJ/mol as in :func:`trade_residual`. Returns
    ``(r, centre)`` where ``centre [n]`` (detached) estimates −E_q[u_T] at each point's temperature, so
    ``−k_B T · centre`` is the model's own E_T[U] in kJ/mol.
    """
    _, derivative = log_temperature_derivative(log_prob, x, temperature)
    t = temperature.detach().to(derivative.dtype)
    g = derivative - reduced_energy(energy.detach().to(derivative.dtype), t, threshold)
    centre = group_means(g, group, n_groups, all_reduce)
    return g - centre, centre


def huber(residual: Tensor, delta: float) -> Tensor:
    """Elementwise Huber loss ``[n]`` of a residual: r²/2 for |r| <= δ, δ(|r| − δ/2) above."""
    return functional.huber_loss(residual, torch.zeros_like(residual), reduction="none", delta=delta)


def ramp(step: int, start: int, length: int) -> float:
    """Ramp factor in [0, 1]: 0 before ``start``, rising linearly over ``length`` steps, then 1."""
    if step < start:
        return 0.0
    if length <= 0:
        return 1.0
    return min(1.0, (step - start + 1) / length)


def integrate_free_energy(temperatures: Tensor, mean_energy: Tensor, reference_index: int) -> Tensor:
    """``log Z(T_k) − log Z(T_ref)`` ``[K]`` from ``E_T[U]`` at sorted temperatures ``[K]`` K (mean_energy kJ/mol).

    Integrates −∫ E[U] dβ = −∫ E[u] d(log β) by the trapezoid rule in log β (E[u] = β E[U] is nearly
    constant in log β, exactly for harmonic systems), outward from ``temperatures[reference_index]``.
    """
    temperatures = temperatures.to(torch.float64)
    log_beta = -torch.log(KB * temperatures)
    mean_u = mean_energy.to(torch.float64) / (KB * temperatures)
    segments = -0.5 * (mean_u[1:] + mean_u[:-1]) * (log_beta[1:] - log_beta[:-1])
    k0 = reference_index
    curve = torch.zeros_like(temperatures)
    curve[k0 + 1:] = torch.cumsum(segments[k0:], dim=0)
    curve[:k0] = -torch.flip(torch.cumsum(torch.flip(segments[:k0], [0]), dim=0), [0])
    return curve


def _node_temperatures(reference: float, low: float, high: float, n_nodes: int) -> Tensor:
    """About ``n_nodes`` log-spaced temperatures ``[K]`` over ``[low, high]`` that include ``reference`` exactly."""
    log_lo, log_ref, log_hi = math.log(low), math.log(reference), math.log(high)
    spacing = (log_hi - log_lo) / max(n_nodes - 1, 1)
    below = max(1, round((log_ref - log_lo) / spacing)) if reference > low else 0
    above = max(1, round((log_hi - log_ref) / spacing)) if reference < high else 0
    lower = torch.linspace(log_lo, log_ref, below + 1, dtype=torch.float64)
    upper = torch.linspace(log_ref, log_hi, above + 1, dtype=torch.float64)
    return torch.exp(torch.cat([lower[:-1], upper]))


class ExpectationGrid:
    """Running estimates of E_T[U] on log-spaced temperature nodes, with ESS, residual losses and causality.

    reference_temperature: T0 in K (always a node); temperature_min, temperature_max: the trained range in K;
    n_nodes: about this many nodes (exact count in :attr:`temperatures`); decay: how much of the previous
    estimate's effective sample count survives a refresh (0 = replace by the newest estimate, 1 = plain average of
    all refreshes); loss_momentum: exponential moving average of the per-node residual loss; all_reduce:
    ``(tensor, op) -> tensor`` combining over data-parallel ranks (``op`` "sum" or "max", e.g.
    ``trade_md.distributed.DistributedContext.all_reduce``), so that every rank's refresh pools all ranks' samples
    and every rank's running losses pool all ranks' points (None: one process).

    State (tensors ``[K]``, float64): ``temperatures`` K, ``mean_energy`` kJ/mol (NaN until refreshed),
    ``sample_weight`` (accumulated effective samples), ``ess`` (Kish fraction of the last refresh),
    ``loss`` (running mean Huber residual loss of the points nearest each node; NaN until seen).
    """

    def __init__(
        self,
        reference_temperature: float,
        temperature_min: float,
        temperature_max: float,
        n_nodes: int = 26,
        *,
        decay: float = 0.5,
        loss_momentum: float = 0.9,
        all_reduce: Callable[[Tensor, str], Tensor] | None = None,
    ) -> None:
        t0, lo, hi = to_kelvin(reference_temperature), to_kelvin(temperature_min), to_kelvin(temperature_max)
        if not lo <= t0 <= hi or lo >= hi:
            raise InputError(f"the trained range must satisfy T_min <= T0 <= T_max and T_min < T_max, got "
                             f"T_min={lo} K, T0={t0} K, T_max={hi} K")
        if n_nodes < 2 or not 0.0 <= decay <= 1.0 or not 0.0 <= loss_momentum < 1.0:
            raise InputError(f"grid needs n_nodes >= 2, 0 <= decay <= 1, 0 <= loss_momentum < 1; got {n_nodes}, "
                             f"{decay}, {loss_momentum}")
        self.reference_temperature = t0
        self.all_reduce = all_reduce
        self.decay = float(decay)
        self.loss_momentum = float(loss_momentum)
        self.temperatures = _node_temperatures(t0, lo, hi, n_nodes)
        self.reference_index = int(torch.argmin(torch.abs(self.temperatures - t0)))
        k = self.temperatures.numel()
        self.mean_energy = torch.full((k,), math.nan, dtype=torch.float64)
        self.sample_weight = torch.zeros(k, dtype=torch.float64)
        self.ess = torch.full((k,), math.nan, dtype=torch.float64)
        self.loss = torch.full((k,), math.nan, dtype=torch.float64)

    @property
    def n_nodes(self) -> int:
        return int(self.temperatures.numel())

    @property
    def ready(self) -> bool:
        """Whether every node holds an estimate of E[U]."""
        return bool(torch.all(torch.isfinite(self.mean_energy)))

    def nearest(self, temperature: Tensor) -> Tensor:
        """Index ``[n]`` of the node nearest in log T to each temperature ``[n]`` K."""
        distance = torch.abs(torch.log(temperature.detach().to(torch.float64))[:, None] - torch.log(self.temperatures))
        return torch.argmin(distance, dim=-1)

    def update_node(self, index: int, energy: Tensor, log_q: Tensor, threshold: float = DEFAULT_ENERGY_CAP) -> None:
        """Fold one batch of flow samples at node ``index`` into its estimate.

        energy: ``U(x)`` ``[n]`` kJ/mol of samples ``x ~ q(· | T_k)``; log_q: their ``log q(x | T_k)`` ``[n]``.
        The averaged quantity is the capped energy ``k_B T_k · cap(β_k U)`` (equal to U below the cap).
        """
        t = float(self.temperatures[index])
        u = reduced_energy(energy.detach().to(torch.float64), t, threshold)
        if self.all_reduce is None:
            estimate, ess = importance_estimate(u * (KB * t), u, log_q.detach().to(torch.float64))
            n_total = energy.numel()
        else:
            estimate, ess, n_total = self._pooled_estimate(u * (KB * t), u, log_q.detach().to(torch.float64))
        new_weight = float(ess) * n_total
        old_weight = self.decay * float(self.sample_weight[index])
        old = float(self.mean_energy[index]) if old_weight > 0 else 0.0
        total = old_weight + new_weight
        self.mean_energy[index] = (old_weight * old + new_weight * float(estimate)) / total
        self.sample_weight[index] = total
        self.ess[index] = float(ess)

    def _pooled_estimate(self, values: Tensor, u: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor, int]:
        """:func:`importance_estimate` over the samples of all ranks (``[n]`` each) via :attr:`all_reduce`:
        a global max of log w, then global sums of w, w², w·value and n; returns ``(estimate, ess, n_total)``."""
        log_w = -u - log_q
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        top = self.all_reduce(log_w.max().reshape(1), "max")
        if not bool(torch.isfinite(top).all()):
            raise InputError("no sample has a finite importance weight (log q is non-finite everywhere); the flow "
                             "diverged: restart from an earlier checkpoint or lower the learning rate")
        w = torch.exp(log_w - top)
        local = torch.stack([w.sum(), (w * w).sum(), (w * torch.where(w > 0, values, torch.zeros_like(values))).sum(),
                             torch.tensor(float(values.numel()), dtype=w.dtype)])
        total = self.all_reduce(local, "sum")
        return total[2] / total[0], total[0] ** 2 / (total[3] * total[1]), int(total[3])

    @torch.no_grad()
    def refresh(
        self,
        sample: Callable[[int, Tensor], tuple[Tensor, Tensor]],
        potential: Callable[[Tensor], Tensor],
        n_samples: int,
        threshold: float = DEFAULT_ENERGY_CAP,
    ) -> None:
        """Refresh every node from ``n_samples`` fresh model samples at its temperature.

        sample: ``(n, T [n] K) -> (x, log q(x | T) [n])`` (e.g. ``Generator.sample``); potential: ``x -> U [n]``
        kJ/mol. Nodes are sampled one at a time to bound memory.
        """
        for index in range(self.n_nodes):
            temperature = self.temperatures[index].expand(n_samples)
            x, log_q = sample(n_samples, temperature)
            self.update_node(index, potential(x), log_q, threshold)

    def mean_energy_at(self, temperature: Tensor) -> Tensor:
        """``Ê_T[U]`` ``[n]`` kJ/mol, linear interpolation in log T between nodes (clamped outside the grid)."""
        if not self.ready:
            raise InputError("the expectation grid has nodes without an estimate; call refresh() first")
        log_nodes = torch.log(self.temperatures)
        log_t = torch.log(temperature.detach().to(torch.float64)).clamp(float(log_nodes[0]), float(log_nodes[-1]))
        upper = torch.searchsorted(log_nodes, log_t).clamp(1, self.n_nodes - 1)
        lower = upper - 1
        fraction = (log_t - log_nodes[lower]) / (log_nodes[upper] - log_nodes[lower])
        return self.mean_energy[lower] + fraction * (self.mean_energy[upper] - self.mean_energy[lower])

    def update_losses(self, temperature: Tensor, loss: Tensor) -> None:
        """Fold per-point residual losses ``[n]`` at temperatures ``[n]`` K into the nearest nodes' running means
        (the batch mean per node pools all ranks' points when :attr:`all_reduce` is set)."""
        index = self.nearest(temperature)
        values = loss.detach().to(torch.float64)
        if self.all_reduce is None:
            means = {k: float(values[index == k].mean()) for k in torch.unique(index).tolist()}
        else:
            totals = torch.zeros(2, self.n_nodes, dtype=torch.float64)
            totals[0].index_add_(0, index, values)
            totals[1].index_add_(0, index, torch.ones_like(values))
            totals = self.all_reduce(totals, "sum")
            means = {k: float(totals[0, k] / totals[1, k]) for k in torch.nonzero(totals[1]).flatten().tolist()}
        for k, batch_mean in means.items():
            old = float(self.loss[k])
            self.loss[k] = batch_mean if math.isnan(old) else (
                self.loss_momentum * old + (1.0 - self.loss_momentum) * batch_mean
            )

    def causality_weights(self, epsilon: float) -> Tensor:
        """Node weights ``[K]``: ``exp(−ε Σ_j L_j)`` over nodes j from T0's node towards k, excluding k itself.

        Equal to 1 at T0's node and non-increasing away from it on both sides; unseen nodes count as L = 0.
        """
        losses = torch.nan_to_num(self.loss, nan=0.0).clamp(min=0.0)
        k0 = self.reference_index
        exponent = torch.zeros_like(losses)
        exponent[k0 + 1:] = torch.cumsum(losses[k0:-1], dim=0)
        exponent[:k0] = torch.flip(torch.cumsum(torch.flip(losses[1:k0 + 1], [0]), dim=0), [0])
        return torch.exp(-epsilon * exponent)

    def causality_weight_at(self, temperature: Tensor, epsilon: float) -> Tensor:
        """Causality weight ``[n]`` at temperatures ``[n]`` K: node weights interpolated log-linearly in log T."""
        log_nodes = torch.log(self.temperatures)
        log_weights = torch.log(self.causality_weights(epsilon))
        log_t = torch.log(temperature.detach().to(torch.float64)).clamp(float(log_nodes[0]), float(log_nodes[-1]))
        upper = torch.searchsorted(log_nodes, log_t).clamp(1, self.n_nodes - 1)
        lower = upper - 1
        fraction = (log_t - log_nodes[lower]) / (log_nodes[upper] - log_nodes[lower])
        return torch.exp(log_weights[lower] + fraction * (log_weights[upper] - log_weights[lower]))

    def free_energy_curve(self) -> Tensor:
        """``log Z(T_k) − log Z(T0)`` ``[K]`` at the nodes from the grid's E[U] (:func:`integrate_free_energy`)."""
        if not self.ready:
            raise InputError("the expectation grid has nodes without an estimate; call refresh() first")
        return integrate_free_energy(self.temperatures, self.mean_energy, self.reference_index)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (plain tensors and floats)."""
        return {
            "reference_temperature": self.reference_temperature,
            "decay": self.decay,
            "loss_momentum": self.loss_momentum,
            "temperatures": self.temperatures.clone(),
            "mean_energy": self.mean_energy.clone(),
            "sample_weight": self.sample_weight.clone(),
            "ess": self.ess.clone(),
            "loss": self.loss.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the node temperatures must match this grid's."""
        nodes = state["temperatures"].to(torch.float64)
        if nodes.shape != self.temperatures.shape or not torch.allclose(nodes, self.temperatures):
            raise InputError("the saved expectation grid has other temperature nodes than this run's; keep "
                             "temperature_min/max, reference temperature and grid_nodes as they were to resume")
        self.decay = float(state["decay"])
        self.loss_momentum = float(state["loss_momentum"])
        for name in ("mean_energy", "sample_weight", "ess", "loss"):
            setattr(self, name, state[name].to(torch.float64).clone())

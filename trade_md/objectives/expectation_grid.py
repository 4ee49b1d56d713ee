"""The expectation grid of TRADE: running estimates of E_T[U] on log-spaced temperature nodes.

Ê_T[U] comes from the model itself by self-normalised importance sampling on flow samples at each node
(:func:`trade_md.trade.importance_estimate`); :class:`ExpectationGrid` keeps these estimates in kJ/mol (T0 is a
node), interpolates E[U] linearly in log T, keeps per-node running residual losses and turns them into causality
weights w_k = exp(−ε Σ_{j from T0's node up to, not including, k} L_j), and integrates the free-energy curve
log Z(T) − log Z(T0) as a self-check. The trainer refreshes it; its lowest node ESS picks the ``best/`` checkpoint;
the ``trade`` objective reads its E[U] (``expectation: grid``) and its causality weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from trade_md.errors import InputError
from trade_md.thermo import kT, reduced_potential, to_kelvin
from trade_md.trade import DEFAULT_ENERGY_CAP, cap_reduced_energy, importance_estimate, integrate_free_energy

__all__ = ["ExpectationGrid"]


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
        u = cap_reduced_energy(reduced_potential(energy.detach().to(torch.float64), t), threshold)
        if self.all_reduce is None:
            estimate, ess = importance_estimate(u * kT(t), u, log_q.detach().to(torch.float64))
            n_total = energy.numel()
        else:
            estimate, ess, n_total = self._pooled_estimate(u * kT(t), u, log_q.detach().to(torch.float64))
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
                             "temperatures.range, the reference temperature and grid.nodes as they were to resume")
        self.decay = float(state["decay"])
        self.loss_momentum = float(state["loss_momentum"])
        for name in ("mean_energy", "sample_weight", "ess", "loss"):
            setattr(self, name, state[name].to(torch.float64).clone())

"""The harmonic temperature dependence as a fixed-form last flow layer (:class:`ThermalScaling`).

Each feature is scaled about its centre by ``(T/T0)^(a/2)``, made a bijection of its domain. The layer is the
identity at T0 and gives TRADE the right starting point for bonds, angles and stiff dihedrals, which an untrained
conditioner would otherwise hold at their T0 widths at every temperature. Differentiable twice.

>>> layer = ThermalScaling([Domain.circular(), Domain.interval(0.0, 1.0)])
>>> z = torch.tensor([[0.3, 0.2]])
>>> torch.allclose(layer(z, torch.zeros(1, 1))[0], z)  # the identity at T0 (context 0)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trade_md.splines import Domain, wrap_angles

__all__ = ["STIFF_CIRCULAR_STD", "ThermalScaling"]

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
        interval_rows = [i for i, dom in enumerate(domains) if not dom.is_circular]
        angle_rows = [i for i, dom in enumerate(domains) if dom.is_circular]
        self.register_buffer("_interval_rows", torch.tensor(interval_rows, dtype=torch.long), persistent=False)
        self.register_buffer("_angle_rows", torch.tensor(angle_rows, dtype=torch.long), persistent=False)
        self.register_buffer("_merge", torch.argsort(torch.tensor(interval_rows + angle_rows, dtype=torch.long)),
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
            return torch.where(self._circular, wrap_angles(self.centre), interval).detach()

    def _scale(self, rows: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``(s, log s)`` ``[len(rows), n]`` of the features ``rows`` at context ``log(T / T0)`` ``[1, n]`` (``1 / s``
        and ``−log s`` when ``inverse``)."""
        log_s = (0.5 * self.exponent.to(context.dtype)).index_select(0, rows).unsqueeze(1) * context
        s = torch.exp(log_s)
        return (1.0 / s, -log_s) if inverse else (s, log_s)

    def _intervals(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The map of the interval features (rows ``_interval_rows`` of ``z [d, n]``) and its log-derivative."""
        rows, dtype = self._interval_rows, z.dtype
        s, log_s = self._scale(rows, context, inverse)
        centre = self.centre.to(dtype).index_select(0, rows).unsqueeze(1)
        low = self._low.to(dtype).index_select(0, rows).unsqueeze(1)
        length = self._length.to(dtype).index_select(0, rows).unsqueeze(1)
        v = (2.0 * (z.index_select(0, rows) - low) / length - 1.0).clamp(-1.0 + _EDGE, 1.0 - _EDGE)
        w = _unfold(v)
        v_new, log_fold_new = _fold(centre + s * (w - centre))
        _, log_fold = _fold(w)
        return low + 0.5 * length * (v_new + 1.0), log_s + log_fold_new - log_fold

    def _angles(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The map of the circular features (rows ``_angle_rows`` of ``z [d, n]``) and its log-derivative."""
        rows = self._angle_rows
        s, log_s = self._scale(rows, context, inverse)
        centre = self.centre.to(z.dtype).index_select(0, rows).unsqueeze(1)
        h = 0.5 * wrap_angles(z.index_select(0, rows) - centre)
        angle = wrap_angles(centre + 2.0 * torch.atan2(s * torch.sin(h), torch.cos(h)))
        return angle, log_s - torch.log(torch.cos(h) ** 2 + (s * torch.sin(h)) ** 2)

    def map_columns(self, z: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The layer on features stored as rows, ``z [d, n]`` and ``context [1, n]`` (the flow's layout):
        ``(z' [d, n], log|dz'/dz| [n])``; ``inverse`` from the feature side to the flow side. Interval and circular
        features are mapped apart (each branch only on its own rows)."""
        interval, interval_log = self._intervals(z, context, inverse)
        angle, angle_log = self._angles(z, context, inverse)
        out = torch.cat([interval, angle]).index_select(0, self._merge)
        return out, torch.cat([interval_log, angle_log]).sum(dim=0)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Flow side to feature side at context ``[n, 1]``: ``(z' [n, d], log|dz'/dz| [n])``."""
        out, log_derivative = self.map_columns(z.t(), context.t(), inverse=False)
        return out.t(), log_derivative

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Feature side to flow side: ``(z' [n, d], log|dz'/dz| [n])``."""
        out, log_derivative = self.map_columns(z.t(), context.t(), inverse=True)
        return out.t(), log_derivative

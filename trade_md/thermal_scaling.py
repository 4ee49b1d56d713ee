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
        h = 0.5 * wrap_angles(z - centre)
        angle = wrap_angles(centre + 2.0 * torch.atan2(s * torch.sin(h), torch.cos(h)))
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

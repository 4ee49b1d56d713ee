"""The temperature-conditioned Boltzmann generator ``q(x | T)``: a coordinate transform composed with a flow.

:class:`Generator` feeds the flow (:class:`~trade_md.flows.ConditionalSplineFlow`) the context ``log(T / T0)``
(:func:`trade_md.thermo.flow_input`) and composes it with a :class:`CoordinateTransform` from physical coordinates
``x`` to features ``z``: :class:`BoxCoordinates` for toys, :class:`~trade_md.ic.InternalCoordinates` for molecules
(built by :func:`molecule_generator`). :meth:`Generator.config` and :meth:`Generator.from_config` (with a state
dict) store and rebuild a model; checkpoints (:mod:`trade_md.formats.checkpoint`) hold both.

>>> box = BoxCoordinates(-1.0, 1.0, dim=2)
>>> model = Generator(box, ConditionalSplineFlow(box.domains, n_layers=2, hidden=8), 300.0).double()
>>> x, log_q = model.sample(4, 450.0)
>>> torch.allclose(model.log_prob(x, 450.0), log_q)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from trade_md.errors import InputError
from trade_md.flows import ConditionalSplineFlow
from trade_md.ic import DEFAULT_WIDTH_SIGMAS, InternalCoordinates
from trade_md.splines import Domain
from trade_md.thermo import flow_input, to_kelvin, to_nm

__all__ = ["ADDABLE_FLOW_PARTS", "BoxCoordinates", "CoordinateTransform", "Generator", "molecule_generator"]


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
        return InternalCoordinates.from_config(config)
    raise InputError(f"unknown coordinate transform type {kind!r} in the model config; expected 'box' or "
                     "'internal' (was the checkpoint written by another version of trade-md?)")


ADDABLE_FLOW_PARTS: dict[str, str] = {"thermal_scaling": ".scaling."}
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
        value = flow_input(temperature, self.reference_temperature)
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
        only away from T0, so the model at T0 is the saved one. They start at the identity (the scaling layer still
        needs :meth:`initialise_thermal_scaling`).
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
    system: Any,
    training_positions: Any,
    reference_temperature: float,
    *,
    width_sigmas: float = DEFAULT_WIDTH_SIGMAS,
    dihedral_windows: bool = False,
    **flow_kwargs: Any,
) -> Generator:
    """A :class:`Generator` over the internal coordinates of ``system`` (float32; call ``.double()`` for float64).

    system: anything with ``.topology`` (openmm Topology) and ``.positions`` ([atoms, 3] nm or a quantity), plus
    ``.constrained_bonds()`` (a ``MolecularSystem``) or ``.system`` (an ``openmm.System``) for bond constraints;
    training_positions: ``[n, atoms, 3]`` nm (normalisation statistics, :meth:`InternalCoordinates.of_system`);
    reference_temperature: ``T0`` in K; width_sigmas, dihedral_windows: the normalisation of the internal coordinates
    (:class:`~trade_md.ic.InternalCoordinates`: stiff dihedrals on windows instead of circles); flow_kwargs: :class:`~trade_md.flows.ConditionalSplineFlow` arguments
    (n_layers, hidden, n_hidden_layers, n_bins, seed, thermal_scaling; the scaling layer's centres
    and exponents come from ``training_positions``).
    """
    coordinates = InternalCoordinates.of_system(system, training_positions, width_sigmas=width_sigmas,
                                                dihedral_windows=dihedral_windows)
    flow = ConditionalSplineFlow(coordinates.domains, context_dim=1, **flow_kwargs)
    generator = Generator(coordinates, flow, to_kelvin(reference_temperature)).float()
    if flow.scaling is not None:
        generator.initialise_thermal_scaling(to_nm(training_positions))
    return generator

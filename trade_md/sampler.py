"""Weighted sampling from a trained generator: a drop-in sampler for free-energy workflows.

A :class:`Sampler` draws conformations from ``q(x | T)`` at any temperature of the trained range and attaches
potential energies (kJ/mol), ``log q`` and self-normalised importance log-weights
``log w = −U/(k_B T) − log q`` (normalised so that ``logsumexp(log w) = 0``). Samples with a wrong-handed chiral
centre or a non-finite energy get weight zero (``log w = −inf``), so reweighted estimates stay honest.

A *defensive mixture* proposal (``mixture=[(T_j, f_j), ...]``) draws a fraction ``f_j`` of the samples from the
same generator at other temperatures ``T_j`` and weights every sample by the mixture density
``q_mix(x) = (1 − Σ f_j) q(x | T) + Σ f_j q(x | T_j)``. The weights stay exact for any components; a hotter
component bounds the largest weights where ``q(x | T)`` under-covers the Boltzmann density (the rare huge weights
that set the Kish ESS of a flow), at the price of one extra density evaluation per component and sample.

A *basin calibration* (:mod:`trade_md.basins`, ``calibration=``) instead tilts ``q(x | T)`` towards the Boltzmann
share of each conformational basin (cis peptide bonds, φ > 0) and draws from the tilted density by rejection;
``log_q`` is then the tilted density's. Weights stay exact; the two proposals do not combine.

*Annealing* (:mod:`trade_md.annealing`, ``annealing=Annealing(...)``) moves every draw of ``q(x | T)`` through a
ladder of densities towards the Boltzmann density before weighting it (annealed importance sampling): exact
weights with fewer heavy ones, at ``1 + (levels − 1) × steps`` energies per sample. ``log_q`` then holds
``−U/(k_B T) − log W`` (the log-density a plain proposal would need for the same weight ``W``). It starts from
``q(x | T)`` itself, so it combines with neither a mixture nor a calibration.

Loading a trained model (:meth:`Sampler.from_checkpoint`, or a shipped one by name: :meth:`Sampler.from_pretrained`) goes through :mod:`trade_md.formats.checkpoint` and
imports no training code. The command ``trade-md sample`` lives in :mod:`trade_md.cli.sample`.

>>> from trade_md.toys import HarmonicOscillator, toy_generator
>>> toy = HarmonicOscillator()
>>> sampler = Sampler(toy_generator(toy, reference_temperature=300.0, n_layers=2, hidden=8),
...                   lambda x: toy.potential(torch.as_tensor(x)).numpy())
>>> samples = sampler.sample(100, 300.0)
>>> samples.positions.shape, round(float(samples.weights.sum()), 12)
((100, 2), 1.0)
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from trade_md.annealing import Annealing, anneal
from trade_md.basins import BasinCalibration, feature_matrix, tilt
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.files import atomic_write_path
from trade_md.progress import progress_bar
from trade_md.samples import SampleSet
from trade_md.systems import pretrained_model
from trade_md.thermo import reduced_potential, to_kelvin

__all__ = ["OutOfRangeWarning", "Sampler", "write_samples"]

EnergyFunction = Callable[[np.ndarray], np.ndarray]
"""positions ``[n, ...]`` (nm) → potential energies ``[n]`` (kJ/mol, +inf where undefined)."""


class OutOfRangeWarning(UserWarning):
    """A temperature outside the generator's trained range: its samples are an extrapolation."""


class Sampler:
    """Draw weighted samples from a generator at any temperature of its trained range.

    generator: a :class:`trade_md.generator.Generator`; energy: positions → U (kJ/mol), e.g.
    ``EnergyBridge.energies``; temperature_range: trained ``(T_min, T_max)`` in K or None (no check);
    outside the range the sampler warns (:class:`OutOfRangeWarning`) or, with ``out_of_range="error"``, refuses.
    bridge: an energy bridge the sampler owns and closes in :meth:`close`. calibration: a
    :class:`trade_md.basins.BasinCalibration` of this generator, used by default when set (``calibrated=False`` in
    :meth:`sample` bypasses it). system: the system the generator was trained for (set by :meth:`from_checkpoint`).
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        energy: EnergyFunction,
        *,
        temperature_range: tuple[float, float] | None = None,
        topology: Any | None = None,
        drop_wrong_chirality: bool = True,
        out_of_range: str = "warn",
        bridge: Any | None = None,
        calibration: BasinCalibration | None = None,
        system: Any | None = None,
    ) -> None:
        if out_of_range not in ("warn", "error"):
            raise InputError(f"out_of_range must be 'warn' or 'error', got {out_of_range!r}")
        self.generator = generator
        self.energy = energy
        self.temperature_range = temperature_range
        self.topology = topology
        self.drop_wrong_chirality = drop_wrong_chirality
        self.out_of_range = out_of_range
        self._bridge = bridge
        self.system = system
        self.calibration = calibration
        if calibration is not None:
            calibration.check_model(generator)

    def check_temperature(self, temperature: Any) -> float:
        """Temperature in K, validated against the trained range (warning or error outside it)."""
        value = to_kelvin(temperature)
        if self.temperature_range is None:
            return value
        low, high = self.temperature_range
        if not low <= value <= high:
            message = (f"{value:g} K lies outside the generator's trained range {low:g}-{high:g} K; samples there "
                       "are an extrapolation (check the ESS), or train over a wider range")
            if self.out_of_range == "error":
                raise InputError(message)
            warnings.warn(message, OutOfRangeWarning, stacklevel=2)
        return value

    @classmethod
    def from_checkpoint(
        cls, model: str | os.PathLike, *, n_workers: int = 1, platform: str = "auto", device: str = "cpu",
        calibrated: bool = False, **kwargs: Any,
    ) -> Sampler:
        """A sampler for a trained run directory: its generator, its system's energy (an :class:`EnergyBridge`
        for molecules, the analytic potential for toys) and its trained temperature range. calibrated: use the
        run's basin calibration (``MODEL/basin_calibration.json``, made by ``trade-md calibrate``)."""
        trained = load_generator(model, device=device)
        generator, system = trained.generator, trained.system
        if calibrated:
            kwargs["calibration"] = BasinCalibration.of_run(model)
        kwargs.setdefault("system", system)
        t0 = generator.reference_temperature
        temperature_range = trained.trained_range or (t0, t0)  # a model trained at T0 only
        if hasattr(system, "system"):
            bridge = EnergyBridge(system, n_workers=n_workers, platform=platform)
            return cls(generator, bridge.energies, temperature_range=temperature_range, topology=system.topology,
                       bridge=bridge, **kwargs)

        def toy_energy(positions: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return system.potential(torch.as_tensor(positions)).double().numpy()

        return cls(generator, toy_energy, temperature_range=temperature_range, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> Sampler:
        """A sampler for the generator shipped with built-in system ``name`` (e.g. ``"alanine-dipeptide"``), with
        the keywords of :meth:`from_checkpoint`. How it was made and what it measures: the card
        ``trade_md.systems.pretrained_model(name) / "README.md"``."""
        return cls.from_checkpoint(pretrained_model(name), **kwargs)

    def close(self) -> None:
        """Shut down the energy workers this sampler started (if any)."""
        if self._bridge is not None:
            self._bridge.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_mixture(self, mixture: Sequence[tuple[Any, float]]) -> tuple[tuple[float, float], ...]:
        """Mixture components as ``((T_j K, f_j), ...)``, validated: ``T_j > 0``, ``f_j > 0``, ``Σ f_j <= 1``.

        Components may lie outside the trained range: the weights are exact for any proposal.
        """
        components = tuple((to_kelvin(t), float(f)) for t, f in mixture)
        fractions = [f for _, f in components]
        if any(not (f > 0.0) for f in fractions) or sum(fractions) > 1.0 + 1e-12:
            raise InputError(f"mixture fractions must be > 0 and sum to at most 1, got {fractions}; the rest of "
                             "the samples come from the target temperature")
        return components

    def _use_calibration(self, calibrated: bool, mixture: tuple[tuple[float, float], ...]) -> bool:
        if not calibrated or self.calibration is None:
            return False
        if mixture:
            raise InputError("a defensive mixture and a basin calibration do not combine; use one of them (for a "
                             "mixture, pass calibrated=False or leave out --calibrated)")
        return True

    def _check_annealing(
        self, annealing: Annealing | None, mixture: tuple[tuple[float, float], ...], calibrated: bool
    ) -> Annealing | None:
        if annealing is None:
            return None
        if not isinstance(annealing, Annealing):
            raise InputError(f"annealing must be a trade_md.annealing.Annealing, got {type(annealing).__name__}")
        if mixture or calibrated:
            raise InputError("annealing starts from q(x | T) itself and combines with neither a mixture nor a basin "
                             "calibration; leave those out (calibrated=False, no --calibrated / --mixture)")
        return annealing

    def _calibrated_draw(self, n: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact draws of the basin-calibrated proposal by rejection from ``q(x | T)``: ``(x, log q')``."""
        assert self.calibration is not None
        a, log_z = self.calibration.at(temperature)
        ceiling = max(0.0, float(np.max(a, initial=0.0)))
        acceptance = min(1.0, math.exp(log_z - ceiling))
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        count = 0
        while count < n:
            size = min(int(math.ceil(1.2 * (n - count) / acceptance)) + 16, 20 * n + 16)
            x, log_q = self.generator.sample(size, temperature)
            log_tilt = tilt(feature_matrix(self.calibration.features, x.detach().cpu().double().numpy()), a)
            accept = np.flatnonzero(rng.random(size) < np.exp(log_tilt - ceiling))[: n - count]
            index = torch.as_tensor(accept, device=x.device)
            kept.append((x[index], log_q[index].double() + torch.as_tensor(log_tilt[accept] - log_z, device=x.device)))
            count += accept.size
        return torch.cat([x for x, _ in kept]), torch.cat([log_q for _, log_q in kept])

    @torch.no_grad()
    def _batch(
        self, n: int, temperature: float, mixture: tuple[tuple[float, float], ...] = (), calibrated: bool = False,
        annealing: Annealing | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        if annealing is not None:
            draws = anneal(self.generator, self.energy, n, temperature, annealing,
                           drop_wrong_chirality=self.drop_wrong_chirality)
            with np.errstate(invalid="ignore"):
                log_q = np.where(np.isfinite(draws.log_weights),
                                 -reduced_potential(draws.energies, temperature) - draws.log_weights, np.inf)
            return (draws.positions.detach().cpu().double().numpy(), draws.energies, log_q, draws.wrong_chirality,
                    draws.acceptance)
        if calibrated:
            x, log_q = self._calibrated_draw(n, temperature)
        elif not mixture:
            x, log_q = self.generator.sample(n, temperature)
        else:
            temperatures = torch.tensor([temperature] + [t for t, _ in mixture], dtype=torch.float64)
            fractions = torch.tensor([1.0 - sum(f for _, f in mixture)] + [f for _, f in mixture],
                                     dtype=torch.float64).clamp(min=0.0)
            component = torch.multinomial(fractions, n, replacement=True)
            x, _ = self.generator.sample(n, temperatures[component])
            log_q = torch.logsumexp(torch.stack([
                torch.log(f) + self.generator.log_prob(x, float(t)).double()
                for t, f in zip(temperatures, fractions) if f > 0
            ]), dim=0)
        wrong = self.generator.chirality_flags(x).cpu().numpy().astype(bool)
        positions = x.detach().cpu().double().numpy()
        energies = np.asarray(self.energy(positions), dtype=np.float64)
        return positions, energies, log_q.detach().cpu().double().numpy(), wrong, None

    def iter_batches(
        self, n: int, temperature: Any, *, batch_size: int = 4096, progress: bool = True,
        mixture: Sequence[tuple[Any, float]] = (), calibrated: bool = True, annealing: Annealing | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(positions, energies kJ/mol, log q, wrong_chirality)`` per batch; memory bounded by the batch.
        With a ``mixture``, the calibration or ``annealing`` (see :meth:`sample`), ``log q`` is that proposal's."""
        plan = self._plan(n, temperature, mixture, calibrated, annealing)
        for batch in self._batches(n, plan, batch_size, progress):
            yield batch[:4]

    def _plan(
        self, n: int, temperature: Any, mixture: Sequence[tuple[Any, float]], calibrated: bool,
        annealing: Annealing | None,
    ) -> _Plan:
        """The validated proposal of a draw of ``n`` samples (clear errors for every bad argument)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"the number of samples must be a whole number >= 1, got {n!r} (the call is "
                             "sample(n, temperature))")
        value = self.check_temperature(temperature)
        components = self.check_mixture(mixture)
        tilted = self._use_calibration(calibrated, components)
        return _Plan(value, components, tilted, self._check_annealing(annealing, components, tilted))

    def _batches(
        self, n: int, plan: _Plan, batch_size: int, progress: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
        """:meth:`iter_batches` with each batch's annealing acceptance rates (None without annealing) appended."""
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        with progress_bar(total=n, desc=f"sampling {plan.temperature:g} K", unit="samples", enabled=progress) as bar:
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                yield self._batch(size, plan.temperature, plan.mixture, plan.calibrated, plan.annealing)
                bar.update(size)

    def log_weights(
        self, energies: np.ndarray, log_q: np.ndarray, wrong_chirality: np.ndarray, temperature: float
    ) -> np.ndarray:
        """Normalised log-weights ``[n]``: ``−U/(k_B T) − log q``, ``−inf`` for dropped samples, logsumexp 0."""
        log_w = -reduced_potential(energies, temperature) - log_q
        dropped = ~np.isfinite(log_w)
        if self.drop_wrong_chirality:
            dropped |= wrong_chirality
        log_w = np.where(dropped, -np.inf, log_w)
        if not np.isfinite(log_w).any():
            raise InputError(f"every sample at {temperature:g} K was dropped (non-finite energy or wrong chirality); "
                             "the generator is untrained or broken for this temperature")
        return log_w - logsumexp(log_w)

    def sample(
        self, n: int, temperature: Any, *, batch_size: int = 4096, progress: bool = True,
        mixture: Sequence[tuple[Any, float]] = (), calibrated: bool = True, annealing: Annealing | None = None,
    ) -> SampleSet:
        """``n`` weighted samples at ``temperature`` (float K or ``openmm.unit`` quantity), drawn in batches.

        mixture: defensive components ``[(T_j, f_j), ...]`` (K or quantities; fractions ``> 0``, ``Σ f_j <= 1``):
        each sample comes from ``q(x | T_j)`` with probability ``f_j`` and from ``q(x | T)`` otherwise, and is
        weighted against the mixture density (see the module docs). Empty: ``q(x | T)`` alone.
        calibrated: draw from the basin-calibrated proposal when the sampler has a calibration (default);
        False: from ``q(x | T)`` itself. annealing: move each draw towards the Boltzmann density first
        (:class:`trade_md.annealing.Annealing`; needs ``calibrated=False`` on a calibrated sampler).
        """
        plan = self._plan(n, temperature, mixture, calibrated, annealing)
        parts = list(self._batches(n, plan, batch_size, progress))
        positions, energies, log_q, wrong = (np.concatenate(column) for column in list(zip(*parts))[:4])
        return SampleSet(positions, energies, log_q, self.log_weights(energies, log_q, wrong, plan.temperature),
                         wrong, plan.temperature, plan.mixture, plan.calibrated, plan.annealing,
                         _mean_acceptance(parts))


@dataclass(frozen=True)
class _Plan:
    """A validated draw: temperature K, mixture components, calibrated proposal or not, annealing ladder."""

    temperature: float
    mixture: tuple[tuple[float, float], ...]
    calibrated: bool
    annealing: Annealing | None


def _mean_acceptance(batches: Sequence[tuple[np.ndarray, ...]]) -> np.ndarray | None:
    """Per-level annealing acceptance rates averaged over batches in proportion to their sizes (None: no annealing)."""
    rates = [(len(batch[1]), batch[4]) for batch in batches if batch[4] is not None]
    if not rates:
        return None
    sizes = np.array([size for size, _ in rates], dtype=np.float64)
    return np.sum([size * rate for size, rate in rates], axis=0) / sizes.sum()


def write_samples(
    sampler: Sampler, n: int, temperature: Any, out: str | os.PathLike, *, batch_size: int = 4096,
    progress: bool = True, mixture: Sequence[tuple[Any, float]] = (), calibrated: bool = True,
    annealing: Annealing | None = None,
) -> dict[str, Any]:
    """Stream ``n`` samples to ``out/samples.dcd`` (+ ``topology.pdb``) and ``out/samples.npz`` in batches.

    Positions never sit in memory all at once; energies, log q and log-weights (``[n]`` each) do. Both files are
    written to temp names and renamed when complete. Returns a summary (n, T, ESS, tail k, wrong-chirality
    fraction, annealing acceptance rates or None).
    """
    import mdtraj

    if sampler.topology is None:
        raise InputError("streaming to a trajectory needs the molecule's topology; this sampler has none")
    plan = sampler._plan(n, temperature, mixture, calibrated, annealing)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    topology = mdtraj.Topology.from_openmm(sampler.topology)
    batches: list[tuple[np.ndarray, ...]] = []
    with atomic_write_path(directory / "samples.dcd") as temp:
        with mdtraj.formats.DCDTrajectoryFile(str(temp), "w", force_overwrite=True) as dcd:
            for positions, *rest in sampler._batches(n, plan, batch_size, progress):
                dcd.write(10.0 * positions.astype(np.float32))  # DCD stores Å
                batches.append((positions[:1], *rest))
    energies, log_q, wrong = (np.concatenate(column) for column in list(zip(*batches))[1:4])
    log_w = sampler.log_weights(energies, log_q, wrong, plan.temperature)
    with atomic_write_path(directory / "topology.pdb") as temp:
        mdtraj.Trajectory(batches[0][0].astype(np.float32), topology).save_pdb(str(temp))
    samples = SampleSet(np.empty((len(energies), 0)), energies, log_q, log_w, wrong, plan.temperature, plan.mixture,
                        plan.calibrated, plan.annealing, _mean_acceptance(batches))
    samples.save(directory)
    return {"n": int(n), "temperature_k": plan.temperature, "ess": samples.ess, "pareto_k": samples.pareto_k,
            "wrong_chirality_fraction": float(np.mean(wrong)), "out": str(directory),
            "acceptance": None if samples.acceptance is None else samples.acceptance.tolist()}

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

>>> import numpy as np
>>> u_kn = reduced_potentials(np.array([1.0, 2.0]), [300.0, 600.0])
>>> u_kn.shape
(2, 2)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp
from tqdm.auto import tqdm

from trade_md.annealing import Annealing, anneal
from trade_md.basins import BasinCalibration, feature_matrix, tilt
from trade_md.errors import InputError
from trade_md.formats.files import atomic_write_path
from trade_md.analysis.metrics import PARETO_K_UNRELIABLE, kish_ess, normalized_weights, pareto_k
from trade_md.thermo import KB, temperature_array, to_kelvin

__all__ = ["SampleSet", "Sampler", "reduced_potentials", "write_samples", "parse_mixture", "OutOfRangeWarning"]

EnergyFunction = Callable[[np.ndarray], np.ndarray]
"""positions ``[n, ...]`` (nm) → potential energies ``[n]`` (kJ/mol, +inf where undefined)."""


class OutOfRangeWarning(UserWarning):
    """A temperature outside the generator's trained range: its samples are an extrapolation."""


def reduced_potentials(energies: np.ndarray, temperatures: Sequence[float] | np.ndarray) -> np.ndarray:
    """Reduced potentials ``u_kn [k, n] = U_n / (k_B T_k)`` for pymbar, from energies ``[n]`` kJ/mol and T ``[k]`` K.

    Combine generator samples with MD in MBAR by stacking these columns with the MD frames' columns.
    """
    betas = 1.0 / (KB * temperature_array(temperatures))
    return betas[:, None] * np.asarray(energies, dtype=np.float64)[None, :]


@dataclass
class SampleSet:
    """Samples at one temperature with their importance weights.

    positions: ``[n, atoms, 3]`` nm (``[n, d]`` for toys); energies: ``[n]`` kJ/mol; log_q: ``[n]`` nats;
    log_weights: ``[n]`` normalised (``logsumexp = 0``, ``−inf`` for dropped samples); wrong_chirality: ``[n]``;
    mixture: the proposal's other components ``(T_j K, fraction f_j)`` (empty: ``q(x | T)`` alone), in which case
    ``log_q`` is the mixture's log density; calibrated: drawn from the basin-calibrated proposal (``log_q`` is its
    log density, see :mod:`trade_md.basins`); annealing: drawn by annealed importance sampling (``log_q`` is
    ``−U/(k_B T) − log W``, see :mod:`trade_md.annealing`) with the Metropolis acceptance rate of each intermediate
    level in ``acceptance`` ``[levels − 1]``.
    """

    positions: np.ndarray
    energies: np.ndarray
    log_q: np.ndarray
    log_weights: np.ndarray
    wrong_chirality: np.ndarray
    temperature: float
    mixture: tuple[tuple[float, float], ...] = ()
    calibrated: bool = False
    annealing: Annealing | None = None
    acceptance: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """Normalised importance weights ``[n]`` summing to 1."""
        return normalized_weights(self.log_weights)

    @property
    def ess(self) -> float:
        """Kish effective sample size as a fraction of ``n``."""
        return kish_ess(self.log_weights)

    @property
    def pareto_k(self) -> float:
        """Tail shape of the weights (:func:`trade_md.analysis.metrics.pareto_k`); above 0.7 this draw's ESS is unreliable."""
        return pareto_k(self.log_weights)

    def resample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` positions drawn with replacement in proportion to the weights (approximately Boltzmann-distributed)."""
        index = np.random.default_rng(seed).choice(len(self), size=n, replace=True, p=self.weights)
        return self.positions[index]

    def to_mdtraj(self, topology: Any) -> Any:
        """An ``mdtraj.Trajectory`` of the samples; topology: ``openmm.app.Topology`` or ``mdtraj.Topology``."""
        import mdtraj

        if self.positions.ndim != 3:
            raise InputError("only molecular samples ([n, atoms, 3]) can become an mdtraj trajectory")
        if not isinstance(topology, mdtraj.Topology):
            topology = mdtraj.Topology.from_openmm(topology)
        return mdtraj.Trajectory(self.positions.astype(np.float32), topology)

    def _annealing_record(self) -> dict[str, np.ndarray]:
        if self.annealing is None:
            return {}
        return {"annealing_levels": np.int64(self.annealing.levels), "annealing_steps": np.int64(self.annealing.steps),
                "annealing_step_size": np.float64(self.annealing.step_size),
                "annealing_acceptance": np.asarray(self.acceptance, dtype=np.float64)}

    def save(self, directory: str | os.PathLike, topology: Any | None = None) -> Path:
        """Write ``samples.npz`` (energies, log q, log-weights, chirality, T) and, with a topology,
        ``samples.dcd`` + ``topology.pdb``. Files are written atomically. Returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if topology is not None:
            trajectory = self.to_mdtraj(topology)
            with atomic_write_path(out / "topology.pdb") as temp:
                trajectory[0].save_pdb(str(temp))
            with atomic_write_path(out / "samples.dcd") as temp:
                trajectory.save_dcd(str(temp))
        with atomic_write_path(out / "samples.npz") as temp:
            with open(temp, "wb") as handle:
                np.savez(
                    handle,
                    energies_kj_per_mol=self.energies,
                    log_q=self.log_q,
                    log_weights=self.log_weights,
                    wrong_chirality=self.wrong_chirality,
                    temperature_k=np.float64(self.temperature),
                    mixture_temperatures_k=np.array([t for t, _ in self.mixture], dtype=np.float64),
                    mixture_fractions=np.array([f for _, f in self.mixture], dtype=np.float64),
                    basin_calibrated=np.bool_(self.calibrated),
                    **self._annealing_record(),
                    **({} if topology is not None else {"positions_nm": self.positions}),
                )
        return out


class Sampler:
    """Draw weighted samples from a generator at any temperature of its trained range.

    generator: a :class:`trade_md.flows.Generator`; energy: positions → U (kJ/mol), e.g.
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
        from trade_md.train import load_generator

        generator, system, config = load_generator(model, device=device)
        if calibrated:
            kwargs["calibration"] = BasinCalibration.of_run(model)
        kwargs.setdefault("system", system)
        if config.mode == "trade":
            temperature_range = (config.temperature_min, config.temperature_max)
        else:  # a maximum-likelihood model is trained at T0 only
            temperature_range = (generator.reference_temperature, generator.reference_temperature)
        if hasattr(system, "system"):
            from trade_md.energy import EnergyBridge

            bridge = EnergyBridge(system, n_workers=n_workers, platform=platform)
            return cls(generator, bridge.energies, temperature_range=temperature_range, topology=system.topology,
                       bridge=bridge, **kwargs)

        def toy_energy(positions: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return system.potential(torch.as_tensor(positions)).double().numpy()

        return cls(generator, toy_energy, temperature_range=temperature_range, **kwargs)

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
                                 -draws.energies / (KB * temperature) - draws.log_weights, np.inf)
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
        with tqdm(total=n, desc=f"sampling {plan.temperature:g} K", unit="samples", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                yield self._batch(size, plan.temperature, plan.mixture, plan.calibrated, plan.annealing)
                bar.update(size)

    def log_weights(
        self, energies: np.ndarray, log_q: np.ndarray, wrong_chirality: np.ndarray, temperature: float
    ) -> np.ndarray:
        """Normalised log-weights ``[n]``: ``−U/(k_B T) − log q``, ``−inf`` for dropped samples, logsumexp 0."""
        log_w = -energies / (KB * temperature) - log_q
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


def register_cli(subparsers: Any) -> None:
    """``trade-md sample``: weighted samples of a trained generator at one temperature."""
    parser = subparsers.add_parser(
        "sample", help="draw weighted samples from a trained generator",
        description="Draw samples at one temperature and write samples.dcd + topology.pdb (mdtraj-readable) and "
                    "samples.npz (energies_kj_per_mol, log_q, normalised log_weights, wrong_chirality).",
    )
    parser.add_argument("--model", required=True, help="run directory written by `trade-md train`")
    parser.add_argument("--temperature", type=float, required=True, help="temperature in K")
    parser.add_argument("--n", type=int, default=10000, help="number of samples (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=4096, help="samples per batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="energy worker processes (default %(default)s)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform for energies (default %(default)s)")
    parser.add_argument("--mixture", action="append", default=[], metavar="T:FRACTION",
                        help="defensive mixture component: this fraction of the samples from the generator at T K "
                             "(repeatable; e.g. --mixture 700:0.2 for a 600 K target); exact weights either way")
    parser.add_argument("--calibrated", action="store_true",
                        help="draw from the basin-calibrated proposal (MODEL/basin_calibration.json, made by "
                             "`trade-md calibrate`): rare basins at their estimated Boltzmann share")
    parser.add_argument("--anneal", metavar="LEVELS:STEPS:STEP_SIZE",
                        help="annealed importance sampling: move each draw through LEVELS densities towards the "
                             "Boltzmann one, STEPS Metropolis steps each of STEP_SIZE x each coordinate's range "
                             "(e.g. 10:2:0.03, 19 energies per sample); exact weights, fewer heavy ones")
    parser.add_argument("--strict-range", action="store_true",
                        help="refuse temperatures outside the trained range instead of warning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main, command="sample")


def parse_mixture(items: Sequence[str], option: str = "--mixture") -> list[tuple[float, float]]:
    """Command-line mixture components ``["700:0.2", ...]`` → ``[(700.0, 0.2), ...]`` (temperatures in K, or
    ratios to the target temperature for ``--mixture-ratio``); a clear error naming ``option`` otherwise."""
    components = []
    for item in items:
        try:
            value, fraction = (float(part) for part in item.split(":"))
        except ValueError:
            raise InputError(f"{option} takes two numbers as A:FRACTION (e.g. 700:0.2), got {item!r}") from None
        components.append((value, fraction))
    return components


ACCEPTANCE_RANGE = (0.1, 0.95)
"""Annealing acceptance rates outside this range get a hint to change the step size."""


def _main(args: argparse.Namespace) -> int:
    mixture = parse_mixture(args.mixture)
    annealing = None if args.anneal is None else Annealing.parse(args.anneal)
    with Sampler.from_checkpoint(args.model, n_workers=args.workers, platform=args.platform,
                                 calibrated=args.calibrated,
                                 out_of_range="error" if args.strict_range else "warn") as sampler:
        if sampler.topology is None:
            samples = sampler.sample(args.n, args.temperature, batch_size=args.batch_size,
                                     progress=not args.no_progress, mixture=mixture, annealing=annealing)
            samples.save(args.out)
            summary = {"n": args.n, "temperature_k": samples.temperature, "ess": samples.ess,
                       "pareto_k": samples.pareto_k, "out": args.out,
                       "acceptance": None if samples.acceptance is None else samples.acceptance.tolist()}
        else:
            summary = write_samples(sampler, args.n, args.temperature, args.out, batch_size=args.batch_size,
                                    progress=not args.no_progress, mixture=mixture, annealing=annealing)
    proposal = " from the basin-calibrated proposal" if args.calibrated else ""
    if annealing is not None:
        proposal = f" by {annealing.describe()}"
    print(f"{summary['n']} samples at {summary['temperature_k']:g} K{proposal}, Kish ESS {100 * summary['ess']:.1f} %, "
          f"tail k {summary['pareto_k']:.2f} -> {summary['out']}")
    if summary["acceptance"]:
        rates = np.asarray(summary["acceptance"])
        print(f"annealing acceptance per level: {' '.join(f'{rate:.2f}' for rate in rates)}")
        if np.nanmin(rates) < ACCEPTANCE_RANGE[0] or np.nanmax(rates) > ACCEPTANCE_RANGE[1]:
            print(f"hint: acceptance rates outside {ACCEPTANCE_RANGE[0]}-{ACCEPTANCE_RANGE[1]} waste energy "
                  "evaluations; a smaller STEP_SIZE raises them, a larger one lowers them", file=sys.stderr)
    if summary["pareto_k"] > PARETO_K_UNRELIABLE:
        print(f"warning: the weights' tail shape k = {summary['pareto_k']:.2f} exceeds {PARETO_K_UNRELIABLE}: a few "
              "samples can dominate any estimate and this ESS is unreliable; draw more samples or improve the model",
              file=sys.stderr)
    return 0

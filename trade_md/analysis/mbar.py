"""Multistate reweighting (MBAR, pymbar 4) and time-series decorrelation on reduced potentials.

Nothing here knows about OpenMM: estimators take reduced potentials ``u_kn[k, n] = u_k(x_n)`` (dimensionless,
u = U/(k_B T)) of every sample n evaluated in every state k, and sample counts ``N_k[k]`` (samples ordered by the
state that produced them; ``N_k[k] = 0`` marks an unsampled state, e.g. a temperature off the ladder). Free
energies ``f_k`` are dimensionless, f_k = −ln Z_k + const, reported relative to state 0.

A failed MBAR solve raises :class:`~trade_md.errors.InputError`; an unconverged one (pymbar can return quietly)
is caught by checking the self-consistency equations and collected in ``warnings`` (also logged at WARNING level,
which reaches stderr) for the caller to record. :meth:`MBAREstimator.overlap` gives the numbers for the caller's
overlap check.

>>> from trade_md.thermo import kT
>>> rng = np.random.default_rng(0)
>>> temperatures = np.array([300.0, 400.0])
>>> energies = np.concatenate([rng.gamma(1.5, kT(t), size=500) for t in temperatures])  # 3-D oscillator
>>> estimator = MBAREstimator(tempering_reduced_potentials(energies, temperatures), np.array([500, 500]))
>>> mean_u, _ = estimator.expectations(energies)
>>> bool(abs(mean_u[1] / (1.5 * kT(400.0)) - 1.0) < 0.1)
True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from trade_md.errors import InputError
from trade_md.progress import progress_bar
from trade_md.thermo import reduced_potential, temperature_array

__all__ = [
    "tempering_reduced_potentials",
    "Decorrelation",
    "decorrelate",
    "Overlap",
    "MBAREstimator",
]

logger = logging.getLogger(__name__)

CONVERGENCE_TOLERANCE: float = 1e-5
"""Largest |ln Σ_n W_nk| accepted as a solution of the MBAR self-consistency equations."""


def tempering_reduced_potentials(energies_n: np.ndarray, temperatures_k: np.ndarray) -> np.ndarray:
    """Reduced potentials ``u_kn [K, N] = U_n / (k_B T_k)`` for states that differ only in temperature.

    energies_n: [N] potential energies in kJ/mol; temperatures_k: [K] in K.
    """
    energies_n = np.asarray(energies_n, dtype=np.float64)
    if energies_n.ndim != 1:
        raise InputError(f"energies must be a 1-D array [N] in kJ/mol, got shape {energies_n.shape}")
    return reduced_potential(energies_n[None, :], temperature_array(temperatures_k)[:, None])


@dataclass(frozen=True)
class Decorrelation:
    """Equilibrated, decorrelated subsample of a time series of length ``n_total``.

    t0: first equilibrated index; g: statistical inefficiency (≥ 1, in frames) of the equilibrated part, the
    largest of ``inefficiencies`` (one per series given); indices: [n] increasing indices into the full series,
    spaced by about g, starting at t0.
    """

    t0: int
    g: float
    indices: np.ndarray
    n_total: int
    inefficiencies: tuple[float, ...]


def _inefficiency(series: np.ndarray) -> float:
    from pymbar import timeseries

    series = np.asarray(series, dtype=np.float64)
    if series.size < 3 or np.ptp(series) == 0.0:
        return 1.0
    return float(timeseries.statistical_inefficiency(series))


def decorrelate(series_t: np.ndarray, *other_series_t: np.ndarray) -> Decorrelation:
    """Detect equilibration on ``series_t`` [T] and subsample with the largest statistical inefficiency.

    The start t0 maximises the effective sample number of ``series_t`` (pymbar ``detect_equilibration``); g is
    the maximum of the inefficiencies of ``series_t`` and of every ``other_series_t`` [T] after t0, so that
    slow observables (e.g. a basin indicator) are as decorrelated as the energy.
    """
    from pymbar import timeseries

    series_t = np.asarray(series_t, dtype=np.float64)
    if series_t.ndim != 1 or series_t.size < 2:
        raise InputError(f"need a 1-D time series of at least 2 frames, got shape {series_t.shape}; run longer")
    n_total = series_t.size
    if np.ptp(series_t) == 0.0:
        t0 = 0
    else:
        t0, _, _ = timeseries.detect_equilibration(series_t, fast=True, nskip=max(1, n_total // 200))
        t0 = int(t0)
    inefficiencies = tuple([_inefficiency(series_t[t0:])] + [_inefficiency(np.asarray(s)[t0:]) for s in other_series_t])
    g = max(inefficiencies)
    indices = t0 + np.asarray(timeseries.subsample_correlated_data(series_t[t0:], g=g), dtype=np.int64)
    return Decorrelation(t0=t0, g=float(g), indices=indices, n_total=n_total, inefficiencies=inefficiencies)


@dataclass(frozen=True)
class Overlap:
    """MBAR overlap between sampled states.

    matrix: [K, K] O[i, j] = probability that a sample from state i is observed in state j (rows sum to 1);
    eigenvalues: [K] descending (the first is 1); scalar: 1 − second eigenvalue (0 = disconnected states);
    neighbours: [K−1] O[k, k+1], the overlap of consecutive states.
    """

    matrix: np.ndarray
    eigenvalues: np.ndarray
    scalar: float
    neighbours: np.ndarray


@dataclass
class MBAREstimator:
    """MBAR over ``u_kn [K, N]`` reduced potentials with ``N_k [K]`` samples per state (pymbar 4 solver).

    After construction: ``f_k [K]`` dimensionless free energies with f_0 = 0, ``converged`` and ``residual``
    (max |ln Σ_n W_nk| over states, 0 at the exact solution), and ``warnings`` (human-readable, never empty
    silently: also logged).
    """

    u_kn: np.ndarray
    N_k: np.ndarray
    relative_tolerance: float = 1e-10
    f_k: np.ndarray = field(init=False)
    converged: bool = field(init=False)
    residual: float = field(init=False)
    warnings: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        import pymbar

        self.u_kn = np.asarray(self.u_kn, dtype=np.float64)
        self.N_k = np.asarray(self.N_k, dtype=np.int64)
        if self.u_kn.ndim != 2 or self.N_k.shape != (self.u_kn.shape[0],):
            raise InputError(f"u_kn must be [K, N] and N_k [K]; got {self.u_kn.shape} and {self.N_k.shape}")
        if self.N_k.sum() != self.u_kn.shape[1] or np.any(self.N_k < 0):
            raise InputError(f"N_k {self.N_k.tolist()} must be non-negative and sum to N = {self.u_kn.shape[1]}")
        if not np.all(np.isfinite(self.u_kn)):
            raise InputError("u_kn contains NaN or inf; drop the samples whose energy failed before reweighting")
        try:
            self._mbar = pymbar.MBAR(self.u_kn, self.N_k, relative_tolerance=self.relative_tolerance)
        except Exception as error:  # pymbar raises several unrelated types on a failed solve
            raise InputError(
                f"MBAR solve failed ({type(error).__name__}: {error}); the states probably do not overlap: "
                "run longer or add intermediate temperatures"
            ) from None
        self.f_k = np.asarray(self._mbar.f_k, dtype=np.float64) - float(self._mbar.f_k[0])
        log_w = self.log_weights()
        self.residual = float(np.max(np.abs(logsumexp(log_w, axis=0)))) if log_w.size else float("nan")
        self.converged = bool(np.all(np.isfinite(self.f_k)) and self.residual < CONVERGENCE_TOLERANCE)
        if not self.converged:
            self._warn(
                f"MBAR did not converge: self-consistency residual {self.residual:.3g} "
                f"(tolerance {CONVERGENCE_TOLERANCE:g}); free energies and expectations are unreliable"
            )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning(message)

    @property
    def n_states(self) -> int:
        return int(self.u_kn.shape[0])

    def log_weights(self) -> np.ndarray:
        """ln W_nk [N, K]: normalised MBAR weights of sample n in state k (each column sums to 1)."""
        log_denominator = logsumexp(
            (self.f_k[:, None] - self.u_kn)[self.N_k > 0], b=self.N_k[self.N_k > 0][:, None], axis=0
        )
        return (self.f_k[:, None] - self.u_kn - log_denominator[None, :]).T

    def weights(self) -> np.ndarray:
        """W_nk [N, K]; the expectation of A at state k is Σ_n W_nk A_n."""
        return np.exp(self.log_weights())

    def free_energies(self) -> tuple[np.ndarray, np.ndarray]:
        """(f_k − f_0 [K], its standard error [K]), dimensionless."""
        result = self._mbar.compute_free_energy_differences(compute_uncertainty=True)
        return np.asarray(result["Delta_f"][0], dtype=np.float64), np.asarray(result["dDelta_f"][0], dtype=np.float64)

    def expectations(self, a_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(⟨A⟩_k [K], standard error [K]) of an observable ``a_n [N]`` (any unit; returned in the same unit)."""
        a_n = np.array(a_n, dtype=np.float64)  # a copy: pymbar shifts the observable in place
        if a_n.shape != (self.u_kn.shape[1],):
            raise InputError(f"observable must have shape [N] = ({self.u_kn.shape[1]},), got {a_n.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):  # pymbar takes ln of observables that can be 0
            result = self._mbar.compute_expectations(a_n, output="averages", compute_uncertainty=True)
        return np.asarray(result["mu"], dtype=np.float64), np.asarray(result["sigma"], dtype=np.float64)

    def indicator_free_energy(
        self, indicator_n: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Free energy of a region B against its complement, ΔF_k = −ln(P_k(B) / (1 − P_k(B))) in k_B T.

        indicator_n: [N] booleans, True inside B. Returns (ΔF [K], σ_ΔF [K] by the delta method
        σ_P / (P (1 − P)), P [K], σ_P [K] the MBAR standard error of P). ΔF is ±inf where a region carries no
        weight; its σ is then inf.
        """
        indicator_n = np.asarray(indicator_n, dtype=bool)
        if indicator_n.all() or not indicator_n.any():  # pymbar cannot take ln of an all-zero observable
            p, sigma_p = np.full(self.n_states, float(indicator_n.all())), np.zeros(self.n_states)
        else:
            p, sigma_p = self.expectations(indicator_n.astype(np.float64))
        p = np.clip(p, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            delta_f = -np.log(p) + np.log1p(-p)
            sigma = np.where((p > 0) & (p < 1), sigma_p / (p * (1.0 - p)), np.inf)
        return delta_f, sigma, p, sigma_p

    def block_bootstrap(
        self,
        block_n: np.ndarray,
        *,
        observables: dict[str, np.ndarray] | None = None,
        indicators: dict[str, np.ndarray] | None = None,
        n_bootstrap: int = 100,
        seed: int = 0,
        strata: np.ndarray | None = None,
        progress: bool = False,
    ) -> dict[str, np.ndarray]:
        """Bootstrap standard errors [K] that respect time correlation: resample whole blocks of samples.

        block_n: [N] block label of every sample (e.g. the iteration divided by a block length longer than the
        correlation time; ``np.arange(N)`` for independent samples). Each replicate draws as many blocks as there
        are, with replacement, and re-solves MBAR. strata: optional [N] label per sample; each stratum's blocks are
        then drawn from that stratum's own (blocks must not span strata), so every stratum keeps its number of
        blocks: the state of each sample for umbrella windows that never exchange, the run of each sample for
        independent runs pooled. progress: a progress bar over the replicates (when the caller enabled bars,
        :func:`trade_md.progress.show_progress`).
        Returns ``"f"`` (error of f_k − f_0), one entry per observable name (error of ⟨A⟩_k, A's unit) and, per
        indicator name, the error of its :meth:`indicator_free_energy` ΔF (k_B T) and of its probability (key
        ``name + "_p"``). Replicates where a region carries no weight are left
        out of that region's ΔF (NaN where fewer than two remain).
        """
        import pymbar

        observables = {} if observables is None else {k: np.asarray(v, dtype=np.float64) for k, v in observables.items()}
        indicators = {} if indicators is None else {k: np.asarray(v, dtype=bool) for k, v in indicators.items()}
        block_n = np.asarray(block_n)
        if block_n.shape != (self.u_kn.shape[1],):
            raise InputError(f"block labels must have shape [N] = ({self.u_kn.shape[1]},), got {block_n.shape}")
        labels, block_of_sample = np.unique(block_n, return_inverse=True)
        members = [np.flatnonzero(block_of_sample == b) for b in range(labels.size)]
        state_n = np.repeat(np.arange(self.n_states), self.N_k)
        groups = [np.arange(labels.size)]
        if strata is not None:
            strata = np.asarray(strata)
            if strata.shape != block_n.shape:
                raise InputError(f"strata must have shape [N] = ({block_n.size},), got {strata.shape}")
            if any(np.any(strata[m] != strata[m[0]]) for m in members):
                raise InputError("a stratified bootstrap needs every block within one stratum; some block spans two")
            block_stratum = np.array([strata[m[0]] for m in members])
            groups = [np.flatnonzero(block_stratum == value) for value in np.unique(block_stratum)]
        generator = np.random.default_rng(seed)
        draws: dict[str, list[np.ndarray]] = {"f": []}
        skipped = 0
        with progress_bar(total=int(n_bootstrap), desc="bootstrap", unit="MBAR", enabled=progress) as bar:
            for _ in range(int(n_bootstrap)):
                bar.update(1)
                picks = np.concatenate([group[generator.integers(0, group.size, group.size)] for group in groups])
                chosen = np.concatenate([members[b] for b in picks])
                chosen = chosen[np.argsort(state_n[chosen], kind="stable")]
                n_k = np.bincount(state_n[chosen], minlength=self.n_states)
                if np.any((n_k == 0) & (self.N_k > 0)):
                    skipped += 1  # a sampled state lost all its samples: too few blocks for this replicate
                    continue
                u_kn = self.u_kn[:, chosen]
                try:
                    f_k = np.asarray(pymbar.MBAR(u_kn, n_k, initial_f_k=self.f_k,
                                                 relative_tolerance=self.relative_tolerance).f_k, dtype=np.float64)
                except Exception:  # pymbar raises several unrelated types on a failed solve
                    skipped += 1
                    continue
                sampled = n_k > 0
                log_w = f_k[:, None] - u_kn - logsumexp((f_k[:, None] - u_kn)[sampled], b=n_k[sampled][:, None],
                                                         axis=0)[None, :]
                weights = np.exp(log_w - logsumexp(log_w, axis=1, keepdims=True))  # [K, n], rows sum to 1
                draws["f"].append(f_k - f_k[0])
                for name, a_n in observables.items():
                    draws.setdefault(name, []).append(weights @ a_n[chosen])
                for name, inside in indicators.items():
                    p = np.clip(weights @ inside[chosen].astype(np.float64), 0.0, 1.0)  # rounding can pass 1
                    with np.errstate(divide="ignore"):
                        draws.setdefault(name, []).append(-np.log(p) + np.log1p(-p))
                    draws.setdefault(name + "_p", []).append(p)
        if skipped:
            self._warn(f"{skipped} of {int(n_bootstrap)} bootstrap replicates were skipped (a state without samples "
                       "or a failed MBAR solve); the standard errors rest on the rest — use more blocks")
        return {name: _nan_std(np.asarray(values).reshape(-1, self.n_states)) for name, values in draws.items()}

    def effective_sample_numbers(self) -> np.ndarray:
        """Kish effective number of samples [K] behind each state's weights, 1 / Σ_n W_nk²."""
        return 1.0 / np.sum(self.weights() ** 2, axis=0)

    def overlap(self, states: np.ndarray | None = None) -> Overlap:
        """Overlap between the sampled ``states`` (default: every state with N_k > 0), in the given order."""
        states = np.flatnonzero(self.N_k > 0) if states is None else np.asarray(states, dtype=np.int64)
        if np.any(self.N_k[states] == 0):
            raise InputError("overlap is defined between sampled states only (N_k > 0)")
        w = self.weights()[:, states]
        matrix = (w.T @ w) * self.N_k[states][None, :]
        eigenvalues = np.sort(np.linalg.eigvals(matrix).real)[::-1]
        scalar = float(1.0 - eigenvalues[1]) if eigenvalues.size > 1 else 1.0
        neighbours = np.array([matrix[i, i + 1] for i in range(len(states) - 1)])
        return Overlap(matrix=matrix, eigenvalues=eigenvalues, scalar=scalar, neighbours=neighbours)


def _nan_std(values: np.ndarray) -> np.ndarray:
    """Sample standard deviation [K] over the finite entries of each column of ``values [B, K]``."""
    finite = np.isfinite(values)
    return np.array([np.std(values[finite[:, k], k], ddof=1) if finite[:, k].sum() >= 2 else np.nan
                     for k in range(values.shape[1])])

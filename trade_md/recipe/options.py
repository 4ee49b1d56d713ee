"""The options of ``trade-md run`` (:class:`RunOptions`), their defaults and checks, and the ``--config`` overrides.

Every field left at None takes its default when the run starts (:meth:`RunOptions.resolve`), and on ``--resume``
the stored run's value (:meth:`RunOptions.resume_from`); a given value that contradicts the stored run is refused in
one line, except ``budget`` and ``device``, which a resumed run may change (a larger budget lets an MD stage that
stopped unconverged go on).

The ``--config`` file (YAML) overrides what the rule chooses, section by section::

    md: {ns: 30.0, replicas: 2, frame_interval_ps: 1.0, equilibration_ps: 100.0}   # fixed MD instead of the rule's
    md: {share: 0.3}                                 # or MD's share of the budget (0 < share <= 0.45)
    md: {timestep_fs: 1.0, hydrogen_mass_amu: null}  # 1 fs steps, force-field masses (default: 2 fs, 4 amu)
    boundary: {schedule: {learning_rate: 5.0e-4}}    # deep-merged onto the boundary's TrainConfig (trade_md.config)
    transfer: {grid: {nodes: 26}}                    # ... onto the transfer's
    check: {samples: 100000}                         # self-check samples per temperature
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trade_md.errors import InputError
from trade_md.thermo import parse_temperatures

__all__ = ["DEFAULT_T0", "DEFAULT_TEMPERATURES", "TRANSFERS", "RunOptions", "check_overrides", "load_overrides",
           "parse_temperature_list", "trained_range"]

DEFAULT_TEMPERATURES: tuple[float, ...] = (300.0, 450.0, 600.0, 800.0, 1000.0)
"""K, evaluated by default."""
DEFAULT_T0 = 600.0
"""K, T0 of a system without a reference temperature of its own."""
TRANSFERS: dict[str, str] = {
    "tilt+kl": "frozen boundary (trainable: temperature) with thermal scaling; the exact tilt below T0 and the reverse "
               "KL on the energy above T0 (the J1 split recipe, benchmarks/configs/ala2_split.yaml)",
    "kl": "frozen boundary with thermal scaling; the reverse KL on the energy over the whole trained range",
    "trade": "frozen boundary with thermal scaling; the paper's derivative TRADE residual (centred) over the trained "
             "range",
    "none": "no transfer training: the boundary with its thermal scaling layer at the harmonic start (a = 1)",
}
"""``--transfer`` variants, all from the same boundary."""
_OVERRIDE_SECTIONS = {"md": {"ns", "replicas", "frame_interval_ps", "equilibration_ps", "share", "timestep_fs",
                             "hydrogen_mass_amu"}, "boundary": None, "transfer": None, "check": {"samples"}}
_MUTABLE = ("budget", "device")
MAX_MD_SHARE_OVERRIDE = 0.45
"""``md: {share: ...}`` at most: the boundary keeps at least 10 % of the budget."""


def trained_range(temperatures: tuple[float, ...]) -> tuple[float, float]:
    """The trained range, a little wider than the evaluated ``temperatures``: [0.93 × lowest, 1.05 × highest], to
    10 K (280–1050 K for the default 300–1000 K)."""
    return float(round(0.93 * min(temperatures) / 10.0) * 10.0), float(round(1.05 * max(temperatures) / 10.0) * 10.0)


@dataclass(frozen=True)
class RunOptions:
    """What ``trade-md run`` was asked (None: the default, or on resume the stored run's value).

    t0: K (default: the built-in system's reference temperature, else :data:`DEFAULT_T0`, or the temperature of
    ``boundary_data``); temperatures: evaluated, K; budget: minutes (:mod:`trade_md.recipe.budget`); device: torch
    device of the training and sampling; reference: a reference summary or directory (default: the built-in
    system's shipped one, if any); quick: the tiny preset; transfer: one of :data:`TRANSFERS`; boundary_data: a
    dataset at T0 to train on instead of MD (e.g. ``trade-md remd-data``); boundary_from: a run directory whose MD and
    boundary stages this run shares; seed; overrides: the ``--config`` mapping (module docs); config_file: its path.
    """

    t0: float | None = None
    temperatures: tuple[float, ...] | None = None
    budget: float | None = None
    device: str | None = None
    reference: str | None = None
    quick: bool | None = None
    transfer: str | None = None
    boundary_data: str | None = None
    boundary_from: str | None = None
    seed: int | None = None
    overrides: dict[str, Any] | None = None
    config_file: str | None = None

    @property
    def md_share(self) -> float | None:
        """MD's share of the budget from ``--config`` ``md: {share: ...}``, else None (the budget rule's)."""
        return (self.overrides or {}).get("md", {}).get("share")

    def resolve(self, default_t0: float | None, default_reference: str | None) -> RunOptions:
        """Every field set: the given values, else the defaults (``default_t0``: the system's or the boundary
        data's T0; ``default_reference``: the system's shipped reference). Checks the values (InputError)."""
        temperatures = tuple(sorted({float(t) for t in (self.temperatures or DEFAULT_TEMPERATURES)}))
        resolved = dataclasses.replace(
            self, t0=float(self.t0 if self.t0 is not None else default_t0 or DEFAULT_T0),
            temperatures=temperatures, device=self.device or "cpu", quick=bool(self.quick),
            reference=self.reference if self.reference is not None else default_reference,
            transfer=self.transfer or "tilt+kl", seed=0 if self.seed is None else int(self.seed),
            overrides=dict(self.overrides or {}))
        resolved.check()
        return resolved

    def check(self) -> None:
        """InputError naming the first impossible option and its fix."""
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures or ()):
            raise InputError(f"--temperatures {list(self.temperatures or ())} must be temperatures in K > 0")
        low, high = min(self.temperatures), max(self.temperatures)
        if not (math.isfinite(self.t0) and low - 1e-9 <= self.t0 <= high + 1e-9):
            raise InputError(f"--t0 {self.t0:g} K lies outside the evaluated temperatures {low:g}-{high:g} K; choose "
                             "T0 inside them (e.g. --t0 600) or widen --temperatures")
        if self.transfer not in TRANSFERS:
            raise InputError(f"--transfer {self.transfer!r} is unknown; choose one of {', '.join(TRANSFERS)}")
        if self.boundary_data is not None and self.boundary_from is not None:
            raise InputError("--boundary-data and --boundary-from both give the boundary's data; use one of them")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"--device {self.device!r} is unknown; choose cpu or cuda")
        check_overrides(self.overrides or {}, self.config_file or "--config")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, as stored in ``recipe.json``."""
        values = dataclasses.asdict(self)
        values["temperatures"] = None if self.temperatures is None else list(self.temperatures)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if values.get("temperatures") is not None:
            values["temperatures"] = tuple(float(t) for t in values["temperatures"])
        return cls(**values)

    def resume_from(self, stored: RunOptions, out: Path) -> RunOptions:
        """The stored run's options with this invocation's ``budget`` and ``device`` where given; InputError when a
        given option contradicts the stored run."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(stored, f.name)
            if mine is None or f.name in _MUTABLE or f.name == "config_file":
                continue
            if f.name == "temperatures":
                mine = tuple(sorted({float(t) for t in mine}))
            if f.name == "quick" and not mine and not theirs:
                continue
            if mine != theirs:
                flag = "--" + f.name.replace("_", "-")
                if f.name == "overrides":
                    flag = "--config"
                raise InputError(f"{out} was started with {flag} {_show(theirs)}, not {_show(mine)}; resume with the "
                                 f"same options (or leave {flag} out), or choose another --out")
        return dataclasses.replace(stored, budget=self.budget if self.budget is not None else stored.budget,
                                   device=self.device or stored.device)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return repr(value) if isinstance(value, dict) else str(value)


def check_overrides(values: dict[str, Any], source: str) -> None:
    """InputError for an unknown section or key of a ``--config`` mapping (module docs)."""
    for section, content in values.items():
        if section not in _OVERRIDE_SECTIONS:
            raise InputError(f"{source}: unknown section {section!r}; valid sections are "
                             f"{', '.join(_OVERRIDE_SECTIONS)}")
        if not isinstance(content, dict):
            raise InputError(f"{source}: {section} must be a mapping, got {content!r}")
        allowed = _OVERRIDE_SECTIONS[section]
        unknown = sorted(set(content) - allowed) if allowed is not None else []
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; valid keys are "
                             f"{', '.join(sorted(allowed))}")
    share = values.get("md", {}).get("share")
    if share is not None and not (isinstance(share, (int, float)) and 0.0 < share <= MAX_MD_SHARE_OVERRIDE):
        raise InputError(f"{source}: md.share {share!r} must be a fraction of the budget in (0, "
                         f"{MAX_MD_SHARE_OVERRIDE:g}], e.g. 0.3")


def load_overrides(path: str | Path) -> dict[str, Any]:
    """The ``--config`` mapping of a YAML file (module docs), checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path} does not exist; check the path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(f"--config {path} is not valid YAML ({error}); fix the file") from None
    if not isinstance(values, dict):
        raise InputError(f"--config {path} must be a mapping of sections (md, boundary, transfer, check)")
    check_overrides(values, str(path))
    return values


def parse_temperature_list(text: str) -> tuple[float, ...]:
    """``300,450,600`` (or ``Tmin:Tmax:K``) as a tuple of K, for ``--temperatures``."""
    return tuple(float(t) for t in parse_temperatures(text, what="--temperatures"))


"""Recipe files: YAML configs that inherit from a base and state only what differs.

A recipe's ``base:`` names another recipe: a file (``base: ala2_boundary.yaml``, relative to the recipe's own
directory) or a built-in one, ``<system>/<recipe>`` (``base: alanine-dipeptide/trade`` is
``systems/alanine_dipeptide/trade.yaml``). The recipe is deep-merged onto its (recursively resolved) base:
mappings merge key by key, anything else (numbers, lists, strings) replaces, and ``null`` removes the key, so it
takes its default (``objectives: {nll: null}`` drops an inherited term). Flat files of the layout before the
restructure load through :func:`trade_md.config.legacy.nested_from_flat`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from trade_md.config.legacy import is_flat, nested_from_flat
from trade_md.errors import InputError
from trade_md.systems import SYSTEMS_DIR

__all__ = ["builtin_recipe", "deep_merge", "expand_base", "load_recipe"]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged onto a copy of ``base`` (see the module docs; ``None`` in ``override`` removes)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def builtin_recipe(name: str) -> Path:
    """The file of built-in recipe ``<system>/<recipe>`` (e.g. ``alanine-dipeptide/trade``)."""
    system, _, recipe = name.partition("/")
    path = SYSTEMS_DIR / system.replace("-", "_") / f"{recipe}.yaml"
    if not recipe or not path.is_file():
        known = sorted(f"{p.parent.name.replace('_', '-')}/{p.stem}" for p in SYSTEMS_DIR.glob("*/*.yaml")
                       if p.name != "config.yaml")
        raise InputError(f"base: {name!r} is neither a .yaml file nor a built-in recipe; built-in recipes are "
                         f"{', '.join(known) or 'none'}")
    return path


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The nested config mapping of a recipe file, its ``base:`` chain resolved (not yet validated)."""
    return _load(Path(path), ())


def expand_base(values: dict[str, Any], directory: Path, source: str = "config") -> dict[str, Any]:
    """A nested mapping with its ``base:`` (resolved against ``directory``) merged under it; flat mappings are
    converted to the nested layout."""
    return _expand(values, directory, source, ())


def _load(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"config file {path} does not exist; check the path")
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise InputError(f"recipe bases form a loop ({chain}); remove one base:")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(f"{path} is not valid YAML ({error}); fix the file") from None
    if not isinstance(values, dict):
        raise InputError(f"{path} must be a mapping of config keys, got {type(values).__name__}")
    return _expand(values, path.parent, str(path), (*seen, path.resolve()))


def _expand(values: dict[str, Any], directory: Path, source: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    values = dict(values)
    base = values.pop("base", None)
    if is_flat(values):
        if base is not None:
            raise InputError(f"{source}: base: needs the nested layout, but the file uses flat keys; convert it "
                             "(trade_md.config.legacy.nested_from_flat) or drop base:")
        return nested_from_flat(values, source)
    if base is None:
        return values
    if not isinstance(base, str):
        raise InputError(f"{source}: base = {base!r} must be a file name or a built-in recipe name")
    base_path = directory / base if base.endswith((".yaml", ".yml")) else builtin_recipe(base)
    return deep_merge(_load(base_path, seen), values)

"""Crash-safe file output: everything trade-md writes goes through a temp file and an atomic rename.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "summary.json"
>>> write_json_atomic(target, {"beta": 0.4})
>>> read_json(target)
{'beta': 0.4}
>>> json_safe({"se": float("nan"), "counts": np.arange(3)})
{'se': None, 'counts': [0, 1, 2]}
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.errors import InputError

__all__ = ["atomic_write_path", "json_safe", "package_versions", "read_json", "write_json_atomic"]


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, on any error delete it.

    A reader therefore sees either the old complete file or the new complete file, never half of one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` for strict JSON, recursively: numpy arrays and scalars as Python lists and numbers, tuples as
    lists, and ±inf/NaN as None (JSON has no Infinity or NaN; a reader sees null for "undefined")."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy arrays and scalars become lists and numbers), atomically."""
    with atomic_write_path(path) as temp:
        temp.write_text(json.dumps(obj, indent=2, default=_to_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`InputError` naming it."""
    target = Path(path)
    if not target.is_file():
        raise InputError(f"{target} does not exist; check the path")
    try:
        return json.loads(target.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{target} is not valid JSON ({error}); regenerate it") from None


def package_versions(*packages: str) -> dict[str, str]:
    """Versions of trade-md, Python and the named installed distributions, for the records runs write."""
    versions = {"trade_md": importlib.metadata.version("trade-md"), "python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

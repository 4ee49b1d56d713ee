"""Exceptions raised by trade-md.

Every error a user can cause derives from :class:`TradeMDError`; its message names the problem and the fix.
The command line prints such errors as one line and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

__all__ = ["TradeMDError", "InputError", "SystemMismatchError", "WorkerError"]


class TradeMDError(Exception):
    """Base class of all errors that trade-md raises on purpose."""


class InputError(TradeMDError, ValueError):
    """Bad user input: a missing or malformed file, an unknown residue, a non-positive temperature, ..."""


class SystemMismatchError(TradeMDError):
    """A checkpoint, dataset or storage file belongs to another molecular system."""


class WorkerError(TradeMDError, RuntimeError):
    """An energy worker process died or raised; the message carries the worker's own error."""

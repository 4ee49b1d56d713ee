"""The one progress hook: library code reports progress here; only the command line shows it.

Library modules never print and never import tqdm. A long loop opens a bar with :func:`progress_bar`; by default
the bar does nothing, so library calls from scripts and notebooks stay silent unless the caller asks for bars with
:func:`show_progress` (the ``trade-md`` command line does, unless ``--no-progress`` is given; even then a bar is
drawn only when stderr is a terminal). Messages for the
user go through :mod:`logging` (logger names ``trade_md.*``).

>>> with progress_bar(total=3, desc="demo", unit="step") as bar:
...     for _ in range(3):
...         bar.update(1)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Bar", "progress_bar", "show_progress"]


class Bar(Protocol):
    """What a progress bar offers to library code (a subset of tqdm's interface)."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True) -> Any: ...

    def set_description(self, desc: str | None = None, refresh: bool = True) -> Any: ...


class _SilentBar:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


_factory: Callable[..., Any] | None = None


def show_progress(enabled: bool = True) -> None:
    """Show progress bars (tqdm on stderr) for every later :func:`progress_bar`, or hide them again."""
    global _factory
    if enabled:
        from tqdm.auto import tqdm

        _factory = functools.partial(tqdm, disable=None)  # None: no bar when stderr is not a terminal (CI logs)
    else:
        _factory = None


@contextmanager
def progress_bar(*, total: float | None, desc: str, unit: str = "it", initial: float = 0,
                 enabled: bool = True) -> Iterator[Bar]:
    """A progress bar over ``total`` units starting at ``initial``; silent unless :func:`show_progress` was called
    and ``enabled`` (e.g. False on every MPI/torchrun rank but the first)."""
    if _factory is None or not enabled:
        yield _SilentBar()
        return
    bar = _factory(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()

"""The docstring examples of every trade_md module run and pass (they are documentation a user copies)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import trade_md

MODULES = sorted(info.name for info in pkgutil.walk_packages(trade_md.__path__, "trade_md.")
                 if not info.name.endswith(".__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"

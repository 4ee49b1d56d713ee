"""Tests of trade_md.platforms: the properties policy, platform-name checks, measured and named selection."""

from __future__ import annotations

import openmm
import pytest

from trade_md.errors import InputError
from trade_md.platforms import (
    PLATFORMS,
    available_platforms,
    check_platform,
    measure_md_speed,
    platform_properties,
    select_platform,
)
from trade_md.systems import MolecularSystem, load_system


@pytest.fixture(scope="module")
def ala2() -> MolecularSystem:
    return load_system("alanine-dipeptide")


def test_properties_policy() -> None:
    # dynamics: mixed precision on GPUs, CPU threads as asked, Reference has no properties
    assert platform_properties("CUDA") == {"Precision": "mixed"}
    assert platform_properties("OpenCL") == {"Precision": "mixed"}
    assert platform_properties("CPU", threads=4) == {"Threads": "4"}
    assert platform_properties("Reference") == {}
    # energies for importance weights: double precision, deterministic force sums, one thread per worker
    assert platform_properties("CUDA", purpose="energy") == {"Precision": "double", "DeterministicForces": "true"}
    assert platform_properties("OpenCL", purpose="energy") == {"Precision": "double"}
    assert platform_properties("CPU", purpose="energy") == {"Threads": "1", "DeterministicForces": "true"}
    assert platform_properties("Reference", purpose="energy") == {}


def test_policy_properties_are_accepted_by_the_available_platforms(ala2: MolecularSystem) -> None:
    for name in available_platforms():
        if name not in PLATFORMS:
            continue
        platform = openmm.Platform.getPlatformByName(name)
        for purpose in ("dynamics", "energy"):
            assert set(platform_properties(name, threads=2, purpose=purpose)) <= set(platform.getPropertyNames())


def test_check_platform_names_and_errors() -> None:
    assert {"Reference", "CPU"} <= set(available_platforms())
    assert check_platform("reference") == "Reference" and check_platform("CPU") == "CPU"
    assert check_platform("AUTO") == "auto"
    for name in ("GPU", "Nope", ""):
        with pytest.raises(InputError, match=f"OpenMM platform '{name}' is not available: unknown platform name; "
                                             "choose one of Reference, CPU, CUDA, OpenCL, auto"):
            check_platform(name)
    with pytest.raises(InputError, match="unknown platform"):
        check_platform(None)  # type: ignore[arg-type]
    missing = [name for name in PLATFORMS if name not in available_platforms()]
    if missing:
        with pytest.raises(InputError, match=rf"platform '{missing[0]}' is not available here .*install"):
            check_platform(missing[0].lower())


def test_select_platform_named(ala2: MolecularSystem) -> None:
    assert select_platform(ala2, "Reference") == ("Reference", {})
    assert select_platform(ala2, "cpu", threads=3) == ("CPU", {"Threads": "3"})
    assert select_platform(ala2, "CPU", purpose="energy") == ("CPU", {"Threads": "1", "DeterministicForces": "true"})
    with pytest.raises(InputError, match="not available"):
        select_platform(ala2, "NoSuchPlatform")


def test_select_platform_auto_takes_the_fastest_measured(ala2: MolecularSystem,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rates = {name: measure_md_speed(ala2, name, platform_properties(name), seconds=0.05)
             for name in ("Reference", "CPU")}
    assert all(rate > 0 for rate in rates.values()), rates
    name, properties = select_platform(ala2, "auto", threads=1)
    assert name in available_platforms() and properties == platform_properties(name, threads=1)
    # the choice is the maximum of the measured speeds (CUDA preferred over OpenCL when both exist)
    fake = {"Reference": 10.0, "CPU": 30.0, "CUDA": 20.0, "OpenCL": 40.0}
    monkeypatch.setattr("trade_md.platforms.measure_md_speed", lambda system, name, properties: fake[name])
    monkeypatch.setattr("trade_md.platforms.available_platforms", lambda: ["Reference", "CPU"])
    assert select_platform(ala2, "auto", threads=2) == ("CPU", {"Threads": "2"})
    monkeypatch.setattr("trade_md.platforms.available_platforms", lambda: ["Reference", "CPU", "CUDA", "OpenCL"])
    assert select_platform(ala2, "auto") == ("CPU", {"Threads": "1"})  # OpenCL is not raced next to CUDA
    fake.update(CUDA=50.0)
    assert select_platform(ala2, "auto", purpose="energy") == ("CUDA", platform_properties("CUDA", purpose="energy"))


def test_a_platform_that_cannot_run_loses_and_none_is_an_error(ala2: MolecularSystem,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert measure_md_speed(ala2, "Reference", {"Bogus": "1"}, seconds=0.01) == 0.0
    monkeypatch.setattr("trade_md.platforms.measure_md_speed", lambda system, name, properties: 0.0)
    with pytest.raises(InputError, match="no OpenMM platform can run this system"):
        select_platform(ala2, "auto")

"""Ground truth for trade_md.energy: direct OpenMM contexts, finite differences, an analytic potential."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from trade_md import energy as energy_module
from trade_md import energy_workers, platforms
from trade_md.energy import EnergyBridge
from trade_md.errors import InputError, WorkerError
from trade_md.thermo import KB

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def alanine() -> types.SimpleNamespace:
    """Alanine dipeptide in implicit solvent (openmmtools; 22 atoms) and 7 perturbed conformations [7, 22, 3] nm."""
    from openmmtools.testsystems import AlanineDipeptideImplicit

    test_system = AlanineDipeptideImplicit()
    positions = np.asarray(test_system.positions.value_in_unit(unit.nanometer))
    rng = np.random.default_rng(7)
    batch = positions + 0.003 * rng.standard_normal((7, *positions.shape))
    return types.SimpleNamespace(system=test_system.system, positions=positions, batch=batch)


@pytest.fixture(scope="module")
def bridge(alanine: types.SimpleNamespace):
    with EnergyBridge(alanine.system, platform="Reference") as in_process:
        yield in_process


@pytest.fixture(scope="module")
def pool(alanine: types.SimpleNamespace):
    with EnergyBridge(alanine.system, n_workers=2, platform="Reference") as two_workers:
        yield two_workers


def harmonic_particle(k: float, center: tuple[float, float, float]) -> openmm.System:
    """One particle with U = k/2 |r - c|^2 (kJ/mol, r in nm), so F = -k (r - c)."""
    system = openmm.System()
    system.addParticle(12.0)
    force = openmm.CustomExternalForce("0.5*k*((x-cx)^2+(y-cy)^2+(z-cz)^2)")
    for name, value in zip(("k", "cx", "cy", "cz"), (k, *center), strict=True):
        force.addGlobalParameter(name, value)
    force.addParticle(0, [])
    system.addForce(force)
    return system


def direct_energies_forces(system: openmm.System, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A plain loop over one Reference Context with the public, unit-carrying API."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for positions in batch:
        context.setPositions(positions * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc").is_dir():
        return True
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``seconds`` (an exiting process takes a moment to vanish)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(process_exists(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if process_exists(pid)]


# ------------------------------------------------------------------------------------------------- correctness


def test_energies_and_forces_equal_a_direct_context(alanine, bridge) -> None:
    energies, forces = bridge.energies_forces(alanine.batch)
    expected_energies, expected_forces = direct_energies_forces(alanine.system, alanine.batch)
    assert energies.dtype == np.float64 and energies.shape == (7,)
    assert forces.dtype == np.float64 and forces.shape == (7, 22, 3)
    np.testing.assert_allclose(energies, expected_energies, rtol=1e-6, atol=0)
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-6, atol=1e-6 * np.abs(expected_forces).max())


def test_forces_are_minus_the_energy_gradient_by_central_differences(alanine, bridge) -> None:
    # h = 1e-5 nm: the central-difference error measured here is ~6e-5 kJ/mol/nm (O(h^2)) against forces of up to
    # ~5e3 kJ/mol/nm, so a tolerance of 1e-3 kJ/mol/nm catches any wrong sign, factor or atom order.
    h = 1e-5
    x = alanine.batch[0]
    eye = np.eye(x.size).reshape(x.size, *x.shape)
    gradient = (bridge.energies(x + h * eye) - bridge.energies(x - h * eye)) / (2 * h)
    _, forces = bridge.energies_forces(x[None])
    np.testing.assert_allclose(forces[0].ravel(), -gradient, rtol=0, atol=1e-3)


def test_analytic_harmonic_particle() -> None:
    k, center = 250.0, (0.1, -0.2, 0.3)
    rng = np.random.default_rng(3)
    positions = rng.uniform(-1.0, 1.0, size=(50, 1, 3))
    displacement = positions - np.asarray(center)
    with EnergyBridge(harmonic_particle(k, center), platform="Reference") as bridge:
        energies, forces = bridge.energies_forces(positions)
    np.testing.assert_allclose(energies, 0.5 * k * (displacement**2).sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(forces, -k * displacement, rtol=1e-12, atol=1e-12)


def test_two_workers_equal_one_worker_exactly(alanine, bridge, pool) -> None:
    # 7 conformations over 2 workers: uneven contiguous chunks (4 + 3), gathered in order.
    single_energies, single_forces = bridge.energies_forces(alanine.batch)
    pooled_energies, pooled_forces = pool.energies_forces(alanine.batch)
    assert np.array_equal(single_energies, pooled_energies)
    assert np.array_equal(single_forces, pooled_forces)
    assert np.array_equal(pool.energies(alanine.batch), single_energies)
    one = pool.energies_forces(alanine.batch[:1])  # fewer conformations than workers
    assert np.array_equal(one[0], single_energies[:1]) and np.array_equal(one[1], single_forces[:1])


def test_cpu_platform_workers_equal_in_process_exactly(alanine) -> None:
    with (
        EnergyBridge(alanine.system, platform="CPU") as single,
        EnergyBridge(alanine.system, n_workers=2, platform="CPU") as pooled,
    ):
        assert single.properties[0]["Threads"] == "1"
        assert [p["Threads"] for p in pooled.properties] == ["1", "1"]
        a, b = single.energies_forces(alanine.batch), pooled.energies_forces(alanine.batch)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # CPU computes nonbonded terms in single precision: 1.1e-6 relative to Reference measured here, not exactly.
    expected, _ = direct_energies_forces(alanine.system, alanine.batch)
    np.testing.assert_allclose(a[0], expected, rtol=2e-5)


def test_energies_only_equals_energies_of_energies_forces(alanine, bridge) -> None:
    assert np.array_equal(bridge.energies(alanine.batch), bridge.energies_forces(alanine.batch)[0])


def test_empty_batch(bridge, pool) -> None:
    for b in (bridge, pool):
        energies, forces = b.energies_forces(np.zeros((0, 22, 3)))
        assert energies.shape == (0,) and forces.shape == (0, 22, 3)


def test_public_force_reader_matches_fast_reader(alanine) -> None:
    reference = openmm.Platform.getPlatformByName("Reference")
    context = openmm.Context(alanine.system, openmm.VerletIntegrator(0.001), reference)
    context.setPositions(alanine.positions)
    state = context.getState(getForces=True)
    fast, public = np.empty((22, 3)), np.empty((22, 3))
    energy_workers._read_forces_fast(state, fast)
    energy_workers._read_forces_public(state, public)
    assert np.array_equal(fast, public)


# ------------------------------------------------------------------------------------------ temperature, torch


def test_reduced_energies_scale_as_inverse_temperature(alanine, bridge) -> None:
    x = torch.as_tensor(alanine.batch)
    energies = bridge.potential(x)
    for temperature in (300.0, 600.0 * unit.kelvin, 1000.0):
        kelvin = temperature.value_in_unit(unit.kelvin) if unit.is_quantity(temperature) else temperature
        torch.testing.assert_close(bridge.reduced(x, temperature), energies / (KB * kelvin), rtol=1e-14, atol=0)
    u300, u600 = bridge.reduced(x, 300.0), bridge.reduced(x, 600.0)
    torch.testing.assert_close(u300, 2.0 * u600, rtol=1e-14, atol=0)
    per_sample = torch.linspace(300.0, 1000.0, 7, dtype=torch.float64)
    torch.testing.assert_close(bridge.reduced(x, per_sample), energies / (KB * per_sample), rtol=1e-14, atol=0)
    torch.testing.assert_close(bridge.reduced(x, per_sample.numpy()), energies / (KB * per_sample), rtol=1e-14, atol=0)


def test_autograd_gradients_are_minus_forces_and_minus_beta_forces(alanine, bridge) -> None:
    _, forces = bridge.energies_forces(alanine.batch)
    forces = torch.as_tensor(forces)
    x = torch.tensor(alanine.batch, requires_grad=True)
    (gradient,) = torch.autograd.grad(bridge.potential(x).sum(), x)
    assert torch.equal(gradient, -forces)
    temperatures = torch.tensor([300.0, 350.0, 400.0, 500.0, 600.0, 800.0, 1000.0], dtype=torch.float64)
    (gradient,) = torch.autograd.grad(bridge.reduced(x, temperatures).sum(), x)
    torch.testing.assert_close(gradient, -forces / (KB * temperatures[:, None, None]), rtol=1e-14, atol=0)
    weights = torch.arange(1.0, 8.0, dtype=torch.float64)  # non-uniform upstream gradient
    (gradient,) = torch.autograd.grad((weights * bridge.potential(x)).sum(), x)
    torch.testing.assert_close(gradient, -forces * weights[:, None, None], rtol=1e-14, atol=0)


def test_gradcheck_of_reduced_energy(alanine, bridge) -> None:
    x = torch.tensor(alanine.batch[:2], requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: bridge.reduced(y, 450.0), (x,), eps=1e-6, atol=1e-4, rtol=1e-4)


def test_float32_and_torch_inputs(alanine, bridge) -> None:
    x32 = alanine.batch.astype(np.float32)
    expected = bridge.energies_forces(x32.astype(np.float64))
    for positions in (x32, torch.from_numpy(x32), torch.from_numpy(alanine.batch), alanine.batch * unit.nanometer):
        energies, forces = bridge.energies_forces(positions)
        assert energies.dtype == np.float64 and forces.dtype == np.float64
    energies, forces = bridge.energies_forces(torch.from_numpy(x32))
    assert np.array_equal(energies, expected[0]) and np.array_equal(forces, expected[1])
    x = torch.from_numpy(x32).requires_grad_(True)
    potential = bridge.potential(x)
    assert potential.dtype == torch.float32
    potential.sum().backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, torch.from_numpy(-expected[1]).float())


@pytest.mark.gpu
def test_cuda_tensors_come_back_on_their_device(alanine, bridge) -> None:
    x = torch.tensor(alanine.batch, device="cuda", dtype=torch.float32, requires_grad=True)
    u = bridge.reduced(x, torch.full((7,), 600.0, device="cuda"))
    assert u.device == x.device and u.dtype == torch.float32
    u.sum().backward()
    assert x.grad.device == x.device
    expected = -torch.from_numpy(bridge.energies_forces(x.detach())[1]) / (KB * 600.0)
    torch.testing.assert_close(x.grad.cpu(), expected.float())


# ------------------------------------------------------------------------------------------- non-finite input


def test_non_finite_positions_and_energies_give_inf_and_zero_force(alanine, bridge, pool) -> None:
    batch = alanine.batch.copy()
    batch[1, 5, 0] = np.nan
    batch[3, 0, 2] = np.inf
    batch[5, 1] = batch[5, 0]  # two atoms on top of each other: OpenMM returns a NaN energy
    clean = [0, 2, 4, 6]
    expected_energies, expected_forces = bridge.energies_forces(alanine.batch[clean])
    for b in (bridge, pool):
        energies, forces = b.energies_forces(batch)
        assert np.array_equal(energies[[1, 3, 5]], [np.inf] * 3)
        assert not forces[[1, 3, 5]].any()
        assert np.array_equal(energies[clean], expected_energies) and np.array_equal(forces[clean], expected_forces)
        assert np.array_equal(b.energies(batch)[[1, 3, 5]], [np.inf] * 3)
    x = torch.tensor(batch, requires_grad=True)
    u = bridge.reduced(x, 600.0)
    assert torch.isinf(u[[1, 3, 5]]).all() and torch.isfinite(u[clean]).all()
    u[clean].sum().backward()
    assert torch.isfinite(x.grad).all() and not x.grad[[1, 3, 5]].any()


def test_overflowing_energy_gives_inf() -> None:
    with EnergyBridge(harmonic_particle(250.0, (0.0, 0.0, 0.0)), platform="Reference") as bridge:
        energies, forces = bridge.energies_forces(np.array([[[1e200, 0.0, 0.0]], [[0.1, 0.0, 0.0]]]))
    assert energies[0] == np.inf and not forces[0].any()
    np.testing.assert_allclose(energies[1], 1.25, rtol=1e-12)


def test_openmm_exception_for_one_conformation_gives_inf(alanine) -> None:
    class FailsOnSecondConformation:
        """Forwards to a real Context, but raises like OpenMM does on a bad coordinate for one conformation."""

        def __init__(self, context: openmm.Context, bad: np.ndarray) -> None:
            self.context, self.bad, self.current = context, bad, None

        def setPositions(self, positions: np.ndarray) -> None:
            self.current = positions
            self.context.setPositions(positions)

        def getState(self, **kwargs: bool) -> openmm.State:
            if np.array_equal(self.current, self.bad):
                raise openmm.OpenMMException("Particle coordinate is NaN.  For more information, see ...")
            return self.context.getState(**kwargs)

    with EnergyBridge(alanine.system, platform="Reference") as bridge:
        expected = bridge.energies_forces(alanine.batch[:3])
        evaluator = bridge._evaluator
        evaluator._context = FailsOnSecondConformation(evaluator._context, alanine.batch[1])
        energies, forces = bridge.energies_forces(alanine.batch[:3])
    assert energies[1] == np.inf and not forces[1].any()
    assert np.array_equal(energies[[0, 2]], expected[0][[0, 2]]) and np.array_equal(forces[[0, 2]], expected[1][[0, 2]])


# ------------------------------------------------------------------------------------------- errors, lifecycle


def test_input_validation(alanine, bridge) -> None:
    with pytest.raises(InputError, match=r"\[5, 21, 3\].*\[n, 22, 3\]"):
        bridge.energies_forces(np.zeros((5, 21, 3)))
    with pytest.raises(InputError, match=r"positions\[None\]"):
        bridge.energies_forces(alanine.positions)
    with pytest.raises(InputError, match="real array"):
        bridge.energies_forces([["a"]])
    with pytest.raises(InputError, match=r"openmm\.System"):
        EnergyBridge("alanine-dipeptide")
    with pytest.raises(InputError, match="unknown platform"):
        EnergyBridge(alanine.system, platform="GPU")
    with pytest.raises(InputError, match="n_workers"):
        EnergyBridge(alanine.system, n_workers=0)
    with pytest.raises(InputError, match="one per worker"):
        EnergyBridge(alanine.system, n_workers=2, platform="CPU", platform_properties={"Threads": ["1", "1", "1"]})
    with pytest.raises(InputError, match="n_workers=1"):
        EnergyBridge(alanine.system, n_workers=2, in_process=True)
    x = torch.tensor(alanine.batch)
    with pytest.raises(InputError, match="kelvin > 0"):
        bridge.reduced(x, -300.0)
    with pytest.raises(InputError, match="kelvin > 0"):
        bridge.reduced(x, torch.zeros(7))
    with pytest.raises(InputError, match="one per conformation"):
        bridge.reduced(x, torch.full((3,), 300.0))


def available() -> list[str]:
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def test_unavailable_platform_is_an_input_error(alanine) -> None:
    missing = [name for name in platforms.PLATFORMS if name not in available()]
    if not missing:
        pytest.skip("every OpenMM platform is available here")
    with pytest.raises(InputError, match=rf"platform '{missing[0]}' is not available.*install"):
        EnergyBridge(alanine.system, platform=missing[0].lower())


def test_accepts_objects_with_a_system_attribute_and_auto_times_cpu_platforms(alanine) -> None:
    holder = types.SimpleNamespace(system=alanine.system, positions=alanine.positions)
    with EnergyBridge(holder, platform="auto") as bridge:
        assert {"Reference", "CPU"} <= set(bridge.auto_timings) <= {"Reference", "CPU", "CUDA"}
        assert bridge.platform_name == min(bridge.auto_timings, key=bridge.auto_timings.get)  # one worker
        energies, _ = bridge.energies_forces(alanine.batch)
    expected, _ = direct_energies_forces(alanine.system, alanine.batch)
    np.testing.assert_allclose(energies, expected, rtol=2e-5)  # CPU if auto picks it


def test_accepts_the_project_molecular_system() -> None:
    systems = pytest.importorskip("trade_md.systems")
    molecule = systems.load_system("alanine-dipeptide")
    with EnergyBridge(molecule, platform="Reference") as bridge:
        energies, _ = bridge.energies_forces(molecule.positions[None])
    expected, _ = direct_energies_forces(molecule.system, molecule.positions[None])
    np.testing.assert_allclose(energies, expected, rtol=1e-6)


def test_warns_when_gpu_workers_would_share_a_device() -> None:
    warn = energy_module._gpu_sharing_warning
    assert "share GPU devices ['']" in warn("CUDA", [{}, {}])
    assert "share GPU devices ['0']" in warn("OpenCL", [{"DeviceIndex": "0"}, {"DeviceIndex": "0"}])
    assert warn("CUDA", [{"DeviceIndex": "0"}, {"DeviceIndex": "1"}]) is None
    assert warn("CUDA", [{}]) is None
    assert warn("Reference", [{}, {}]) is None


def test_a_worker_that_raises_surfaces_as_worker_error_with_its_message(alanine) -> None:
    with pytest.raises(WorkerError, match=r"(?s)energy worker 0 could not create.*Illegal property name: Bogus"):
        EnergyBridge(alanine.system, n_workers=2, platform="Reference", platform_properties={"Bogus": "1"})
    with pytest.raises(WorkerError, match="Illegal property name: Bogus"):
        EnergyBridge(alanine.system, platform="Reference", platform_properties={"Bogus": "1"})


def test_a_worker_that_raises_mid_batch_surfaces_as_worker_error_and_the_pool_stays_usable(alanine, pool) -> None:
    # Bypass the bridge's validation to hand the workers a buffer that does not fit: each raises in its loop.
    wrong = np.zeros((4, 21, 3))
    with pytest.raises(WorkerError, match=r"(?s)energy worker 0 \(pid \d+\) raised:.*cannot reshape.*worker 1"):
        pool._pool.evaluate(wrong, np.empty(4), np.empty((4, 22, 3)))
    energies, _ = pool.energies_forces(alanine.batch)  # replies stayed in step: the next batch is right
    expected, _ = direct_energies_forces(alanine.system, alanine.batch)
    np.testing.assert_allclose(energies, expected, rtol=1e-6)


def test_a_worker_that_dies_surfaces_as_worker_error_and_ends_the_others(alanine) -> None:
    bridge = EnergyBridge(alanine.system, n_workers=2, platform="Reference")
    pids = bridge.worker_pids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerError, match=rf"energy worker 1 \(pid {pids[1]}\) was killed by signal SIGKILL"):
        bridge.energies_forces(alanine.batch)
    assert wait_gone(pids) == []
    with pytest.raises(WorkerError, match="closed"):
        bridge.energies(alanine.batch)


def test_close_context_exit_and_garbage_collection_end_the_workers(alanine) -> None:
    bridge = EnergyBridge(alanine.system, n_workers=2, platform="Reference")
    pids = bridge.worker_pids
    assert len(pids) == 2 and all(process_exists(pid) for pid in pids)
    bridge.close()
    assert wait_gone(pids, seconds=0.0) == []  # close() joins them: gone on return
    bridge.close()  # idempotent
    with pytest.raises(WorkerError, match="closed"):
        bridge.energies(alanine.batch)

    with EnergyBridge(alanine.system, n_workers=2, platform="Reference") as bridge:
        pids = bridge.worker_pids
    assert wait_gone(pids, seconds=0.0) == []

    bridge = EnergyBridge(alanine.system, n_workers=2, platform="Reference")
    pids = bridge.worker_pids
    del bridge
    assert wait_gone(pids) == []


SCRIPT = """
import sys, numpy as np, openmm
from trade_md.energy import EnergyBridge

if __name__ == "__main__":
    system = openmm.System()
    pairs = openmm.CustomNonbondedForce("r^2")  # all pairs of 500 particles: a few ms per conformation
    for _ in range(500):
        system.addParticle(1.0)
        pairs.addParticle([])
    system.addForce(pairs)
    bridge = EnergyBridge(system, n_workers=2, platform="Reference")
    print(*bridge.worker_pids, flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)  # no close(): interpreter exit must end the workers
    x = np.random.default_rng(0).uniform(0.0, 3.0, size=(10000, 500, 3))
    print("evaluating", flush=True)
    try:
        bridge.energies(x)  # tens of seconds per worker chunk: interrupted below, mid-request
    except KeyboardInterrupt:
        print("workers left after the interrupt:", len(bridge.worker_pids), flush=True)
        raise
"""


@pytest.mark.parametrize("how", ["exit", "ctrl-c"])
def test_no_orphans_after_interpreter_exit_or_ctrl_c(how: str, tmp_path: Path) -> None:
    script = tmp_path / "bridge_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # A new session stands in for a terminal: Ctrl-C sends SIGINT to the whole foreground process group.
    child = subprocess.Popen(
        [sys.executable, str(script), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        # a shell that starts pytest in the background (`cmd &`) makes it ignore SIGINT, and children inherit that;
        # a terminal's foreground job has the default disposition, which is what this test stands in for
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        pids = [int(pid) for pid in child.stdout.readline().split()]
        assert len(pids) == 2, child.stderr.read()
        if how == "ctrl-c" and Path("/proc").is_dir():
            for pid in pids:  # workers ignore SIGINT (bit 2 - 1 of the SigIgn mask) so the parent handles it
                mask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if "SigIgn" in line)
                assert int(mask.split()[1], 16) & (1 << (signal.SIGINT - 1))
        if how == "ctrl-c":
            assert child.stdout.readline().strip() == "evaluating"
            time.sleep(0.5)
            os.killpg(child.pid, signal.SIGINT)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    if how == "ctrl-c":
        assert child.returncode != 0 and "KeyboardInterrupt" in stderr
        assert stderr.count("KeyboardInterrupt") == 1, stderr  # the workers ignored it: one traceback only
        assert "workers left after the interrupt: 0" in stdout  # ended by the interrupted call itself
    else:
        assert child.returncode == 0, stderr
    # No orphans: nothing of the script outlives it (a worker's own chunk here would run for tens of seconds).
    assert wait_gone(pids, seconds=3.0) == []

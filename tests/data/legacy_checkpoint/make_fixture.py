"""Make the legacy-checkpoint fixture with the code of commit 4361c9f (the last one before the restructure).

Run it against a checkout of that commit, never against the current package:

    git worktree add /tmp/legacy 4361c9f
    PYTHONPATH=/tmp/legacy python tests/data/legacy_checkpoint/make_fixture.py tests/data/legacy_checkpoint

It trains a tiny float64 TRADE model of alanine dipeptide (mode trade over 300-1000 K, T0 = 600 K, thermal scaling,
6 steps on 5 ps of MD at 600 K) with the flat ``TrainConfig`` of that commit, exports its checkpoint without the
optimiser state (``checkpoint.pt``) and records what that code computes with it (``expected.npz``): log q of 8 MD frames at 300, 600 and 1000 K, and 16 samples (positions and log q) drawn at
450 K after ``torch.manual_seed(SAMPLE_SEED)``. tests/test_checkpoint_compat.py checks the current code against it.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import trade_md

if (Path(trade_md.__file__).parent / "thermo.py").exists():  # added by the restructure
    raise SystemExit(f"trade_md comes from {trade_md.__file__}, which is newer than 4361c9f; put a checkout of that "
                     "commit first on PYTHONPATH")

from trade_md.energy import EnergyBridge  # noqa: E402  (the legacy API of 4361c9f)
from trade_md.flows import molecule_generator  # noqa: E402
from trade_md.md import ConvergenceWarning, load_dataset, run_md  # noqa: E402
from trade_md.systems import load_system  # noqa: E402
from trade_md.train import SystemRecord, TrainConfig, Trainer, load_generator, split_frames  # noqa: E402

LOG_Q_TEMPERATURES = (300.0, 600.0, 1000.0)
"""K, where log q of the frames is recorded."""
SAMPLE_TEMPERATURE = 450.0
"""K, where the samples are drawn."""
SAMPLE_SEED = 20250125
N_FRAMES, N_SAMPLES = 8, 16

TRAIN = {
    "mode": "trade", "temperature_min": 300.0, "temperature_max": 1000.0, "steps": 6, "batch_size": 16,
    "kl_weight": 0.1, "kl_batch_size": 8, "trade_batch_size": 16, "trade_start": 2, "trade_ramp": 2,
    "grid_nodes": 4, "grid_samples": 32, "grid_refresh_every": 2, "checkpoint_every": 3, "validate_every": 3,
    "energy_platform": "Reference", "progress": False, "dtype": "float64", "learning_rate": 1e-2,
    "flow": {"n_layers": 2, "hidden": 8, "n_bins": 4, "thermal_scaling": True},
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            run_md(load_system("alanine-dipeptide"), 600.0, work / "data", ns=0.005, replicas=1, seed=1,
                   equilibration_ps=1.0, frame_interval_ps=0.05, platform="Reference", progress=False)
        dataset = load_dataset(work / "data")
        config = TrainConfig.from_dict({**TRAIN, "data": "data", "out": "model",
                                        "reference_temperature": dataset.temperature})
        torch.manual_seed(0)
        training, _ = split_frames(dataset.positions, config)
        generator = molecule_generator(dataset.system, training, dataset.temperature, **config.flow)
        with EnergyBridge(dataset.system, platform="Reference") as bridge:
            Trainer(generator, config, SystemRecord.of(dataset.system), potential=bridge.potential,
                    data=torch.as_tensor(dataset.positions), out=work / "model").run()
        checkpoint = torch.load(work / "model" / "checkpoint.pt", map_location="cpu", weights_only=True)
        frames = np.asarray(dataset.positions[:: dataset.positions.shape[0] // N_FRAMES][:N_FRAMES], dtype=np.float64)
    del checkpoint["optimizer_state"]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out / "checkpoint.pt")

    model, _, saved = load_generator(out)
    context_weights = [layer.conditioner[0].weight[:, -1] for layer in model.flow.layers]
    assert model.dtype == torch.float64 and any(bool((w != 0).any()) for w in context_weights)
    with torch.no_grad():
        log_q = np.stack([model.log_prob(torch.as_tensor(frames), t).numpy() for t in LOG_Q_TEMPERATURES])
        torch.manual_seed(SAMPLE_SEED)
        samples, samples_log_q = model.sample(N_SAMPLES, SAMPLE_TEMPERATURE)
    np.savez(out / "expected.npz", frames_nm=frames, log_q_temperatures_k=np.array(LOG_Q_TEMPERATURES),
             log_q=log_q, sample_temperature_k=np.float64(SAMPLE_TEMPERATURE), sample_seed=np.int64(SAMPLE_SEED),
             samples_nm=samples.numpy(), samples_log_q=samples_log_q.numpy(),
             trained_range_k=np.array([saved.temperature_min, saved.temperature_max]),
             steps=np.int64(checkpoint["step"]), reference_temperature_k=np.float64(model.reference_temperature))
    print(f"wrote {out / 'checkpoint.pt'} ({(out / 'checkpoint.pt').stat().st_size} bytes) and {out / 'expected.npz'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent))

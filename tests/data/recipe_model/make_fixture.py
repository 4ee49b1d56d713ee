"""Write the recipe-size model fixture of tests/test_speed_compat.py: what one version of the code computes with it.

The model is the recipe's flow (8 coupling layers, hidden 128, 2 hidden layers, 8 bins, the thermal scaling layer;
benchmarks/configs/ala2_boundary.yaml + ala2_split.yaml) on alanine dipeptide's internal coordinates, in float64.
Its weights are not stored (7.6 MB): :func:`model_weights` draws every entry of the state dict from a seeded numpy
stream, in sorted key order, so the same weights come back with any code that has the same state-dict layout. Its
coordinate normalisation comes from :func:`frames` (the PDB positions plus seeded Gaussian noise) and is stored in
``config.json`` (``Generator.config()``).

``expected.npz``: the frames (``frames_nm``), log q of them at 280, 600 and 1050 K; 24 samples drawn at 450 K after
``torch.manual_seed(SAMPLE_SEED)`` with their log q; ∂ log q / ∂ log T of the frames at 450 K (what the TRADE
residual differentiates); and, for the gradients, per parameter tensor the dot product of d(Σ log q) / dθ (frames
at 450 K) and of d(Σ ∂ log q / ∂ log T) / dθ with a seeded random direction of the same shape (first and second
derivatives of the TRADE objective). ``weights_checksum`` guards the weight stream itself.

Made with the code of commit 29047b0 (main before the speed work of issue 28):
``git worktree add /tmp/base 29047b0 && PYTHONPATH=/tmp/base python tests/data/recipe_model/make_fixture.py``
(writes next to this script; ``--out DIR`` elsewhere). Torch 2.13.0, one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

FLOW = {"n_layers": 8, "hidden": 128, "n_hidden_layers": 2, "n_bins": 8, "seed": 0, "thermal_scaling": True}
T0 = 600.0
LOG_Q_TEMPERATURES = (280.0, 600.0, 1050.0)
SAMPLE_TEMPERATURE = 450.0
DERIVATIVE_TEMPERATURE = 450.0
SAMPLE_SEED = 2028
N_FRAMES = 24
N_SAMPLES = 24
WEIGHT_SEED = 28
HERE = Path(__file__).resolve().parent


def frames(system, n: int = N_FRAMES) -> np.ndarray:
    """``[n, atoms, 3]`` nm: the PDB positions plus Gaussian noise of 0.004 nm (seeded)."""
    from trade_md.thermo import to_nm

    positions = np.asarray(to_nm(system.positions), dtype=np.float64)
    noise = np.random.default_rng(7).normal(0.0, 0.004, size=(n,) + positions.shape)
    return positions[None] + noise


def model_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating-point entry of ``state_dict`` drawn from a seeded stream (float64, sorted keys): linear weights
    ``N(0, 1 / fan_in)``, output layers a third of that, biases ``N(0, 0.1²)``, thermal-scaling exponents in
    ``[0.5, 1.5]`` and centres ``N(0, 0.3²)``; integer buffers and the coordinate normalisation are kept."""
    rng = np.random.default_rng(WEIGHT_SEED)
    out = dict(state_dict)
    for key in sorted(state_dict):
        value = state_dict[key]
        if not value.is_floating_point() or not key.startswith("flow.") or key.startswith("flow.phase_shifts") \
                or key in ("flow._low", "flow._high"):
            continue
        shape = tuple(value.shape)
        if key.endswith("scaling.exponent"):
            drawn = rng.uniform(0.5, 1.5, size=shape)
        elif key.endswith("scaling.centre"):
            drawn = rng.normal(0.0, 0.3, size=shape)
        elif key.endswith(".weight"):
            last = key.rsplit(".", 2)[-2]
            scale = 1.0 / np.sqrt(shape[1])
            if last == str(2 * FLOW["n_hidden_layers"]):  # the output layer of a conditioner
                scale /= 3.0
            drawn = rng.normal(0.0, scale, size=shape)
        else:
            drawn = rng.normal(0.0, 0.1, size=shape)
        out[key] = torch.as_tensor(drawn, dtype=torch.float64)
    return out


def directions(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A seeded random direction ``[same shape]`` per parameter (float64), for gradient projections."""
    rng = np.random.default_rng(WEIGHT_SEED + 1)
    return {name: torch.as_tensor(rng.standard_normal(tuple(p.shape)), dtype=torch.float64)
            for name, p in sorted(generator.named_parameters())}


def build(config: dict) -> torch.nn.Module:
    """The fixture model from its config: ``Generator.from_config`` with :func:`model_weights`, float64."""
    from trade_md.generator import Generator

    generator = Generator.from_config(config).double()
    generator.load_state_dict(model_weights(generator.state_dict()))
    return generator


def weights_checksum(generator: torch.nn.Module) -> float:
    return float(sum(float(p.detach().double().sum()) + float((p.detach().double() ** 2).sum())
                     for p in generator.parameters()))


def compute(generator: torch.nn.Module, frames_nm: np.ndarray) -> dict[str, np.ndarray]:
    """Everything ``expected.npz`` holds, computed with the code on the path."""
    x = torch.as_tensor(frames_nm, dtype=torch.float64)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        out["log_q"] = np.stack([generator.log_prob(x, t).numpy() for t in LOG_Q_TEMPERATURES])
        torch.manual_seed(SAMPLE_SEED)
        samples, log_q = generator.sample(N_SAMPLES, SAMPLE_TEMPERATURE)
    out["samples_nm"], out["samples_log_q"] = samples.numpy(), log_q.numpy()
    parameters = dict(sorted(generator.named_parameters()))
    direction = directions(generator)
    generator.zero_grad()
    log_t = torch.full((x.shape[0],), np.log(DERIVATIVE_TEMPERATURE), dtype=torch.float64, requires_grad=True)
    log_q = generator.log_prob(x, torch.exp(log_t))
    (derivative,) = torch.autograd.grad(log_q.sum(), log_t, create_graph=True)
    first = torch.autograd.grad(log_q.sum(), list(parameters.values()), retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(derivative.sum(), list(parameters.values()), allow_unused=True)
    out["derivative_log_t"] = derivative.detach().numpy()
    out["parameter_names"] = np.array(list(parameters))
    out["gradient_projection"] = np.array([0.0 if g is None else float((g * direction[name]).sum())
                                           for name, g in zip(parameters, first)])
    out["derivative_gradient_projection"] = np.array([0.0 if g is None else float((g * direction[name]).sum())
                                                      for name, g in zip(parameters, second)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import trade_md
    from trade_md.generator import molecule_generator
    from trade_md.systems import load_system

    system = load_system("alanine-dipeptide")
    frames_nm = frames(system)
    torch.manual_seed(0)
    config = molecule_generator(system, frames_nm, T0, **FLOW).config()
    generator = build(config)
    expected = compute(generator, frames_nm)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(args.out / "expected.npz", frames_nm=frames_nm, weights_checksum=weights_checksum(generator),
                        log_q_temperatures_k=np.array(LOG_Q_TEMPERATURES), sample_temperature_k=SAMPLE_TEMPERATURE,
                        sample_seed=SAMPLE_SEED, derivative_temperature_k=DERIVATIVE_TEMPERATURE, **expected)
    print(f"wrote {args.out} with trade_md from {Path(trade_md.__file__).parent}")


if __name__ == "__main__":
    main()

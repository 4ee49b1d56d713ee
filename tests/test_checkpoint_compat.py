"""A checkpoint written before the restructure (commit 4361c9f, flat TrainConfig) loads with the current code and
gives the same log q and the same samples for a fixed seed (fixture: tests/data/legacy_checkpoint/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trade_md.formats.checkpoint import load_generator

FIXTURE = Path(__file__).resolve().parent / "data" / "legacy_checkpoint"
TOLERANCE = 1e-5
"""Largest absolute difference allowed: nats for log q, nm for positions (the model is float64)."""


def test_legacy_checkpoint_gives_identical_log_q_and_samples() -> None:
    expected = np.load(FIXTURE / "expected.npz")
    model = load_generator(FIXTURE)
    generator = model.generator
    assert model.system.name == "alanine-dipeptide" and model.config["mode"] == "trade"
    assert model.trained_range == tuple(expected["trained_range_k"].tolist())
    assert model.steps == int(expected["steps"])
    assert generator.dtype == torch.float64
    assert generator.reference_temperature == float(expected["reference_temperature_k"])
    frames = torch.as_tensor(expected["frames_nm"])
    with torch.no_grad():
        for temperature, log_q in zip(expected["log_q_temperatures_k"], expected["log_q"]):
            np.testing.assert_allclose(generator.log_prob(frames, float(temperature)).numpy(), log_q,
                                       rtol=0.0, atol=TOLERANCE)
        torch.manual_seed(int(expected["sample_seed"]))
        samples, log_q = generator.sample(expected["samples_nm"].shape[0], float(expected["sample_temperature_k"]))
    np.testing.assert_allclose(samples.numpy(), expected["samples_nm"], rtol=0.0, atol=TOLERANCE)
    np.testing.assert_allclose(log_q.numpy(), expected["samples_log_q"], rtol=0.0, atol=TOLERANCE)

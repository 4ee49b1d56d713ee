"""A checkpoint written before the restructure (commit 4361c9f, flat TrainConfig) loads with the current code and
gives the same log q and the same samples for a fixed seed (fixture: tests/data/legacy_checkpoint/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


# ---------------------------------------------------------------- the recipe-size model (issue 28)

RECIPE_FIXTURE = Path(__file__).resolve().parent / "data" / "recipe_model"


def _fixture_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_model_fixture", RECIPE_FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_size_model_gives_the_baseline_log_q_samples_and_gradients() -> None:
    """The recipe's flow (8 x 128, thermal scaling, float64) computes what commit 29047b0 computed (fixture:
    tests/data/recipe_model/make_fixture.py): log q, samples for a fixed seed, d log q / d log T and the gradients
    of both with respect to every parameter tensor (projected on seeded random directions)."""
    import json

    fixture = _fixture_module()
    expected = np.load(RECIPE_FIXTURE / "expected.npz")
    generator = fixture.build(json.loads((RECIPE_FIXTURE / "config.json").read_text()))
    assert fixture.weights_checksum(generator) == pytest.approx(float(expected["weights_checksum"]), rel=1e-12)
    got = fixture.compute(generator, expected["frames_nm"])
    np.testing.assert_allclose(got["log_q"], expected["log_q"], rtol=0.0, atol=TOLERANCE)
    np.testing.assert_allclose(got["samples_nm"], expected["samples_nm"], rtol=0.0, atol=TOLERANCE)
    np.testing.assert_allclose(got["samples_log_q"], expected["samples_log_q"], rtol=0.0, atol=TOLERANCE)
    np.testing.assert_allclose(got["derivative_log_t"], expected["derivative_log_t"], rtol=0.0, atol=TOLERANCE)
    assert got["parameter_names"].tolist() == expected["parameter_names"].tolist()
    for key in ("gradient_projection", "derivative_gradient_projection"):
        scale = np.abs(expected[key]).max()
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-9 * scale, err_msg=key)

"""Classifier-free guidance, oscillating weights and dynamic thresholding."""

import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import (
    Schedule,
    cfg_combine,
    cfg_model_fn,
    dynamic_threshold,
    oscillating_weights,
    per_step_weights,
)

RNG = np.random.default_rng(3)
B = 4
Z = RNG.standard_normal((B, 2, 3, 3, 2)).astype(np.float32)
LOGSNR = np.linspace(-3, 3, B).astype(np.float32)
TEXT = RNG.standard_normal((B, 2)).astype(np.float32)
NULL = np.zeros((B, 2), np.float32)


def model(z, logsnr, text):
    """A nonlinear toy conditional model fn(z, logsnr, text) -> v."""
    gain = jnp.tanh(text[:, 0] + 0.3 * logsnr).reshape(-1, 1, 1, 1, 1)
    return jnp.sin(z) * gain + text[:, 1].reshape(-1, 1, 1, 1, 1)


def batched_model(calls):
    """The cond/null stacked model, counting its calls and checking its batch."""
    stacked = np.concatenate([TEXT, NULL])

    def fn(z2, logsnr2):
        calls.append(z2.shape[0])
        return model(z2, logsnr2, stacked)

    return fn


def test_cfg_zero_weight_is_the_conditional_prediction():
    guided = cfg_model_fn(batched_model([]), 0.0)
    np.testing.assert_allclose(guided(Z, LOGSNR), model(Z, LOGSNR, TEXT), atol=1e-7)


@pytest.mark.parametrize("w", [1.0, 7.5, np.array([0.0, 1.0, 3.0, 15.0], np.float32)])
def test_cfg_one_batched_call_equals_two_separate_calls(w):
    calls = []
    guided = cfg_model_fn(batched_model(calls), w)(Z, LOGSNR)
    assert calls == [2 * B]
    cond = np.asarray(model(Z, LOGSNR, TEXT), np.float64)
    uncond = np.asarray(model(Z, LOGSNR, NULL), np.float64)
    w64 = np.asarray(w, np.float64).reshape(-1, 1, 1, 1, 1) if np.ndim(w) else w
    np.testing.assert_allclose(guided, (1 + w64) * cond - w64 * uncond, atol=1e-6 * (1 + 15))
    np.testing.assert_allclose(
        guided, cfg_combine(model(Z, LOGSNR, TEXT), model(Z, LOGSNR, NULL), w), atol=1e-6
    )


def test_oscillating_weights_documented_pattern():
    got = oscillating_weights(10, num_constant=4, w_high=15.0, w_low=1.0)
    np.testing.assert_array_equal(got, [15, 15, 15, 15, 1, 15, 1, 15, 1, 15])
    np.testing.assert_array_equal(oscillating_weights(3, num_constant=3), [15, 15, 15])
    np.testing.assert_array_equal(
        oscillating_weights(4, num_constant=0, w_high=8.0, w_low=2.0), [2, 8, 2, 8]
    )
    with pytest.raises(ValueError, match="num_constant"):
        oscillating_weights(4, num_constant=5)


def test_per_step_weights_follow_the_sampler_grid():
    num_steps = 12
    weights = oscillating_weights(num_steps, num_constant=5)
    for schedule in (Schedule(), Schedule(shift=-2.0), Schedule("linear")):
        lookup = per_step_weights(weights, schedule)
        grid_t = jnp.linspace(1.0, 0.0, num_steps + 1)[:-1]  # samplers call at t = N/N .. 1/N
        got = [float(lookup(schedule(jnp.full((2,), t)))[0]) for t in grid_t]
        np.testing.assert_array_equal(got, weights)


def test_cfg_with_per_step_weights_uses_weight_of_the_level():
    schedule = Schedule()
    weights = np.array([3.0, 0.0], np.float32)
    guided = cfg_model_fn(batched_model([]), per_step_weights(weights, schedule))
    at_start = schedule(jnp.ones((B,)))
    cond, uncond = model(Z, at_start, TEXT), model(Z, at_start, NULL)
    np.testing.assert_allclose(guided(Z, at_start), 4 * cond - 3 * uncond, atol=1e-5)
    half = schedule(jnp.full((B,), 0.5))
    np.testing.assert_allclose(guided(Z, half), model(Z, half, TEXT), atol=1e-6)


def ref_dynamic_threshold(x, p):
    flat = np.abs(x.reshape(x.shape[0], -1)).astype(np.float64)
    s = np.maximum(np.quantile(flat, p, axis=1), 1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return np.clip(x, -s, s) / s


@pytest.mark.parametrize("p", [0.995, 0.9, 1.0])
def test_dynamic_threshold_matches_numpy(p):
    x = RNG.standard_normal((5, 4, 6, 6, 3)) * np.array([0.2, 1, 2, 5, 20]).reshape(-1, 1, 1, 1, 1)
    x = x.astype(np.float32)
    got = dynamic_threshold(x, p)
    np.testing.assert_allclose(got, ref_dynamic_threshold(x, p), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], x[0])  # within [-1, 1]: untouched
    assert float(jnp.max(jnp.abs(got))) <= 1.0
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(x, 0.0)

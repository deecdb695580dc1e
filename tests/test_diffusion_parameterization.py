"""x / eps / v conversions and the DDIM step against float64 NumPy references written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import (
    ddim_step,
    diffuse,
    eps_from_v,
    eps_from_x,
    prediction_target,
    to_x_eps,
    v_from_eps,
    v_from_x,
    v_from_x_eps,
    x_from_eps,
    x_from_v,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 3, 4, 5, 2)).astype(np.float32)
EPS = RNG.standard_normal(X.shape).astype(np.float32)


def ref_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64)
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def bcast(a):
    return np.asarray(a, np.float64).reshape(-1, 1, 1, 1, 1)


def ref_z_v(logsnr):
    alpha, sigma = (bcast(a) for a in ref_alpha_sigma(logsnr))
    x, eps = X.astype(np.float64), EPS.astype(np.float64)
    return alpha * x + sigma * eps, alpha * eps - sigma * x


FULL_RANGE = np.array([-20.0, -7.0, -1.0, 0.0, 3.0, 20.0], np.float32)
MODERATE = np.array([-3.0, -1.5, -0.5, 0.0, 1.0, 3.0], np.float32)


def test_forward_definitions_match_reference():
    z_ref, v_ref = ref_z_v(FULL_RANGE)
    np.testing.assert_allclose(diffuse(X, EPS, FULL_RANGE), z_ref, atol=1e-6)
    np.testing.assert_allclose(v_from_x_eps(X, EPS, FULL_RANGE), v_ref, atol=1e-6)


def test_v_conversions_round_trip_over_full_range():
    z, v = (a.astype(np.float32) for a in ref_z_v(FULL_RANGE))
    np.testing.assert_allclose(x_from_v(z, v, FULL_RANGE), X, atol=1e-6)
    np.testing.assert_allclose(eps_from_v(z, v, FULL_RANGE), EPS, atol=1e-6)
    np.testing.assert_allclose(
        x_from_v(diffuse(X, EPS, FULL_RANGE), v_from_x_eps(X, EPS, FULL_RANGE), FULL_RANGE),
        X,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("convert", "inputs", "expected"),
    [
        (x_from_eps, "eps", "x"),
        (eps_from_x, "x", "eps"),
        (v_from_x, "x", "v"),
        (v_from_eps, "eps", "v"),
    ],
)
def test_divided_conversions_match_reference(convert, inputs, expected):
    """Conversions that divide by alpha or sigma, checked where both are >= 0.2: float32 input
    rounding (~2.4e-7 at |value| ~ 4) grows by up to 1 / 0.2, hence 2e-6."""
    z, v = ref_z_v(MODERATE)
    values = {"x": X.astype(np.float64), "eps": EPS.astype(np.float64), "v": v}
    got = convert(z.astype(np.float32), values[inputs].astype(np.float32), MODERATE)
    np.testing.assert_allclose(got, values[expected], atol=2e-6)


def test_every_direction_round_trips():
    """Round trips through the divided conversions (tolerance as above)."""
    z = diffuse(X, EPS, MODERATE)
    v = v_from_x_eps(X, EPS, MODERATE)
    np.testing.assert_allclose(v_from_x(z, x_from_v(z, v, MODERATE), MODERATE), v, atol=2e-6)
    np.testing.assert_allclose(v_from_eps(z, eps_from_v(z, v, MODERATE), MODERATE), v, atol=2e-6)
    np.testing.assert_allclose(
        eps_from_x(z, x_from_eps(z, EPS, MODERATE), MODERATE), EPS, atol=2e-6
    )


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_to_x_eps_recovers_truth_for_each_parameterization(prediction):
    z = diffuse(X, EPS, MODERATE)
    pred = prediction_target(prediction, X, EPS, MODERATE)
    x_hat, eps_hat = to_x_eps(prediction, z, pred, MODERATE)
    np.testing.assert_allclose(x_hat, X, atol=1e-5)
    np.testing.assert_allclose(eps_hat, EPS, atol=1e-5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        to_x_eps("score", z, pred, MODERATE)


def test_scalar_logsnr_broadcasts_and_bfloat16_computes_in_float32():
    np.testing.assert_allclose(
        v_from_x_eps(X, EPS, 0.7), v_from_x_eps(X, EPS, np.full(6, 0.7, np.float32)), atol=0
    )
    xb, eb = jnp.asarray(X, jnp.bfloat16), jnp.asarray(EPS, jnp.bfloat16)
    got = v_from_x_eps(xb, eb, MODERATE)
    assert got.dtype == jnp.bfloat16
    alpha, sigma = (bcast(a) for a in ref_alpha_sigma(MODERATE))
    expected = alpha * np.asarray(eb, np.float64) - sigma * np.asarray(xb, np.float64)
    # One bfloat16 rounding of the float32 result: within half a bfloat16 ulp (2^-9 relative).
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2**-8, atol=1e-6)


def test_ddim_step_matches_reference_and_is_jittable():
    logsnr_t, logsnr_s = MODERATE, MODERATE + 1.5
    z, v = ref_z_v(logsnr_t)
    alpha_t, sigma_t = (bcast(a) for a in ref_alpha_sigma(logsnr_t))
    alpha_s, sigma_s = (bcast(a) for a in ref_alpha_sigma(logsnr_s))
    x_hat, eps_hat = alpha_t * z - sigma_t * v, sigma_t * z + alpha_t * v
    expected = alpha_s * x_hat + sigma_s * eps_hat
    got = jax.jit(ddim_step)(z.astype(np.float32), v.astype(np.float32), logsnr_t, logsnr_s)
    np.testing.assert_allclose(got, expected, atol=2e-6)

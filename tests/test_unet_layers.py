"""The U-Net's fused layers against float64 NumPy references: the per-frame GroupNorm (with
FiLM and SiLU) and its hand-written gradient, the sub-pixel upsampling convolution, and the
remat policy's choice of what to keep."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.models.layers import ResBlock, SubpixelConv, frame_group_norm
from imagen_video_jax.models.unet import dots_remat_policy

EPS = 1e-5


def _norm_ref(x, gamma, beta, scale, shift, groups, silu):
    """float64 GroupNorm per (example, frame, group) over pixels and the group's channels."""
    b, t, c = x.shape[0], x.shape[1], x.shape[-1]
    g = x.reshape(b, t, -1, groups, c // groups)
    mean = g.mean(axis=(2, 4), keepdims=True)
    var = g.var(axis=(2, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape) * gamma + beta
    if scale is not None:
        per_example = (b,) + (1,) * (x.ndim - 2) + (c,)
        y = y * (1.0 + scale.reshape(per_example)) + shift.reshape(per_example)
    return y / (1.0 + np.exp(-y)) if silu else y


def _norm_case(seed, shape, film):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    values = {
        "x": rng.normal(0.5, 2.0, shape),
        "gamma": rng.normal(1.0, 0.3, c),
        "beta": rng.normal(0.0, 0.3, c),
        "scale": rng.normal(0.0, 0.3, (shape[0], c)) if film else None,
        "shift": rng.normal(0.0, 0.3, (shape[0], c)) if film else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def _apply_norm(v, groups, silu, dtype=jnp.float32):
    film = (v["scale"], v["shift"]) if "scale" in v else None
    return frame_group_norm(v["x"], v["gamma"], v["beta"], film, groups, EPS, silu, dtype)


CASES = [  # shape [B, T, H, W, C] or [B, T, P, C], groups, FiLM, SiLU
    ((2, 3, 4, 5, 8), 2, True, True),
    ((2, 3, 4, 5, 8), 4, False, False),
    ((1, 2, 6, 12), 3, True, False),
    ((2, 2, 3, 2, 16), 16, False, True),
]


@pytest.mark.parametrize("shape, groups, film, silu", CASES)
def test_frame_group_norm_matches_numpy(shape, groups, film, silu):
    v = _norm_case(0, shape, film)
    out = _apply_norm({k: jnp.asarray(a, jnp.float32) for k, a in v.items()}, groups, silu)
    expected = _norm_ref(
        v["x"], v["gamma"], v["beta"], v.get("scale"), v.get("shift"), groups, silu
    )
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, groups, film, silu", CASES)
def test_frame_group_norm_gradient_matches_finite_differences(shape, groups, film, silu):
    """<grad, u> of sum(w * norm(...)) for a random direction u of every input, against a
    central difference of the float64 NumPy reference."""
    v = _norm_case(1, shape, film)
    rng = np.random.default_rng(2)
    weights = rng.normal(size=shape)
    directions = {k: rng.normal(size=a.shape) for k, a in v.items()}

    def ref_loss(values):
        return np.sum(weights * _norm_ref(**_ref_args(values), groups=groups, silu=silu))

    def loss(values):
        return jnp.sum(jnp.asarray(weights, jnp.float32) * _apply_norm(values, groups, silu))

    grads = jax.grad(loss)({k: jnp.asarray(a, jnp.float32) for k, a in v.items()})
    step = 1e-4
    for name, u in directions.items():
        plus = {**v, name: v[name] + step * u}
        minus = {**v, name: v[name] - step * u}
        expected = (ref_loss(plus) - ref_loss(minus)) / (2 * step)
        got = float(np.sum(np.asarray(grads[name], np.float64) * u))
        assert got == pytest.approx(expected, rel=2e-4, abs=1e-3), name


@pytest.mark.parametrize("split", [(3, 5), (4, 4), (1, 2, 5)])
def test_frame_group_norm_of_channel_parts_is_the_norm_of_their_concatenation(split):
    """Parts whose groups straddle them (groups of 4 channels) give the concatenation's norm,
    FiLM and SiLU included, and their gradients are its gradient's channel slices."""
    v = {k: jnp.asarray(a, jnp.float32) for k, a in _norm_case(4, (2, 3, 4, 5, 8), True).items()}
    film = (v["scale"], v["shift"])
    parts = tuple(jnp.split(v["x"], np.cumsum(split)[:-1], axis=-1))
    weights = jnp.asarray(np.random.default_rng(5).normal(size=v["x"].shape), jnp.float32)

    def loss(x, gamma, beta, film):
        out = frame_group_norm(x, gamma, beta, film, 2, EPS, True, jnp.float32)
        return jnp.sum(weights * out), out

    grad = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    whole_grads, whole = grad(v["x"], v["gamma"], v["beta"], film)
    parts_grads, of_parts = grad(parts, v["gamma"], v["beta"], film)
    np.testing.assert_allclose(of_parts, whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        jnp.concatenate(parts_grads[0], axis=-1), whole_grads[0], rtol=1e-5, atol=1e-6
    )
    assert [g.shape for g in parts_grads[0]] == [x.shape for x in parts]
    for got, want in zip(jax.tree.leaves(parts_grads[1:]), jax.tree.leaves(whole_grads[1:])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_res_block_with_a_skip_is_the_block_of_their_concatenation():
    """The skip joins the input without a concatenation: the same output and, per part, the
    concatenation's gradient, with the same parameters."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x, skip = (jax.random.normal(k, (2, 3, 4, 4, c)) for k, c in zip(keys[:2], (8, 4)))
    emb = jax.random.normal(keys[2], (2, 16))
    block = ResBlock(features=8, groups=4, dtype=jnp.float32)
    params = block.init(keys[3], x, emb, skip)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(keys[3], p.shape), params)
    weights = jax.random.normal(keys[0], x.shape)

    def loss(params, *inputs):
        return jnp.sum(weights * block.apply(params, *inputs))

    joined = jnp.concatenate([x, skip], axis=-1)
    got = jax.grad(lambda p, x, skip: loss(p, x, emb, skip), argnums=(0, 1, 2))(params, x, skip)
    want = jax.grad(lambda p, joined: loss(p, joined, emb), argnums=(0, 1))(params, joined)
    np.testing.assert_allclose(
        block.apply(params, x, emb, skip), block.apply(params, joined, emb), rtol=1e-5, atol=1e-5
    )
    for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jnp.concatenate(got[1:], -1), want[1], rtol=1e-4, atol=1e-5)


def _ref_args(values):
    return {
        "x": values["x"],
        "gamma": values["gamma"],
        "beta": values["beta"],
        "scale": values.get("scale"),
        "shift": values.get("shift"),
    }


def test_frame_group_norm_keeps_dtypes_and_frames_independent():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 4, 4, 8)), jnp.bfloat16)
    gamma, beta = jnp.ones(8), jnp.zeros(8)

    def norm(x):
        return frame_group_norm(x, gamma, beta, None, 2, EPS, True, jnp.bfloat16)

    assert norm(x).dtype == jnp.bfloat16
    grad = jax.grad(lambda x: jnp.sum(norm(x).astype(jnp.float32) * jnp.arange(8.0)))(x)
    assert grad.dtype == jnp.bfloat16
    moved = norm(x.at[1, 2].add(3.0)) != norm(x)
    assert bool(moved[1, 2].any())
    assert not bool(moved.at[1, 2].set(False).any())  # statistics never cross frames


def _upsample_conv_ref(x, kernel, bias):
    """float64 nearest 2x upsampling of [N, H, W, C], then a zero-padded 3x3 convolution by an
    [O, 3, 3, I] kernel."""
    kernel = np.transpose(kernel, (1, 2, 3, 0))
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    padded = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, _ = up.shape
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwc,cf->nhwf", padded[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
    return out + bias


def test_subpixel_conv_equals_upsample_then_conv():
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 7, 4))
    module = SubpixelConv(6, jnp.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(x.shape))
    params = jax.tree.map(
        lambda s: np.random.default_rng(5).normal(size=s.shape), nn.unbox(abstract)["params"]
    )
    assert {k: v.shape for k, v in params.items()} == {"kernel": (6, 3, 3, 4), "bias": (6,)}
    f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    out = module.apply({"params": f32}, jnp.asarray(x, jnp.float32))
    expected = _upsample_conv_ref(x.reshape(6, 5, 7, 4), params["kernel"], params["bias"])
    np.testing.assert_allclose(
        np.asarray(out, np.float64), expected.reshape(2, 3, 10, 14, 6), rtol=1e-5, atol=1e-4
    )


def test_subpixel_conv_gradients_equal_upsample_then_conv():
    """Both gradients against autodiff of the plain formulation (jnp.repeat, SAME 3x3 conv)."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(3, 4, 6, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(7, 3, 3, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(3, 8, 12, 7)), jnp.float32)
    bias = jnp.zeros(7)

    def subpixel(kernel, x):
        out = SubpixelConv(7, jnp.float32).apply({"params": {"kernel": kernel, "bias": bias}}, x)
        return jnp.sum(weights * out)

    def plain(kernel, x):
        up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        dn = ("NHWC", "OHWI", "NHWC")
        out = jax.lax.conv_general_dilated(up, kernel, (1, 1), "SAME", dimension_numbers=dn)
        return jnp.sum(weights * out)

    got = jax.grad(subpixel, argnums=(0, 1))(kernel, x)
    expected = jax.grad(plain, argnums=(0, 1))(kernel, x)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-4)


def test_subpixel_conv_folds_a_bfloat16_kernel_in_float32():
    """A train step hands the module its kernel already in bfloat16 (cast_kernels). The taps
    are still summed in float32, so the output equals that of the same rounded kernel given
    in float32; summed in bfloat16, the sums of two and three taps would be rounded again."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 4, 6, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(5, 3, 3, 8)), jnp.bfloat16)
    module = SubpixelConv(5, jnp.bfloat16)

    def apply(kernel):
        return module.apply({"params": {"kernel": kernel, "bias": jnp.zeros(5)}}, x)

    np.testing.assert_array_equal(apply(kernel), apply(kernel.astype(jnp.float32)))


def _equations(fn, *args):
    return {e.primitive.name: e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_remat_policy_keeps_convs_and_projections_not_attention_products():
    x = jnp.zeros((2, 3, 4))
    projection = _equations(lambda x, w: x @ w, x, jnp.zeros((4, 5)))["dot_general"]
    batched = _equations(lambda q, k: jnp.einsum("btd,bsd->bts", q, k), x, x)["dot_general"]
    image = jnp.zeros((1, 4, 4, 2))
    conv = _equations(
        lambda a, k: jax.lax.conv_general_dilated(a, k, (1, 1), "SAME", dimension_numbers=None),
        image.transpose(0, 3, 1, 2),
        jnp.zeros((3, 2, 3, 3)),
    )["conv_general_dilated"]
    assert dots_remat_policy(projection.primitive, **projection.params)
    assert dots_remat_policy(conv.primitive, **conv.params)
    assert not dots_remat_policy(batched.primitive, **batched.params)
    assert not dots_remat_policy(jax.lax.exp_p)

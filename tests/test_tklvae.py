"""T-KLVAE on CPU at tiny sizes: at initialisation the video VAE equals the image VAE applied
frame by frame (static and random clips; image weights random, as after training), its
temporal layers start as exact identities and change the output once moved; KL and
reconstruction losses match a float64 NumPy reference; user mistakes raise ValueError.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from imagen_video_jax.models import TKLVAE
from imagen_video_jax.models.tklvae import (
    inflate_params,
    kl_divergence,
    reconstruction_loss,
    vae_loss,
)

FRAMES, SIDE = 4, 8


def tiny_vae(**overrides) -> TKLVAE:
    fields = dict(channels=8, channel_mult=(1, 2), norm_groups=4, head_dim=8, latent_channels=4)
    return TKLVAE(**{**fields, **overrides})


def random_params(abstract, seed: int):
    """Random values shaped like ``abstract``: norm scales near 1, the rest N(0, 0.2^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape)
        is_scale = getattr(path[-1], "key", None) == "scale"
        return jnp.asarray(1.0 + noise if is_scale else noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract))


def compiled_apply(model: TKLVAE, params, x):
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return fn.lower(params, x).compile()


def clips() -> jax.Array:
    """[2, T, H, W, 3]: a static clip (one frame repeated) and a random clip."""
    rng = np.random.default_rng(0)
    static = np.repeat(rng.uniform(-1, 1, (1, 1, SIDE, SIDE, 3)), FRAMES, axis=1)
    moving = rng.uniform(-1, 1, (1, FRAMES, SIDE, SIDE, 3))
    return jnp.asarray(np.concatenate([static, moving]), jnp.float32)


@pytest.fixture(scope="module")
def vaes():
    """(video VAE, image VAE, initialised video params with random image weights inflated in,
    image params) for the tiny size."""
    video, image = tiny_vae(), tiny_vae(temporal=False)
    x = clips()
    init = jax.jit(lambda key: video.init(key, x)["params"])
    fresh = nn.meta.unbox(init(jax.random.key(0)))
    image_params = random_params(
        jax.eval_shape(lambda: image.init(jax.random.key(0), x[:, :1]))["params"], seed=1
    )
    return video, image, inflate_params(image_params, fresh), image_params


def test_video_vae_starts_as_the_image_vae_frame_by_frame(vaes):
    video, image, video_params, image_params = vaes
    x = clips()
    frames = x.reshape(-1, 1, SIDE, SIDE, 3)
    video_out = compiled_apply(video, video_params, x)(video_params, x)
    image_out = compiled_apply(image, image_params, frames)(image_params, frames)
    names = ("reconstruction", "mean", "logvar")
    for name, got, want in zip(names, video_out, image_out):
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-5, err_msg=name)
    # The comparison is not vacuous: the latents vary, and moving a temporal side tap changes
    # the random clip's output (frames then mix).
    assert float(jnp.std(video_out[1][1])) > 1e-2
    flat = traverse_util.flatten_dict(video_params)
    path = next(p for p in flat if "temporal_conv_0" in p and p[-1] == "kernel")
    flat[path] = flat[path].at[0].add(0.5)
    moved = traverse_util.unflatten_dict(flat)
    moved_out = compiled_apply(video, moved, x)(moved, x)
    assert float(jnp.max(jnp.abs(moved_out[0][1] - video_out[0][1]))) > 1e-3


def test_temporal_layers_initialise_to_identity(vaes):
    _, _, video_params, image_params = vaes
    flat = traverse_util.flatten_dict(video_params)
    image_paths = set(traverse_util.flatten_dict(image_params))
    temporal = {p: v for p, v in flat.items() if p not in image_paths}
    conv_kernels = [
        v for p, v in temporal.items() if "temporal_conv" in p[-3] and p[-1] == "kernel"
    ]
    assert len(conv_kernels) == 2 * 1 + 2 * 2  # per level: 1 encoder block, 2 decoder blocks
    for kernel in conv_kernels:
        taps, _, c_in, c_out = kernel.shape
        expected = np.zeros(kernel.shape)
        expected[taps // 2, 0] = np.eye(c_in)
        np.testing.assert_array_equal(kernel, expected)
    outputs = [v for p, v in temporal.items() if "temporal_attention" in p and p[-2] == "out"]
    assert len(outputs) == 4  # kernel and bias, encoder and decoder middle blocks
    for value in outputs:
        np.testing.assert_array_equal(value, 0.0)


def test_losses_match_float64_numpy():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32)
    logvar = rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32)
    x = rng.uniform(-1, 1, (3, 2, 8, 8, 3)).astype(np.float32)
    recon = rng.uniform(-1, 1, (3, 2, 8, 8, 3)).astype(np.float32)
    m, lv = mean.astype(np.float64), logvar.astype(np.float64)
    # KL(N(m, s^2) || N(0, 1)) per element = log(1/s) + (s^2 + m^2) / 2 - 1/2
    kl_ref = (-0.5 * lv + 0.5 * (np.exp(lv) + m**2) - 0.5).reshape(3, -1).mean(axis=1)
    recon_ref = np.abs(recon.astype(np.float64) - x).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(kl_divergence(mean, logvar), kl_ref, rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(x, recon), recon_ref, rtol=1e-5)
    total, parts = vae_loss(x, recon, mean, logvar, kl_weight=0.25)
    np.testing.assert_allclose(total, recon_ref.mean() + 0.25 * kl_ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(parts["kl"], kl_ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(parts["reconstruction"], recon_ref.mean(), rtol=1e-5)
    # The KL of the prior itself is zero.
    np.testing.assert_allclose(kl_divergence(np.zeros((1, 3)), np.zeros((1, 3))), [0.0])


def test_mistakes_raise_value_errors():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"multiples of 2"):
        jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 2, 7, 8, 3))))
    with pytest.raises(ValueError, match=r"\[batch, frames, height, width, 3\]"):
        jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    with pytest.raises(ValueError, match="unknown TKLVAE config field"):
        TKLVAE.from_config({"channels": 8, "levels": 2})
    x = jnp.zeros((1, 1, SIDE, SIDE, 3))
    wide = jax.eval_shape(lambda: tiny_vae(channels=16).init(jax.random.key(0), x))["params"]
    narrow = jax.eval_shape(lambda: vae.init(jax.random.key(0), x))["params"]
    with pytest.raises(ValueError, match="image shape"):
        inflate_params(random_params(wide, 0), random_params(narrow, 0))

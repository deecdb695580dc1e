"""VDM conditional sampling and extension (imagen_video_jax.long_video.vdm) and configs/vdm.py.

Conditioning properties are checked on a small frame-mixing model (closed-form gradients,
cheap to compile): reconstruction guidance moves only the unknown frames, by exactly
-(w_r alpha_t / 2) grad_{z_b} ||x_a - x_hat_a||^2 against a float64 NumPy reference; known
frames come out exact; w_r = 0 is unconditional sampling. One test runs a one-level random
VideoUNet through WindowSampler and extension end to end.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.diffusion import alpha_sigma, known_lowres
from imagen_video_jax.long_video import vdm
from imagen_video_jax.models import VideoUNet, example_inputs

CONFIG_FILE = bundled_config_file("vdm")
SHAPE = (2, 4, 4, 4, 3)  # [B, T, H, W, C]
KNOWN = np.array([True, True, False, False])


def mixing_matrix(frames: int, seed: int = 0) -> np.ndarray:
    """A random frame-mixing matrix near the identity: x_hat[t] = sum_s M[t, s] z[s]."""
    rng = np.random.default_rng(seed)
    return np.eye(frames) + 0.3 * rng.standard_normal((frames, frames))


def mix(matrix, z):
    return jnp.einsum("ts,bshwc->bthwc", jnp.asarray(matrix, jnp.float32), z)


def toy_model(matrix: np.ndarray):
    """An x-predicting model that mixes frames, nonlinear so sampling is not trivial."""
    return lambda z, logsnr: jnp.tanh(mix(matrix, z))


def toy_options(**changes) -> vdm.VDMSampling:
    defaults = dict(sampler="ancestral", num_steps=6, prediction="x", clip_x=False)
    return vdm.VDMSampling(**{**defaults, **changes})


def uniform(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def compiled(fn, *args):
    """``fn(*args)`` as one jitted program (each test compiles one such function)."""
    return jax.jit(fn)(*args)


# ----------------------------------------------------------------------------- guidance math


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_reconstruction_guidance_moves_only_unknown_frames_by_the_exact_gradient(weight):
    matrix = mixing_matrix(SHAPE[1])
    y = uniform(SHAPE, 1)
    z = uniform(SHAPE, 2) * 2.0
    logsnr = jnp.full((SHAPE[0],), 0.7)
    observation = vdm.frames_observation(y, KNOWN)
    condition = vdm.make_conditioning(observation, "reconstruction", weight, replace=True)
    predict = lambda z: (mix(matrix, z), jnp.zeros_like(z))
    z_used, x_tilde = compiled(lambda key: condition(predict, z, logsnr, key), jax.random.key(0))

    z_used, x_tilde = np.asarray(z_used, np.float64), np.asarray(x_tilde, np.float64)
    np.testing.assert_array_equal(z_used[:, ~KNOWN], np.asarray(z)[:, ~KNOWN])
    assert np.abs(z_used[:, KNOWN] - np.asarray(z)[:, KNOWN]).min() > 0  # known part resampled
    # Known frames: the given data, whatever the weight (the gradient never reaches them).
    np.testing.assert_allclose(x_tilde[:, KNOWN], np.asarray(y)[:, KNOWN], atol=1e-6)
    # Unknown frames: x_hat_b - (w alpha / 2) grad_{z_b} ||y_a - x_hat_a||^2, in float64.
    x_hat = np.einsum("ts,bshwc->bthwc", matrix, z_used)
    residual = np.where(KNOWN[None, :, None, None, None], np.asarray(y) - x_hat, 0.0)
    grad = -2.0 * np.einsum("ts,bthwc->bshwc", matrix, residual)
    alpha = float(alpha_sigma(0.7)[0])
    expected = x_hat - 0.5 * weight * alpha * grad
    np.testing.assert_allclose(x_tilde[:, ~KNOWN], expected[:, ~KNOWN], rtol=1e-5, atol=1e-5)
    if weight:
        assert np.abs(grad[:, ~KNOWN]).max() > 0.1  # the check above is not vacuous


def test_zero_weight_is_unconditional_sampling():
    fn = toy_model(mixing_matrix(SHAPE[1]))
    lowres = known_lowres(uniform((2, 4, 2, 2, 3), 4), (1, 2, 2))
    frames = vdm.frames_observation(uniform(SHAPE, 5), KNOWN)
    zero = toy_options(weight=0.0)

    def samples(key):
        return (
            vdm.conditional_sample(fn, lowres, key, SHAPE, zero, replace=False),
            vdm.conditional_sample(fn, None, key, SHAPE, zero),
            vdm.conditional_sample(fn, frames, key, SHAPE, zero),
            vdm.conditional_sample(fn, frames, key, SHAPE, toy_options(method="replacement")),
        )

    guided, unconditional, zero_replaced, replaced = compiled(samples, jax.random.key(3))
    np.testing.assert_allclose(guided, unconditional, atol=1e-6)
    # With the known frames replaced, w_r = 0 is the replacement method.
    np.testing.assert_allclose(zero_replaced, replaced, atol=1e-6)
    assert np.abs(np.asarray(replaced) - np.asarray(unconditional)).max() > 0.1


# ----------------------------------------------------------------------------- the three tasks


def test_prediction_and_interpolation_keep_the_known_frames():
    fn = toy_model(mixing_matrix(SHAPE[1]))
    given = uniform(SHAPE, 6)

    def samples(key):
        out = {}
        for method in vdm.METHODS:
            options = toy_options(method=method, clip_x=True)
            out[method] = (
                vdm.predict_video(fn, given[:, :2], 4, key, options),
                vdm.interpolate_video(fn, given[:, :2], key, options, stride=2),
            )
        return out

    out = compiled(samples, jax.random.key(0))
    for predicted, interpolated in out.values():
        assert predicted.shape == interpolated.shape == SHAPE
        np.testing.assert_allclose(predicted[:, :2], given[:, :2], atol=1e-6)
        np.testing.assert_allclose(interpolated[:, ::2], given[:, :2], atol=1e-6)
        assert np.abs(np.asarray(interpolated[:, 1::2])).max() > 0.05  # generated, not zero
    # Guidance changes the generated frames only (same key for both methods).
    a, b = (np.asarray(out[method][0]) for method in vdm.METHODS)
    assert np.abs(a[:, 2:] - b[:, 2:]).max() > 1e-2


def block_error(video, lowres, factor=2) -> float:
    b, t, h, w, c = np.shape(lowres)
    means = np.asarray(video).reshape(b, t, h, factor, w, factor, c).mean(axis=(3, 5))
    return float(np.sqrt(np.mean((means - np.asarray(lowres)) ** 2)))


WEIGHTS = (0.0, 2.0, 4.0)


def test_super_resolution_reconstruction_guidance_fits_the_lowres_video():
    fn = toy_model(mixing_matrix(SHAPE[1]))
    lowres = uniform((2, 4, 2, 2, 3), 8) * 0.8

    def samples(key):
        guided = [vdm.super_resolve_video(fn, lowres, key, toy_options(weight=w)) for w in WEIGHTS]
        return guided, vdm.super_resolve_video(fn, lowres, key, toy_options(method="replacement"))

    guided, replaced = compiled(samples, jax.random.key(2))
    errors = [block_error(video, lowres) for video in guided]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.5 * errors[0], errors
    assert replaced.shape == SHAPE
    assert block_error(replaced, lowres) < 1e-6


# ----------------------------------------------------------------------------- extension


def test_extension_conditions_each_window_on_the_tail_so_far():
    calls = []

    def window_fn(key, known, known_frames):
        """A stand-in model: known frames kept, fresh random frames elsewhere."""
        fresh = jax.random.uniform(key, (2, 5, 3, 3, 1), minval=-1.0, maxval=1.0)
        calls.append((None if known is None else np.asarray(known), known_frames, fresh))
        if known is None:
            return fresh
        return jnp.where(known_frames[None, :, None, None, None], known, fresh)

    progress = []
    video = vdm.extend_video(
        window_fn,
        jax.random.key(0),
        num_frames=12,
        window_frames=5,
        context_frames=2,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert video.shape == (2, 12, 3, 3, 1)
    assert len(calls) == 1 + 3  # 5 frames, then 3 new per window: 8, 11, 14 -> cut to 12
    assert progress == [(5, 12), (8, 12), (11, 12), (12, 12)]
    np.testing.assert_array_equal(video[:, :5], calls[0][2])
    for i, (known, known_frames, fresh) in enumerate(calls[1:]):
        end = 5 + 3 * i  # frames made before this window
        np.testing.assert_array_equal(np.asarray(known_frames), [1, 1, 0, 0, 0])
        np.testing.assert_array_equal(known[:, :2], np.asarray(video)[:, end - 2 : end])
        new = np.asarray(fresh)[:, 2:][:, : 12 - end]
        np.testing.assert_array_equal(np.asarray(video)[:, end : end + 3], new)


def test_extension_rejects_bad_lengths():
    window_fn = lambda key, known, known_frames: jnp.zeros((1, 4, 2, 2, 3))
    with pytest.raises(ValueError, match="context_frames"):
        vdm.extend_video(
            window_fn, jax.random.key(0), num_frames=8, window_frames=4, context_frames=4
        )
    with pytest.raises(ValueError, match="num_frames"):
        vdm.extend_video(
            window_fn, jax.random.key(0), num_frames=3, window_frames=4, context_frames=2
        )


def random_params(model: VideoUNet, model_config, seed: int):
    """Random float32 params (norm scales near 1): a random model mixes everything."""
    inputs = example_inputs(model_config)
    z, logsnr = inputs.pop("z"), inputs.pop("logsnr")
    abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), z, logsnr, **inputs)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
        return noise + 1.0 if getattr(path[-1], "key", None) == "scale" else noise

    return jax.tree_util.tree_map_with_path(draw, abstract["params"])


@pytest.mark.slow
def test_video_unet_extension_end_to_end():
    config = load_config(f"{CONFIG_FILE}:size=tiny,cond=text")
    config.stage.update(frames=4, height=8, width=8)
    config.model.update(
        dtype="float32",
        channel_mult=(1,),
        num_res_blocks=(1,),
        spatial_attention=(False,),
        cross_attention=(True,),
        temporal_mixing=("attention",),
    )
    sampler = vdm.WindowSampler.shared(config, num_steps=2)
    params = random_params(sampler.model, config.model, seed=0)
    text = uniform((2, 3, config.model.text_dim), 9)
    text_mask = jnp.array([[True, True, False], [True, False, False]])
    windows = []

    def recorded(key, known, known_frames):
        window = sampler.bind(params, text=text, text_mask=text_mask, guidance_weight=1.5)(
            key, known, known_frames
        )
        windows.append(window)
        return window

    start = uniform((2, 3, 8, 8, 3), 10)
    video = vdm.extend_video(
        recorded, jax.random.key(4), num_frames=7, window_frames=4, context_frames=2, start=start
    )
    assert video.shape == (2, 7, 8, 8, 3)
    np.testing.assert_array_equal(video[:, :3], start)
    first, second = windows
    # The context is kept: imposed as x_hat + (known - x_hat), exact to float32 rounding.
    np.testing.assert_allclose(first[:, :2], start[:, 1:], atol=1e-5)
    np.testing.assert_allclose(second[:, :2], first[:, 2:], atol=1e-5)
    np.testing.assert_array_equal(video[:, 3:5], first[:, 2:])
    np.testing.assert_array_equal(video[:, 5:], second[:, 2:])
    assert np.abs(np.asarray(second[:, 2:]) - np.asarray(first[:, 2:])).max() > 1e-2

    uint8 = vdm.extend_stage_video(
        config,
        params,
        7,
        seed=4,
        text=text,
        text_mask=text_mask,
        guidance_weight=1.5,
        context_frames=2,
        start=start,
        num_steps=2,
    )
    assert uint8.dtype == np.uint8 and uint8.shape == (2, 7, 8, 8, 3)
    expected = np.round((np.clip(np.asarray(video), -1, 1) + 1) * 127.5)
    assert np.abs(uint8.astype(np.float64) - expected).max() <= 1  # same seed, same video
    assert sampler is vdm.WindowSampler.shared(config, num_steps=2)  # compiled once, reused


def test_window_sampler_checks_its_inputs():
    config = load_config(f"{CONFIG_FILE}:size=tiny,cond=none")
    sampler = vdm.WindowSampler.shared(config)
    known = jnp.zeros((1, 8, 16, 16, 3))
    with pytest.raises(ValueError, match="together"):
        sampler(None, jax.random.key(0), known=known)
    with pytest.raises(ValueError, match="known must be"):
        sampler(None, jax.random.key(0), known=known[:, :4], known_frames=KNOWN)
    with pytest.raises(ValueError, match="batch"):
        sampler(None, jax.random.key(0), batch=2, known=known, known_frames=np.ones(8, bool))


def test_task_helpers_reject_bad_masks():
    with pytest.raises(ValueError, match="known frames < frames"):
        vdm.prediction_frames(4, 4)
    with pytest.raises(ValueError, match="stride"):
        vdm.interpolation_frames(5, 2)
    with pytest.raises(ValueError, match="method"):
        vdm.VDMSampling(method="inpaint")
    np.testing.assert_array_equal(vdm.interpolation_frames(6, 3), [1, 0, 0, 1, 0, 0])


# ----------------------------------------------------------------------------- configs/vdm.py


@pytest.mark.parametrize("images", [0, 4, 8])
@pytest.mark.parametrize("cond", ["none", "class", "text"])
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_config_variants(images, cond, size):
    config = load_config(f"{CONFIG_FILE}:images={images},cond={cond},size={size}")
    model = VideoUNet.from_config(config.model)
    assert model.temporal_mixing == ("attention",) * len(model.channel_mult)
    assert model.use_text == (cond != "none")
    assert any(model.spatial_attention)
    assert any(model.cross_attention) == (cond != "none")
    assert model.temporal_max_distance >= config.stage.frames - 1
    assert config.data.num_appended_images == images
    assert config.data.joint == ("vdm" if images else "none")
    assert config.stage.frames == (16 if size == "small" else 8)
    assert (config.data.moving_digits.two_digit_prob == 0) == (cond == "class")
    sampling = vdm.sampling_from_config(config)
    assert sampling.method == "reconstruction" and sampling.weight == 2.0
    assert 0 < config.sample.context_frames < config.stage.frames


def test_config_arguments_are_checked():
    for arg in ("cond=label", "images=-1", "size=large", "res=48", "motion=spin", "colour=1"):
        with pytest.raises(ValueError):
            load_config(f"{CONFIG_FILE}:{arg}")
    bounce = load_config(f"{CONFIG_FILE}:motion=bounce,res=64")
    assert bounce.data.moving_digits.bounce_prob == 1.0 and bounce.stage.height == 64


def test_config_trains_on_clips_with_appended_images():
    from imagen_video_jax.data import DIRECTIONS, make_train_iterator, parse_caption

    config = load_config(f"{CONFIG_FILE}:images=3,cond=class,size=tiny")
    batch = next(make_train_iterator(config, process_index=0, process_count=1))
    frames = config.stage.frames
    assert batch["video"].shape == (4, frames + 3, 16, 16, 3)
    image_frames = np.broadcast_to(np.arange(frames + 3) >= frames, (4, frames + 3))
    np.testing.assert_array_equal(batch["frame_mask"], image_frames)
    for caption in batch["caption"]:  # class names: one digit moving straight
        assert parse_caption(str(caption))[1] in DIRECTIONS

"""NUWA-XL long videos on CPU: frame planning against a recursive reference and closed forms;
diffusion over diffusion and the autoregressive baseline assemble frames in the planned order
(a stand-in sampler that interpolates between the known frames must rebuild 0, 1, 2, ...);
prompts reach the calls they cover; the MTD loss ignores known frames; training examples sit at
each depth's stride; with a tiny random MTD U-Net the local mode keeps the given end frames
(replacement: within float32 rounding) while its in-between frames depend on them, and one
batched, device-sharded call serves every depth; the block metrics match float64 NumPy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.diffusion.schedules import Schedule
from imagen_video_jax.long_video import (
    LongVideoModel,
    SamplingOptions,
    avg_frame_fid,
    block_fvd,
    generate_long_video,
    lattice_frames,
    mode_mask,
    mtd_loss,
    plan_autoregressive,
    plan_frames,
    plan_long_video,
    run_plan,
    video_blocks,
)
from imagen_video_jax.long_video.data import MTDExamples, mode_strides
from imagen_video_jax.long_video.generate import prompt_index
from imagen_video_jax.models.params import example_inputs
from imagen_video_jax.models.unet import VideoUNet

CONFIG_FILE = bundled_config_file("nuwa_xl")


# ----------------------------------------------------------------------------- planning


def reference_order(frames_per_call: int, depth: int) -> list[int]:
    """NUWA-XL's recursion written plainly: keyframes, then each gap split into L-1 parts."""
    span = (frames_per_call - 1) ** depth
    stride = span // (frames_per_call - 1)
    made = [k * stride for k in range(frames_per_call)]
    gaps = [(k * stride, (k + 1) * stride) for k in range(frames_per_call - 1)]
    for _ in range(depth - 1):
        next_gaps = []
        for start, end in gaps:
            step = (end - start) // (frames_per_call - 1)
            inner = [start + k * step for k in range(1, frames_per_call - 1)]
            made += inner
            points = [start, *inner, end]
            next_gaps += list(zip(points[:-1], points[1:]))
        gaps = next_gaps
    return made


@pytest.mark.parametrize("frames_per_call, depth", [(3, 2), (4, 3), (5, 2), (16, 3)])
def test_plan_frames_count_order_and_calls(frames_per_call, depth):
    plan = plan_frames(frames_per_call, depth)
    expected_frames = (frames_per_call - 1) ** depth + 1
    assert plan.num_frames == lattice_frames(frames_per_call, depth) == expected_frames
    np.testing.assert_array_equal(plan.order(), reference_order(frames_per_call, depth))
    assert sorted(plan.order().tolist()) == list(range(expected_frames))
    assert [r.num_calls for r in plan.rounds] == [(frames_per_call - 1) ** d for d in range(depth)]
    made = set()
    for d, rnd in enumerate(plan.rounds, start=1):
        assert rnd.positions.shape[1] == frames_per_call
        # every call's frames are equally spaced at its depth's stride
        stride = (frames_per_call - 1) ** (depth - d)
        np.testing.assert_array_equal(np.diff(rnd.positions, axis=1), stride)
        if d == 1:
            assert not rnd.known.any()
        else:  # local calls know exactly their two ends, made at earlier depths
            assert rnd.known[:, [0, -1]].all() and not rnd.known[:, 1:-1].any()
            assert set(rnd.positions[rnd.known].tolist()) <= made
        made |= set(rnd.new_positions().tolist())


def test_plan_long_video_prunes_to_the_frames_asked_for():
    plan = plan_long_video(1024, 16)  # depth 3 chosen: 15^2 + 1 = 226 < 1024 <= 3376
    assert [r.num_calls for r in plan.rounds] == [1, 5, 69]  # ceil(1023 / 225), ceil(1023 / 15)
    assert sorted(plan.order().tolist()) == list(range(1024))
    small = plan_long_video(20, 4, depth=3)
    full = plan_frames(4, 3)
    np.testing.assert_array_equal(small.order(), [p for p in full.order() if p < 20])
    with pytest.raises(ValueError, match=r"exceeds the \(L-1\)\^m \+ 1 = 28 frames"):
        plan_long_video(29, 4, depth=3)
    with pytest.raises(ValueError, match="frames_per_call"):
        plan_frames(2, 3)


def test_plan_autoregressive_windows():
    plan = plan_autoregressive(1024, 16, context=4)
    # a global call for frame 0, a window making frames 1..15, then 12 new frames a window
    assert plan.num_calls == 2 + -(-(1024 - 16) // 12)
    assert sorted(plan.order().tolist()) == list(range(1024))
    for rnd in plan.rounds[2:]:
        np.testing.assert_array_equal(rnd.known[0], np.arange(16) < 4)
    with pytest.raises(ValueError, match="context"):
        plan_autoregressive(10, 4, context=4)


# ----------------------------------------------------------------------------- assembly


class InterpolatingSampler:
    """A stand-in for the MTD sampler on 1-pixel frames holding a frame index: a call without
    known frames returns keyframe indices 0, stride, 2 stride, ...; a call knowing its two ends
    interpolates linearly between them; one knowing a prefix continues it by +1 per frame.
    Assembly in the planned order then rebuilds the video 0, 1, 2, ..."""

    def __init__(self, keyframe_stride: int):
        self.keyframe_stride = keyframe_stride
        self.calls: list[dict] = []

    def __call__(self, keys, known, known_mask, text=None, text_mask=None):
        known, mask = np.asarray(known)[..., 0, 0, 0], np.asarray(known_mask)
        self.calls.append({"known": known, "mask": mask, "text": text, "keys": keys})
        length = known.shape[1]
        out = np.zeros_like(known)
        for i, (values, m) in enumerate(zip(known, mask)):
            if not m.any():
                out[i] = np.arange(length) * self.keyframe_stride
            elif m[-1]:
                out[i] = np.linspace(values[0], values[-1], length)
            else:
                last = np.flatnonzero(m)[-1]
                out[i] = values[last] + np.arange(length) - last
        return out[..., None, None, None]


@pytest.mark.parametrize(
    "method, frames_per_call, depth, num_frames",
    [("dod", 3, 2, 5), ("dod", 4, 3, 28), ("dod", 5, 2, 17), ("dod", 4, 3, 20), ("ar", 5, 2, 23)],
)
def test_assembly_follows_the_plan(method, frames_per_call, depth, num_frames):
    if method == "dod":
        plan = plan_long_video(num_frames, frames_per_call, depth)
        stride = (frames_per_call - 1) ** (depth - 1)
    else:
        plan = plan_autoregressive(num_frames, frames_per_call, context=2)
        stride = 1
    sampler = InterpolatingSampler(stride)
    video = run_plan(sampler, plan, (1, 1, 1), seed=0)
    np.testing.assert_allclose(video[:, 0, 0, 0], np.arange(num_frames), atol=1e-4)
    # one call per round, all segments of a round batched
    assert [c["known"].shape[0] for c in sampler.calls] == [r.num_calls for r in plan.rounds]
    for call, rnd in zip(sampler.calls, plan.rounds):
        np.testing.assert_array_equal(call["mask"], rnd.known)
        # unknown frames reach the sampler zeroed: nothing leaks from the buffer
        assert not call["known"][~rnd.known].any()
        # each call of a round its own key
        assert len({tuple(k) for k in call["keys"].tolist()}) == len(call["keys"])


def test_prompts_reach_the_calls_they_cover():
    plan = plan_long_video(17, 5, depth=2)
    prompts, tokens = 3, 2
    text = np.broadcast_to(np.arange(prompts, dtype=np.float32)[:, None, None], (3, 2, 1))
    text_mask = np.ones((prompts, tokens), bool)
    sampler = InterpolatingSampler(4)
    run_plan(sampler, plan, (1, 1, 1), 0, text, text_mask)
    global_text = np.asarray(sampler.calls[0]["text"])
    np.testing.assert_array_equal(global_text[0, :, 0], [0, 0, 1, 1, 2, 2])  # all prompts
    local = np.asarray(sampler.calls[1]["text"])[:, 0, 0]
    starts = plan.rounds[1].positions[:, 0]  # 0, 4, 8, 12 of 17 frames
    np.testing.assert_array_equal(local, starts * prompts // 17)
    np.testing.assert_array_equal(local, prompt_index(starts, 17, prompts))
    np.testing.assert_array_equal(local, [0, 0, 1, 2])


# ----------------------------------------------------------------------------- training


def test_mtd_loss_ignores_known_frames():
    """The loss is the diffusion loss of the unknown frames; the model sees video * mask."""
    rng = np.random.default_rng(0)
    video = rng.normal(size=(2, 5, 2, 2, 3)).astype(np.float32)
    mask = np.stack([mode_mask("local", 5), mode_mask("prefix", 5, 2)])
    batch = {"video": video, "known_mask": mask}
    seen = {}

    def apply_fn(variables, z, logsnr, *, known, known_mask, train, rngs, bump):
        jax.debug.callback(lambda k: seen.update(known=np.asarray(k)), known)
        return z * variables["params"] + bump

    def loss(bump):
        fn = lambda v, z, s, **kw: apply_fn(v, z, s, bump=bump, **kw)
        options = {"prediction": "v", "schedule": Schedule(), "text_drop_prob": 0.0}
        return mtd_loss(fn, 0.5, batch, jax.random.key(1), **options)

    loss = jax.jit(loss)
    bump = np.zeros((3, 2, 5, 1, 1, 1), np.float32)
    bump[1, 0, 0] = bump[1, 1, 1] = 3.0  # on known frames
    bump[2, 0, 2] = 3.0  # on an unknown frame
    base, on_known, on_unknown = (float(loss(b)) for b in bump)
    np.testing.assert_array_equal(seen["known"], video * mask[:, :, None, None, None])
    np.testing.assert_allclose(on_known, base, rtol=1e-6)
    assert abs(on_unknown - base) > 1e-2


def test_training_examples_sit_at_each_depths_stride():
    frames_per_call, depth = 4, 3
    latents = np.broadcast_to(np.arange(60.0)[None, :, None, None, None], (2, 60, 1, 1, 1))
    examples = MTDExamples(latents, frames_per_call, depth, (1, 1, 1), max_context=2)
    batch = examples.batch(256)
    positions = batch["video"][..., 0, 0, 0]
    steps = np.diff(positions, axis=1)
    assert (steps == steps[:, :1]).all()
    strides = mode_strides(frames_per_call, depth)
    assert strides == {"global": [9], "local": [3, 1], "prefix": [1]}
    for mask, stride in zip(batch["known_mask"], steps[:, 0]):
        if not mask.any():
            assert stride == 9
        elif mask[-1]:
            assert stride in (3, 1) and mask.tolist() == [True, False, False, True]
        else:
            assert stride == 1 and mask[0] and not mask[-1] and mask.sum() <= 2
    assert {9, 3, 1} <= set(steps[:, 0].tolist())
    with pytest.raises(ValueError, match="too short"):
        MTDExamples(latents[:, :20], frames_per_call, depth, (1, 1, 1), max_context=2)


# ----------------------------------------------------------------------------- a real MTD model


def random_tree(abstract, seed: int):
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape)
        is_scale = getattr(path[-1], "key", None) == "scale"
        return jnp.asarray(1.0 + noise if is_scale else noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract))


@pytest.fixture(scope="module")
def pixel_model() -> LongVideoModel:
    """The tiny config in pixel space at 8x8, without text, L=4, 3 DDIM steps; random params
    (the mask condition is zero at init, random here so that it acts)."""
    config = load_config(
        f"{CONFIG_FILE}:size=tiny,space=pixel",
        [
            "model.use_text=False",
            "model.cross_attention=(False, False)",
            "model.spatial_attention=(False, False)",
            "data.height=8",
            "data.width=8",
            "long_video.frames_per_call=4",
            "long_video.context=2",
            "sample.num_steps=3",
        ],
    )
    model = VideoUNet.from_config(config.model)
    inputs = example_inputs(config.model, frames=4, height=8, width=8)
    z, logsnr = inputs.pop("z"), inputs.pop("logsnr")
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), z, logsnr, **inputs))
    return LongVideoModel(config, random_tree(abstract["params"], seed=0))


def test_local_mode_keeps_the_ends_and_depends_on_them(pixel_model):
    sampler = pixel_model.segment_sampler(SamplingOptions.from_config(pixel_model.config.sample))
    rng = np.random.default_rng(1)
    ends_a, ends_b = rng.uniform(-1, 1, (2, 2, 8, 8, 3))
    known = np.zeros((3, 4, 8, 8, 3), np.float32)
    known[[0, 2], 0], known[[0, 2], -1] = ends_a
    known[1, 0], known[1, -1] = ends_b
    mask = np.tile(mode_mask("local", 4), (3, 1))
    keys = np.tile(np.array([[7, 5]], np.uint32), (3, 1))
    out = np.asarray(sampler(keys, known, mask))
    # replacement imposes the known frames: equal up to float32 rounding
    np.testing.assert_allclose(out[:, [0, -1]], known[:, [0, -1]], atol=1e-5)
    # the in-between frames follow the ends (segments 0 and 1 share noise, not ends) ...
    assert np.abs(out[0, 1:-1] - out[1, 1:-1]).max() > 1e-3
    # ... and not the batch position or device (segments 0 and 2 share both)
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    assert sampler.batch_sizes[-1] == 3 and jax.device_count() == 8


def test_one_batched_call_per_depth_and_exact_length(pixel_model):
    sampler = pixel_model.segment_sampler(SamplingOptions.from_config(pixel_model.config.sample))
    calls_before = sampler.calls
    video = generate_long_video(pixel_model, "a handwritten 3 bouncing around", 10, depth=2)
    plan = plan_long_video(10, 4, depth=2)
    assert video.shape == (10, 8, 8, 3) and video.dtype == np.uint8
    assert sampler.calls - calls_before == len(plan.rounds) == 2
    assert sampler.batch_sizes[-2:] == [1, 3]  # the global call, then 3 segments in one call
    ar = generate_long_video(
        pixel_model, "a handwritten 3 bouncing around", 10, method="autoregressive"
    )
    assert ar.shape == (10, 8, 8, 3)
    assert sampler.calls - calls_before == 2 + len(plan_autoregressive(10, 4, 2).rounds)
    # every call pads to the 8 devices, so one compiled loop served all of them
    assert sampler.trace_count == 1


def test_model_save_and_load(pixel_model, tmp_path):
    pixel_model.save(tmp_path / "model")
    loaded = LongVideoModel.load(tmp_path / "model")
    assert loaded.config.long_video.frames_per_call == 4 and loaded.vae is None
    leaves = zip(jax.tree.leaves(pixel_model.mtd_params), jax.tree.leaves(loaded.mtd_params))
    for want, got in leaves:
        np.testing.assert_array_equal(got, want)
    with pytest.raises(FileNotFoundError, match="config.json"):
        LongVideoModel.load(tmp_path / "missing")


# ----------------------------------------------------------------------------- metrics


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(sa @ sb))
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * root))


def channel_means(x: np.ndarray) -> np.ndarray:
    """Features of clips [N, T, H, W, C] or frames [N, H, W, C]: the mean of each channel."""
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)


def test_block_metrics_match_numpy():
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (3, 40, 4, 4, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-60, 90, real.shape), 0, 255).astype(np.uint8)
    blocks = video_blocks(real, 8)
    assert blocks.shape == (15, 8, 4, 4, 3)
    np.testing.assert_array_equal(blocks[6], real[1, 8:16])  # video 1, block 1
    got = block_fvd(real, fake, block=8, features=channel_means)
    want = frechet_reference(
        channel_means(video_blocks(real, 8)), channel_means(video_blocks(fake, 8))
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    per_block = [
        frechet_reference(
            channel_means(real[:, b * 8 : (b + 1) * 8].reshape(-1, 4, 4, 3)),
            channel_means(fake[:, b * 8 : (b + 1) * 8].reshape(-1, 4, 4, 3)),
        )
        for b in range(5)
    ]
    got = avg_frame_fid(real, fake, block=8, frame_features=channel_means)
    np.testing.assert_allclose(got, np.mean(per_block), rtol=1e-6)
    assert avg_frame_fid(real, real, block=8, frame_features=channel_means) < 1e-8

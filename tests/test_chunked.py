"""Exact frame chunking of the Video U-Net (cascade/chunked.py) on tiny float32 models (CPU):
chunked sampling equals unchunked sampling, chunk sizes that do not divide the frames, the
temporal halo is the model's receptive field, model windows refuse temporal attention, the
stage sampler reads the settings, and the temporal-convolution layouts of bench paper-sample
equal the layer's formula."""

import argparse
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.bench import paper_sample
from imagen_video_jax.cascade.chunked import FrameChunking, chunk_starts, temporal_halo
from imagen_video_jax.cascade.sampler import StageSampler
from imagen_video_jax.cascade.specs import SamplingSettings
from imagen_video_jax.config import load_config
from imagen_video_jax.diffusion.samplers import get_sampler
from imagen_video_jax.diffusion.schedules import DEFAULT_SCHEDULE
from imagen_video_jax.models import VideoUNet
from imagen_video_jax.models.layers import TemporalConv

FRAMES = 16
# Two levels of one block each, temporal convolution everywhere: 5 temporal convolutions on
# the deepest path (2 encoder blocks, the middle block, 2 decoder blocks).
CONV_MODEL = dict(
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    spatial_attention=(False, False),
    cross_attention=(False, False),
    temporal_mixing=("conv", "conv"),
    head_dim=4,
    norm_groups=4,
    emb_channels=16,
    text_dim=6,
    cond_channels=3,
    cond_augmentation=True,
    guidance_input=True,
    dtype="float32",
)
CONV_HALO = 5


def random_variables(model, inputs, seed=0):
    """Every parameter random (zero-initialised layers would hide frame mixing); temporal
    convolutions 12x the scale of other kernels, so that a frame's influence on frames 5
    convolutions away stays far above float32 rounding."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        values = rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim < 2:
            return 0.2 * values
        scale = 12.0 if "temporal_conv" in jax.tree_util.keystr(path) else 1.0
        return scale * values / np.sqrt(np.prod(leaf.shape[:-1]))

    return {"params": jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))}


def conv_inputs(frames=FRAMES, batch=1, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "z": jnp.asarray(rng.standard_normal((batch, frames, 8, 8, 3)), jnp.float32),
        "logsnr": jnp.full((batch,), 1.5),
        "text": jnp.asarray(rng.standard_normal((batch, 4, 6)), jnp.float32),
        "text_mask": jnp.asarray([[True, True, True, False]] * batch),
        "cond": jnp.asarray(rng.uniform(-1, 1, (batch, frames // 2, 8, 8, 3)), jnp.float32),
        "cond_logsnr": jnp.full((batch,), 2.0),
        "guidance": jnp.full((batch,), 3.0),
    }


@pytest.fixture(scope="module")
def conv_model():
    model = VideoUNet(**CONV_MODEL)
    return model, random_variables(model, conv_inputs())


def test_chunks_cover_every_frame_and_end_at_the_last():
    np.testing.assert_array_equal(chunk_starts(16, 4), [0, 4, 8, 12])
    np.testing.assert_array_equal(chunk_starts(16, 3), [0, 3, 6, 9, 12, 13])
    np.testing.assert_array_equal(chunk_starts(5, 5), [0])


def test_halo_is_the_temporal_receptive_field(conv_model):
    """Output frame t changes with input frames t - 5 and t + 5; not at all (bit for bit) with
    frames t - 6 and t + 6."""
    model, variables = conv_model
    assert temporal_halo(model) == CONV_HALO
    inputs = conv_inputs()
    z = inputs.pop("z")
    apply = jax.jit(lambda z: model.apply(variables, z, **inputs))
    reference = np.asarray(apply(z))
    t = 7
    for offset in (-6, -5, 5, 6):
        change = np.abs(np.asarray(apply(z.at[:, t + offset].add(1.0)))[:, t] - reference[:, t])
        if abs(offset) <= CONV_HALO:
            assert change.max() > 1e-6, offset
        else:
            assert change.max() == 0.0, offset


def sample_conv_model(model, variables, chunking):
    """Two steps of the distilled students' stochastic sampler, model chunked as given."""
    inputs = conv_inputs()
    z, _ = inputs.pop("z"), inputs.pop("logsnr")
    apply = chunking.wrap(model)

    def run(key):
        return get_sampler("stochastic")(
            lambda z, logsnr: apply(variables, z, logsnr, **inputs),
            jax.random.normal(key, z.shape),
            jax.random.key(5),
            num_steps=2,
            schedule=DEFAULT_SCHEDULE,
        )

    return np.asarray(jax.jit(run)(jax.random.key(4)))


@pytest.fixture(scope="module")
def unchunked_sample(conv_model):
    return sample_conv_model(*conv_model, FrameChunking())


@pytest.mark.parametrize(
    "chunking",
    [FrameChunking(frame_chunk=3), FrameChunking(layer_chunk=3)],
    ids=["model-windows", "layer-chunks"],
)
def test_chunked_sampling_equals_unchunked(conv_model, unchunked_sample, chunking):
    """Chunks of 3 frames, which do not divide the 16; model windows of 3 + 2 x 5 frames are
    shorter than the video, so the model really runs in windows."""
    chunked = sample_conv_model(*conv_model, chunking)
    assert np.abs(unchunked_sample).max() > 0.1
    np.testing.assert_allclose(chunked, unchunked_sample, rtol=1e-5, atol=1e-5)


def test_layer_chunks_are_exact_with_every_kind_of_attention():
    """Spatial, cross and temporal attention (the last run unchunked) with per-layer chunks of
    2 of 5 frames, and an image frame."""
    model = VideoUNet(
        **{
            **CONV_MODEL,
            "channel_mult": (1,),
            "num_res_blocks": (1,),
            "spatial_attention": (True,),
            "cross_attention": (True,),
            "temporal_mixing": ("attention",),
            "temporal_max_distance": 4,
        }
    )
    inputs = conv_inputs(frames=6)
    inputs["z"] = inputs["z"][:, :5]
    inputs["cond"] = inputs["cond"][:, :1]
    inputs["frame_mask"] = jnp.asarray([[False, False, True, False, False]])
    variables = random_variables(model, inputs)
    chunked = FrameChunking(layer_chunk=2).wrap(model)
    expected = jax.jit(lambda v, i: model.apply(v, **i))(variables, inputs)
    got = jax.jit(lambda v, i: chunked(v, **i))(variables, inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def tiny_config(stage, *extra):
    overrides = ["model.dtype=float32", "stage.height=8", "stage.width=8", *extra]
    return load_config(f"configs/imagen_video.py:stage={stage},size=tiny", overrides)


def test_model_windows_refuse_temporal_attention_before_compiling():
    base = tiny_config("base", "sample.frame_chunk=1")
    with pytest.raises(ValueError, match=r"temporal attention at level\(s\) \[0, 1\]"):
        StageSampler(base)
    with pytest.raises(ValueError, match="sample.layer_chunk"):
        temporal_halo(VideoUNet.from_config(base.model))
    with pytest.raises(ValueError, match="sample.frame_chunk must be an int >= 0"):
        FrameChunking(frame_chunk=-2)


def test_stage_sampler_runs_its_model_in_the_configured_chunks(monkeypatch):
    """sample.layer_chunk reaches the stage's model (traced, not compiled: the tests above
    show that chunks give the unchunked result); samplers differing only in it are not
    shared; the paper's 128 x 768 x 1280 stage chunks by default."""
    from imagen_video_jax.cascade import chunked
    from imagen_video_jax.cascade.cascade import random_params

    calls = []
    original = chunked.map_frame_chunks

    def counted(fn, videos, *, chunk, halo):
        calls.append((chunk, halo))
        return original(fn, videos, chunk=chunk, halo=halo)

    monkeypatch.setattr(chunked, "map_frame_chunks", counted)
    steps = ("sample.num_steps=2",)
    plain_config = tiny_config("tsr2", *steps).to_dict()
    chunked_config = tiny_config("tsr2", *steps, "sample.layer_chunk=3").to_dict()
    plain, layered = StageSampler.shared(plain_config), StageSampler.shared(chunked_config)
    assert plain is not layered and layered.chunking == FrameChunking(layer_chunk=3)
    text = jax.ShapeDtypeStruct((1, 32, 384), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 32), jnp.bool_)
    cond = jax.ShapeDtypeStruct((1, 4, 8, 8, 3), jnp.uint8)
    keys = jax.random.split(jax.random.key(0), 1)
    settings = SamplingSettings.from_config(plain_config)
    params = random_params(plain, (0, 0))
    for sampler, expected in ((plain, set()), (layered, {(3, 0), (3, 1)})):
        calls.clear()
        video = jax.eval_shape(
            lambda *args, sampler=sampler: sampler(*args, settings), params, keys, text, mask, cond
        )
        assert video.shape == (1, 8, 8, 8, 3) and set(calls) == expected
    paper = load_config("configs/imagen_video.py:stage=ssr3,size=paper")
    assert (paper.sample.frame_chunk, paper.sample.layer_chunk) == (0, 16)
    assert load_config("configs/imagen_video.py:stage=tsr3,size=paper").sample.layer_chunk == 0


def test_temporal_conv_keeps_frames_adjacent():
    """The layer convolves the video viewed as [B, T, H*W, C] by a (3, 1) kernel: one
    convolution, and no transpose in its program but the kernel's view as [H, W, I, O]."""
    layer = TemporalConv(4, jnp.float32)
    x = jnp.zeros((1, 6, 4, 4, 8))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    program = jax.jit(layer.apply).lower(params, x).as_text()
    transposed = re.findall(r"stablehlo.transpose .*: \(tensor<([^>]*)>\)", program)
    assert transposed == ["8x3x1x8xf32"]  # the [O, 3, 1, I] kernel, not the video
    assert program.count("stablehlo.convolution") == 1


def reference_temporal_conv(h, kernel, bias):
    """float64: out[t] = sum_k h[t + k - 1] @ kernel[k] + bias, zero frames outside."""
    padded = np.pad(np.asarray(h, np.float64), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    frames = h.shape[1]
    kernel = np.asarray(kernel, np.float64)
    out = sum(np.einsum("bthwc,cf->bthwf", padded[:, k : k + frames], kernel[k]) for k in range(3))
    return out + np.asarray(bias, np.float64)


@pytest.mark.parametrize("name", sorted(paper_sample.TEMPORAL_CONV_LAYOUTS))
def test_temporal_conv_layouts_equal_the_layer_formula(name):
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.standard_normal((2, 5, 3, 4, 8)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 8, 6)), jnp.float32) / 5
    bias = jnp.asarray(rng.standard_normal(6), jnp.float32)
    out = jax.jit(paper_sample.TEMPORAL_CONV_LAYOUTS[name])(h, kernel, bias)
    np.testing.assert_allclose(out, reference_temporal_conv(h, kernel, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bench_dry_run_reports_the_text_encoder_each_stage_and_the_total(capsys):
    parser = argparse.ArgumentParser()
    paper_sample.add_arguments(parser)
    args = parser.parse_args(["--dry-run", "--no-layouts", "--stages", "tsr1", "--steps", "2"])
    assert paper_sample.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    assert [r["part"] for r in lines] == ["text", "stage", "total"]
    text, stage, total = lines
    assert text["shape"] == "32 tokens" and text["params"] > 0
    assert stage["stage"] == "tsr1" and stage["shape"] == "4x8x8" and stage["steps"] == 2
    assert total["sample_s"] == pytest.approx(text["sample_s"] + stage["sample_s"])
    assert total["params"] == text["params"] + stage["params"]

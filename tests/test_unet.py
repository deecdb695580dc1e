"""VideoUNet on CPU at tiny sizes: every stage role runs; frames mix only through temporal
layers (tested by perturbation); image frames in mixed batches stay independent; the temporal
layers and the conditioning upsampler match float64 NumPy references; guidance and NUWA-XL
mask-condition inputs start as no-ops; user mistakes raise ValueError before compiling.

Parameters are random (not the initialisation, whose zero-initialised output layers would
hide any mixing). Equality tests compute in float32 so bfloat16 rounding cannot blur a change.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.models import VideoUNet, abstract_params, example_inputs
from imagen_video_jax.models.attention import (
    TEMPORAL_INPUT,
    TemporalAttention,
    attend_frames,
    attend_text,
    frame_attention,
    fused_frame_attention,
    per_shard,
    temporal_attention_mask,
)
from imagen_video_jax.models.layers import JOINED_INPUT, NORM_STATISTICS, TemporalConv
from imagen_video_jax.models.pallas_attention import (
    ATTENTION_OUTPUTS,
    pallas_frame_attention,
    uses_dots,
)
from imagen_video_jax.models.unet import (
    dots_and_inputs_policy,
    dots_remat_policy,
    upsample_condition,
)
from imagen_video_jax.parallel import make_mesh, mesh_context
from imagen_video_jax.parallel.mesh import DEFAULT_RULES

CONFIG_FILE = bundled_config_file("imagen_video")

UNCHANGED, CHANGED = 1e-6, 1e-4


def stage_config(stage: str, **model_overrides):
    """The tiny config of ``stage`` from configs/imagen_video.py, model fields overridden."""
    config = load_config(f"{CONFIG_FILE}:stage={stage},size=tiny")
    config.model.update(model_overrides)
    return config


def random_tree(abstract, seed: int):
    """Random values shaped like ``abstract``: norm scales near 1, everything else N(0, 0.2^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape)
        is_scale = getattr(path[-1], "key", None) == "scale"
        return jnp.asarray(1.0 + noise if is_scale else noise, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract))


def compile_apply(model: VideoUNet, params, inputs):
    """``model.apply`` jitted and compiled for these argument shapes."""
    fn = jax.jit(lambda p, x: model.apply({"params": p}, **x))
    return fn.lower(params, inputs).compile()


def stage_inputs(config, *, batch: int, frames: int, seed: int = 0, frame_mask=None):
    """Random inputs for the stage's model at its spatial size and ``frames`` frames."""
    stage, model = config.stage, config.model
    rng = np.random.default_rng(seed)
    inputs = example_inputs(
        model, batch=batch, frames=frames, height=stage.height, width=stage.width, text_length=5
    )
    inputs = {k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in inputs.items()}
    if model.use_text:
        inputs["text_mask"] = jnp.asarray([[True, True, True, False, False]] * batch)
    if model.cond_channels:
        low = (
            batch,
            frames // stage.temporal_factor,
            stage.height // stage.spatial_factor,
            stage.width // stage.spatial_factor,
            model.cond_channels,
        )
        inputs["cond"] = jnp.asarray(rng.uniform(-1, 1, low), jnp.float32)
    inputs["frame_mask"] = jnp.zeros((batch, frames), bool) if frame_mask is None else frame_mask
    return inputs


def perturb_frame(inputs, example: int, frame: int, seed: int = 1):
    z = inputs["z"]
    delta = np.random.default_rng(seed).normal(size=z.shape[2:])
    return {**inputs, "z": z.at[example, frame].add(jnp.asarray(delta, z.dtype))}


def frame_change(a, b) -> np.ndarray:
    """Max |a - b| per (example, frame): [B, T]."""
    return np.abs(np.asarray(a) - np.asarray(b)).max(axis=(2, 3, 4))


# --- every stage role at tiny size, and separability by perturbation -------------------------

FRAMES = 4  # every stage runs 4 frames here (TSR stages condition on 2)


def _compiled_case(config):
    """(compiled apply, random params, random inputs for B=2, T=FRAMES) of ``config``."""
    model = VideoUNet.from_config(config.model)
    params = random_tree(abstract_params(config.model), seed=0)
    inputs = stage_inputs(config, batch=2, frames=FRAMES)
    return compile_apply(model, params, inputs), params, inputs


@pytest.fixture(scope="module")
def stage_cases():
    """Compiled tiny models of the stage roles, default (bfloat16) compute, built on demand.

    Perturbation tests need no float32 here: a frame that does not depend on the perturbed
    one is computed by the same program from the same values, so it is bit-identical.
    """
    cache = {}

    def get(stage):
        if stage not in cache:
            cache[stage] = _compiled_case(stage_config(stage))
        return cache[stage]

    return get


@pytest.mark.parametrize(
    "stage, temporal, attention",
    [("base", "attention", True), ("tsr1", "conv", True), ("ssr2", "conv", False)],
)
def test_stage_roles_build_jit_and_run(stage, temporal, attention, stage_cases):
    """Base: temporal attention; TSR, SSR: temporal conv; fully convolutional: no attention."""
    config = stage_config(stage)
    spec = config.stage
    assert set(config.model.temporal_mixing) == {temporal}
    assert any(config.model.spatial_attention) is attention
    assert any(config.model.cross_attention) is attention
    assert spec.fully_convolutional is not attention
    assert (config.model.cond_channels == 3) is (spec.role != "base")
    names = str(jax.tree.structure(abstract_params(config.model)))
    assert ("attention" in names) is (attention or temporal == "attention")

    apply, params, inputs = stage_cases(stage)
    out = apply(params, inputs)
    assert out.shape == (2, FRAMES, spec.height, spec.width, 3)
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    if config.model.cond_channels:  # the low-resolution video is really an input
        moved = {**inputs, "cond": inputs["cond"] + 0.5}
        assert np.abs(np.asarray(apply(params, moved) - out)).max() > CHANGED


def test_without_temporal_mixing_frames_are_independent():
    """Spatial self-attention, cross-attention and every norm stay within each frame."""
    config = stage_config(
        "base",
        temporal_mixing=("none", "none"),
        spatial_attention=(True, True),
        cross_attention=(True, True),
    )
    apply, params, inputs = _compiled_case(config)
    out = apply(params, inputs)
    change = frame_change(out, apply(params, perturb_frame(inputs, example=0, frame=1)))
    assert change[0, 1] > CHANGED
    assert np.delete(change.ravel(), 1).max() <= UNCHANGED


@pytest.mark.parametrize("stage", ["base", "tsr1"])
def test_temporal_mixing_mixes_video_frames_only(stage, stage_cases):
    apply, params, inputs = stage_cases(stage)
    all_video = apply(params, inputs)
    change = frame_change(all_video, apply(params, perturb_frame(inputs, example=0, frame=1)))
    assert change[0].min() > CHANGED  # every frame of the clip sees frame 1
    assert change[1].max() <= UNCHANGED  # the other example does not

    images = {**inputs, "frame_mask": jnp.ones((2, FRAMES), bool)}
    all_images = apply(params, images)
    change = frame_change(all_images, apply(params, perturb_frame(images, example=0, frame=1)))
    assert change[0, 1] > CHANGED  # spatial attention (base) and convs see only their frame
    assert np.delete(change.ravel(), 1).max() <= UNCHANGED


@pytest.mark.parametrize("stage", ["base", "tsr1"])
def test_mixed_batch_keeps_image_frames_independent(stage, stage_cases):
    """Example 0: frames 0-1 video, 2-3 images; example 1: all video."""
    apply, params, inputs = stage_cases(stage)
    mixed = {**inputs, "frame_mask": jnp.asarray([[False, False, True, True], [False] * 4])}
    out = apply(params, mixed)

    change = frame_change(out, apply(params, perturb_frame(mixed, example=0, frame=2)))
    assert change[0, 2] > CHANGED  # only the perturbed image frame changes
    assert np.delete(change.ravel(), 2).max() <= UNCHANGED

    change = frame_change(out, apply(params, perturb_frame(mixed, example=0, frame=0)))
    assert change[0, :2].min() > CHANGED  # video frames mix with each other ...
    assert change[0, 2:].max() <= UNCHANGED  # ... but never reach the image frames
    assert change[1].max() <= UNCHANGED

    change = frame_change(out, apply(params, perturb_frame(mixed, example=0, frame=3)))
    assert change[0, :3].max() <= UNCHANGED  # and image frames never reach video frames


def test_padded_text_tokens_are_ignored(stage_cases):
    apply, params, inputs = stage_cases("base")
    out = apply(params, inputs)
    padded = {**inputs, "text": inputs["text"].at[:, 3:].add(5.0)}  # tokens 3, 4 are masked out
    assert np.abs(np.asarray(apply(params, padded) - out)).max() <= UNCHANGED
    valid = {**inputs, "text": inputs["text"].at[:, 0].add(1.0)}
    assert np.abs(np.asarray(apply(params, valid) - out)).max() > CHANGED


# --- temporal layers and the conditioning upsampler against NumPy ---------------------------


def _group_norm_ref(x, groups, scale, bias, eps=1e-5):
    """GroupNorm with statistics per (example, frame, group), float64."""
    b, t, h, w, c = x.shape
    g = x.reshape(b, t, h, w, groups, c // groups)
    mean = g.mean(axis=(2, 3, 5), keepdims=True)
    var = g.var(axis=(2, 3, 5), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _run_module(module, x, video):
    params = random_tree(jax.eval_shape(module.init, jax.random.key(0), x, video)["params"], 3)
    fn = jax.jit(lambda p, x, v: module.apply({"params": p}, x, v))
    out = fn(params, x, video)
    return np.asarray(out, np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), params)


@pytest.mark.parametrize("implementation", [None, "pallas"])
def test_temporal_attention_matches_numpy(implementation):
    """The block against float64 NumPy: through the einsums, and through the Pallas kernels
    (interpreted on the CPU)."""
    heads, head_dim, groups, max_distance = 2, 4, 2, 2
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 2, 3, 8)), jnp.float32)
    video = jnp.asarray([[True, True, False, True, True, False], [True] * 6])
    module = TemporalAttention(head_dim, groups, jnp.float32, max_distance, implementation)
    out, p = _run_module(module, x, video)

    xs, vs = np.asarray(x, np.float64), np.asarray(video)
    h = _group_norm_ref(xs, groups, p["norm"]["scale"], p["norm"]["bias"])
    qkv = np.einsum("bthwc,cpnd->bthwpnd", h, p["qkv"]["kernel"]) + p["qkv"]["bias"]
    q, k, v = (qkv[..., i, :, :] for i in range(3))
    logits = np.einsum("bthwnd,bshwnd->bhwnts", q, k) / np.sqrt(head_dim)
    frames = np.arange(6)
    offset = np.clip(frames[None, :] - frames[:, None], -max_distance, max_distance)
    logits += p["relative_position_bias"][offset + max_distance].transpose(2, 0, 1)
    allowed = (vs[:, :, None] & vs[:, None, :]) | np.eye(6, dtype=bool)
    logits = np.where(allowed[:, None, None, None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bhwnts,bshwnd->bthwnd", probs, v)
    update = np.einsum("bthwnd,ndc->bthwc", attended, p["out"]["kernel"]) + p["out"]["bias"]
    expected = xs + update * vs[:, :, None, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert heads == p["relative_position_bias"].shape[1]


def _fused_xla(q, k, v, bias, mask):
    return fused_frame_attention(q, k, v, bias, mask, implementation="xla")


def _pallas_interpreted(q, k, v, bias, mask):
    qkv = jnp.stack([q, k, v], axis=3)
    return pallas_frame_attention(qkv, bias, mask, block_pixels=4, interpret=True)


# (frames, pixels, heads, head_dim): 6 frames and heads of 4 take the lane reductions (5 pixels
# in blocks of 1, as 4 does not divide 5); 16 frames and heads of 16 take the dots.
LANE_SHAPE, DOT_SHAPE = (6, 5, 3, 4), (16, 8, 2, 16)


@pytest.mark.parametrize(
    ("attention", "shape"),
    [(_fused_xla, LANE_SHAPE), (_pallas_interpreted, LANE_SHAPE), (_pallas_interpreted, DOT_SHAPE)],
    ids=["fused", "pallas-lanes", "pallas-dots"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_attention_equals_the_einsum_form(masked, attention, shape):
    """Pixels folded into the heads for a fused kernel (run here through XLA's own
    dot_product_attention), and both bodies of the Pallas kernels (interpreted): the same
    outputs and the same gradients, bias included, as the einsums checked against NumPy
    above; image frames masked alike."""
    frames, pixels, heads, head_dim = shape
    assert uses_dots(frames=frames, head_dim=head_dim) == (shape == DOT_SHAPE)
    rng = np.random.default_rng(5)
    q, k, v = (
        jnp.asarray(rng.normal(size=(2, frames, pixels, heads, head_dim)), jnp.float32)
        for _ in range(3)
    )
    bias = jnp.asarray(rng.normal(size=(heads, frames, frames)), jnp.float32)
    video_frames = jnp.asarray([[i % 3 != 1 for i in range(frames)]] * 2)
    mask = temporal_attention_mask(video_frames) if masked else None

    def run(attention):
        def loss(q, k, v, bias):
            out = attention(q, k, v, bias, mask)
            return jnp.sum(out * jnp.cos(out)), out

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
        (_, out), grads = grad(q, k, v, bias)
        return out, grads

    want, want_grads = run(frame_attention)
    got, got_grads = run(attention)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [LANE_SHAPE, DOT_SHAPE], ids=["lanes", "dots"])
def test_pallas_attention_adds_the_projection_bias_as_it_reads(shape):
    """The projection's bias, left out of its matmul and added inside the kernels: the same
    output and gradients (of the projection, its bias and the position bias) as the einsums
    on the biased projection."""
    frames, pixels, heads, head_dim = shape
    rng = np.random.default_rng(7)
    qkv = jnp.asarray(rng.normal(size=(2, frames, pixels, 3, heads, head_dim)), jnp.float32)
    qkv_bias = jnp.asarray(rng.normal(size=(3, heads, head_dim)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(heads, frames, frames)), jnp.float32)

    def kernels(qkv, qkv_bias, bias):
        return attend_frames(qkv, bias, None, "pallas", qkv_bias=qkv_bias, interpret=True)

    def einsums(qkv, qkv_bias, bias):
        q, k, v = (qkv[:, :, :, i] + qkv_bias[i] for i in range(3))
        return frame_attention(q, k, v, bias, None)

    def run(attention):
        def loss(*args):
            out = attention(*args)
            return jnp.sum(out * jnp.cos(out)), out

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(qkv, qkv_bias, bias)

    (_, got), got_grads = run(kernels)
    (_, want), want_grads = run(einsums)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation, spatial", [("pallas", None), ("pallas_cudnn", "cudnn")])
def test_pallas_impls_pick_the_spatial_kernel_beside_the_temporal_kernels(
    monkeypatch, implementation, spatial
):
    """Both run temporal attention by the Pallas kernels; spatial and cross-attention ask
    ``jax.nn.dot_product_attention`` for XLA's kernel (None) or cuDNN's (which cannot run
    here, so the call is recorded and run by XLA)."""
    calls = []
    xla_attention = jax.nn.dot_product_attention

    def recorded(*args, implementation=None, **kwargs):
        calls.append(implementation)
        return xla_attention(*args, **kwargs)

    config = stage_config("base")
    params = nn.unbox(abstract_params(config.model))  # the same for every attention_impl
    inputs = stage_inputs(config, batch=1, frames=2)
    model = VideoUNet.from_config({**config.model.to_dict(), "attention_impl": implementation})
    monkeypatch.setattr(jax.nn, "dot_product_attention", recorded)
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, **inputs))(params))
    blocks = [block for block in params.values() if "temporal_attention" in block]
    attending = sum("spatial_attention" in block for block in blocks)
    assert attending > 0
    assert calls == [spatial, spatial] * attending  # spatial, then cross-attention, a block
    assert jaxpr.count("name=temporal_attention_forward") == len(blocks)


def _emulated_cudnn_attention(q, k, v, *, implementation, key_value_seq_lengths=None):
    """cuDNN's kernel as the U-Net calls it, emulated by einsums: no mask argument, and keys
    past each caption's length (if given) masked by an additive -inf, so that a length of 0,
    which must never reach cuDNN, gives NaN."""
    assert implementation == "cudnn"
    logits = jnp.einsum("blnd,bsnd->bnls", q, k) / np.sqrt(q.shape[-1])
    if key_value_seq_lengths is not None:
        kept = jnp.arange(k.shape[1]) < key_value_seq_lengths[:, None]
        logits = logits + jnp.where(kept, 0.0, -jnp.inf)[:, None, None, :]
    return jnp.einsum("bnls,bsnd->blnd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("implementation", ["xla", "cudnn"])
def test_a_caption_masked_whole_gets_the_mean_of_its_values_and_no_q_or_k_gradient(
    monkeypatch, implementation
):
    """Whatever the kernel does with a masked row (here cuDNN's key lengths, emulated), the
    null caption's queries get the mean of its values and no gradient reaches its q and
    k; a partly masked caption attends to its valid tokens only."""
    if implementation == "cudnn":
        monkeypatch.setattr(jax.nn, "dot_product_attention", _emulated_cudnn_attention)
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 5, 2, 4)) for i in range(3))
    k, v = k[:, :3], v[:, :3]
    text_mask = jnp.array([[True, True, False], [False, False, False]])

    def loss(q, k, v):
        out = attend_text(q, k, v, text_mask, implementation)
        return jnp.sum(out * jnp.arange(out.size).reshape(out.shape)), out

    (_, out), (grad_q, grad_k, grad_v) = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(out[1], np.broadcast_to(np.mean(v[1], 0), (5, 2, 4)), atol=1e-6)
    np.testing.assert_array_equal(grad_q[1], 0.0)
    np.testing.assert_array_equal(grad_k[1], 0.0)
    weights = np.arange(out.size, dtype=np.float64).reshape(out.shape)[1].sum(0)  # d loss / d out
    np.testing.assert_allclose(grad_v[1], np.broadcast_to(weights / 3, (3, 2, 4)), rtol=1e-6)
    q0, k0, v0 = (np.asarray(x[0], np.float64) for x in (q, k[:, :2], v[:, :2]))
    logits = np.einsum("lnd,snd->nls", q0, k0) / 2.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("nls,snd->lnd", probs / probs.sum(-1, keepdims=True), v0)
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grad_k[0, 2], 0.0)


def test_cudnn_cross_attention_attends_to_the_valid_tokens_of_a_mask_with_gaps(monkeypatch):
    """cuDNN (emulated) takes the text mask as a key length per caption; VideoUNet moves each
    caption's valid tokens first, so a mask with gaps gives what XLA's masked attention
    gives."""
    config = stage_config("base", dtype="float32")
    params = random_tree(abstract_params(config.model), 0)
    inputs = stage_inputs(config, batch=2, frames=2)
    gaps = [[False, True, False, True, True], [False, False, True, False, False]]
    inputs["text_mask"] = jnp.asarray(gaps)

    def apply(implementation):
        model = VideoUNet.from_config({**config.model.to_dict(), "attention_impl": implementation})
        return np.asarray(model.apply({"params": params}, **inputs))

    want = apply("xla")
    monkeypatch.setattr(jax.nn, "dot_product_attention", _emulated_cudnn_attention)
    np.testing.assert_allclose(apply("pallas_cudnn"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's kernel needs a GPU")
def test_cudnn_cross_attention_matches_xla_on_a_gpu():
    """On a GPU (``JAX_PLATFORMS=cuda``), cuDNN given key lengths against XLA given the mask,
    in bfloat16: captions partly valid, whole and masked whole; outputs within bfloat16's
    rounding of the outputs' scale, gradients within 1 % of each one's largest value."""
    b, length, s, heads, d = 4, 512, 64, 8, 64
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (
        jax.random.normal(key, (b, length if i == 0 else s, heads, d), jnp.bfloat16)
        for i, key in enumerate(keys[:3])
    )
    text_mask = jnp.arange(s)[None] < jnp.asarray([10, s, 0, 33])[:, None]
    weights = jax.random.normal(keys[3], q.shape, jnp.float32)

    @functools.partial(jax.jit, static_argnums=3)
    def out_and_grads(q, k, v, implementation):
        def loss(q, k, v):
            out = attend_text(q, k, v, text_mask, implementation).astype(jnp.float32)
            return jnp.sum(out * weights), out

        return jax.grad(loss, (0, 1, 2), has_aux=True)(q, k, v)

    (got_grads, got), (want_grads, want) = (out_and_grads(q, k, v, i) for i in ("cudnn", "xla"))
    np.testing.assert_allclose(got, want, atol=2**-7 * float(jnp.abs(want).max()))
    for g, w in zip(got_grads, want_grads):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.abs(g - w).max() <= 0.01 * np.abs(w).max()


def test_pallas_attention_takes_dots_where_triton_can_tile_them():
    assert uses_dots(frames=16, head_dim=64) and uses_dots(frames=128, head_dim=16)
    assert not uses_dots(frames=8, head_dim=64) and not uses_dots(frames=16, head_dim=8)


def test_pallas_attention_lowers_to_triton_kernels_for_the_gpu():
    """Lowered for CUDA from the CPU: the forward and the backward pass are each one Triton
    kernel (Pallas' Triton lowering runs without a GPU), at the bench U-Net's head size."""
    qkv = jax.ShapeDtypeStruct((1, 16, 64, 3, 2, 64), jnp.bfloat16)
    bias = jax.ShapeDtypeStruct((2, 16, 16), jnp.float32)

    def loss(qkv, bias):
        out = pallas_frame_attention(qkv, bias, None, interpret=False)
        return jnp.sum(out.astype(jnp.float32))

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    text = step.trace(qkv, bias).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2


def test_pallas_attention_names_shapes_triton_cannot_tile():
    qkv = jnp.zeros((1, 6, 8, 3, 1, 4))
    with pytest.raises(ValueError, match=r"powers of 2; got \{'frames': 6\}.*attention_impl='xla'"):
        pallas_frame_attention(qkv, jnp.zeros((1, 6, 6)), None, interpret=False)


def test_pallas_attention_refuses_a_backend_without_its_kernels(monkeypatch):
    """On a TPU the Triton kernels cannot compile, and the interpreter would be silently slow."""
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    qkv = jnp.zeros((1, 4, 8, 3, 1, 4))
    with pytest.raises(ValueError, match="GPUs only, not 'tpu'"):
        pallas_frame_attention(qkv, jnp.zeros((1, 4, 4)), None)


def test_pallas_attention_runs_per_shard_under_a_mesh():
    """Under a 4 x 2 (data, tensor) mesh of the 8 CPU devices the kernels run on each device's
    shard of the batch and heads: the same gradients as the einsums, bias included (summed
    over the batch shards); lowered for a GPU, each Triton kernel takes one device's shard
    [1, T, P, 1, d], never the whole [4, T, P, 2, d] gathered."""
    mesh = make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(4, 4, 8, 2, 4)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
    mask = temporal_attention_mask(jnp.asarray([[True, False, True, True]] * 4))

    def grads(attend):
        def loss(q, k, v, bias):
            return jnp.sum(jnp.sin(attend(q, k, v, bias, mask)))

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))

    def sharded(kernels):
        return lambda q, k, v, *rest: per_shard(kernels, jnp.stack([q, k, v], axis=3), *rest)

    want = grads(frame_attention)(q, k, v, bias)
    compiled = functools.partial(pallas_frame_attention, interpret=False)
    with mesh_context(mesh, DEFAULT_RULES):
        got = grads(sharded(pallas_frame_attention))(q, k, v, bias)
        step = grads(sharded(compiled))
        text = step.trace(q, k, v, bias).lower(lowering_platforms=("cuda",)).as_text()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    kernels = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert len(kernels) == 2
    assert all("tensor<1x4x8x3x1x4xf32>" in line for line in kernels)
    assert not any("tensor<4x4x8x3x2x4xf32>" in line for line in kernels)


def test_temporal_attention_tells_time_direction_at_init():
    """A zero (offset-symmetric) relative bias would make the block equivariant to playing
    the clip backwards; the random initial bias is not symmetric, so the block is not."""
    module = TemporalAttention(4, 2, jnp.float32, max_distance=3)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 2, 2, 8)), jnp.float32)
    params = nn.unbox(module.init(jax.random.key(0), x)["params"])
    table = np.asarray(params["relative_position_bias"])
    assert np.abs(table - table[::-1]).max() > 0.1
    # A nonzero output projection, so that the attention reaches the output.
    out_kernel = jax.random.normal(jax.random.key(1), params["out"]["kernel"].shape)
    params = {**params, "out": {**params["out"], "kernel": out_kernel}}

    def reversal_gap(p):
        forward = module.apply({"params": p}, x)
        backward = module.apply({"params": p}, x[:, ::-1])[:, ::-1]
        return float(jnp.abs(forward - backward).max())

    symmetric = {**params, "relative_position_bias": jnp.asarray((table + table[::-1]) / 2)}
    assert reversal_gap(symmetric) < 1e-5
    assert reversal_gap(params) > 1e-2


def test_temporal_conv_matches_numpy():
    groups = 2
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 2, 3, 8)), jnp.float32)
    video = jnp.asarray([[True, False, True, True, True], [True] * 5])
    out, p = _run_module(TemporalConv(groups, jnp.float32), x, video)

    xs, vs = np.asarray(x, np.float64), np.asarray(video)[:, :, None, None, None]
    h = _silu(_group_norm_ref(xs, groups, p["norm"]["scale"], p["norm"]["bias"])) * vs
    padded = np.pad(h, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    # [C_out, 3, 1, C_in] -> [3, C_in, C_out] over frames t-1, t, t+1
    kernel = np.transpose(p["conv"]["kernel"][:, :, 0], (1, 2, 0))
    update = sum(np.einsum("bthwc,cd->bthwd", padded[:, i : i + 5], kernel[i]) for i in range(3))
    expected = xs + (update + p["conv"]["bias"]) * vs
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation with half-pixel centres, edges clamped."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m


def test_condition_upsampling_is_bilinear_in_space_and_repeats_frames():
    low = np.random.default_rng(2).uniform(-1, 1, (1, 2, 3, 4, 3))
    out = np.asarray(upsample_condition(jnp.asarray(low, jnp.float32), 6, 6, 8), np.float64)
    expected = np.einsum("yh,xw,bthwc->btyxc", _bilinear_matrix(3, 6), _bilinear_matrix(4, 8), low)
    expected = np.repeat(expected, 3, axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# --- zero-initialised conditioning: guidance weight and NUWA-XL mask condition --------------


def test_guidance_and_mask_condition_start_as_no_ops():
    """At init a student (w input) with the mask condition equals the plain model on the same
    other parameters (randomised, so the comparison is not trivially zero == zero). Float32
    compute: the two models are different programs, so bfloat16 rounding could differ."""
    plain = VideoUNet.from_config(stage_config("base", dtype="float32").model)
    config = stage_config("base", dtype="float32", guidance_input=True, mask_condition=True)
    student = VideoUNet.from_config(config.model)
    inputs = stage_inputs(config, batch=2, frames=FRAMES)
    inputs.update(
        guidance=jnp.asarray([3.0, 7.5]),
        known_mask=jnp.asarray([[True, False, False, True], [False] * 4]),
    )
    plain_inputs = {k: v for k, v in inputs.items() if k not in ("guidance", "known", "known_mask")}
    init = jax.jit(lambda key: student.init(key, **inputs)["params"])
    initial = nn.unbox(init(jax.random.key(0)))

    def is_new(name):
        return name == "guidance_embedding" or name.endswith("mask_condition")

    shared = random_tree({k: v for k, v in initial.items() if not is_new(k)}, seed=0)
    new = {k: v for k, v in initial.items() if is_new(k)}
    assert "guidance_embedding" in new and "up_1_mask_condition" in new

    def both(new, inputs):
        out = student.apply({"params": {**shared, **new}}, **inputs)
        return out, plain.apply({"params": shared}, **plain_inputs)

    both = jax.jit(both)
    student_out, plain_out = both(new, inputs)
    # Different programs round differently (~1e-6 relative in float32); a non-neutral init
    # would differ by O(0.1), as the randomised new layers below do.
    np.testing.assert_allclose(student_out, plain_out, rtol=1e-5, atol=1e-5)

    trained = random_tree(new, seed=5)  # once trained, both inputs matter
    out, _ = both(trained, inputs)
    assert np.abs(np.asarray(out - plain_out)).max() > 1e-2
    other_w, _ = both(trained, {**inputs, "guidance": jnp.asarray([0.0, 1.0])})
    assert np.abs(np.asarray(other_w - out)).max() > CHANGED
    unknown_changed, _ = both(trained, {**inputs, "known": inputs["known"].at[:, 1:3].add(1.0)})
    assert np.abs(np.asarray(unknown_changed - out)).max() <= UNCHANGED
    known_changed, _ = both(trained, {**inputs, "known": inputs["known"].at[0, 0].add(1.0)})
    assert np.abs(np.asarray(known_changed - out)).max() > CHANGED


# --- remat ----------------------------------------------------------------------------------


def _remat_policies(config_overrides: dict) -> list:
    """The policy of every rematerialised region in the traced forward pass."""
    config = stage_config("base", **config_overrides)
    model = VideoUNet.from_config(config.model)
    params = nn.unbox(abstract_params(config.model))
    inputs = stage_inputs(config, batch=1, frames=2)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, **inputs))(params)

    def regions(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "remat2":
                yield eqn.params["policy"]
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from regions(sub)

    return list(regions(jaxpr.jaxpr))


def test_remat_wraps_every_block_with_its_policy():
    # tiny base: 5 space-time blocks, each a residual block and temporal attention, and
    # spatial + cross-attention in the 3 blocks of level 1 and the middle.
    assert _remat_policies({"remat": "none"}) == []
    assert _remat_policies({"remat": "block"}) == [None] * (5 * 2 + 3 * 2)
    assert _remat_policies({"remat": "dots"}) == [dots_remat_policy] * (5 * 2 + 3 * 2)
    # 'dots_spatial': the same, but the 3 spatial attentions outside any remat region
    assert _remat_policies({"remat": "dots_spatial"}) == [dots_remat_policy] * (5 * 2 + 3)
    # 'dots_attention': the 3 cross-attentions outside too, and the blocks below the top level
    # (down_1_0, middle, up_1_0) keeping the normalised inputs named for it
    dots, keeping = dots_remat_policy, dots_and_inputs_policy
    assert _remat_policies({"remat": "dots_attention"}) == (
        [dots, dots] + [keeping, keeping] * 3 + [dots, dots]
    )


def test_dots_attention_keeps_the_normalised_inputs_below_the_top_level(capsys):
    """The residuals of a 'dots_attention' U-Net: the temporal attention's normalised input
    of each level-1 block (4 x 4, 16 channels in the tiny base) and the decoder block's
    normalised input joined with its skip (16 + 16 channels); none at the top level."""
    config = stage_config("base", remat="dots_attention")
    model = VideoUNet.from_config(config.model)
    params = nn.unbox(abstract_params(config.model))
    inputs = stage_inputs(config, batch=1, frames=2)
    print_saved_residuals(lambda p: jnp.sum(model.apply({"params": p}, **inputs)), params)
    lines = capsys.readouterr().out.splitlines()
    for name, shapes in (
        (TEMPORAL_INPUT, ["bf16[1,2,4,4,16]"] * 3),
        (JOINED_INPUT, ["bf16[1,2,4,4,32]"]),
    ):
        assert [line.split()[0] for line in lines if f"named '{name}'" in line] == shapes


def _loss_and_gradient(remat: str):
    """Loss and gradient of a float32 tiny base U-Net under ``remat``, at fixed random params."""
    config = stage_config("base", dtype="float32", remat=remat)
    params = random_tree(nn.unbox(abstract_params(config.model)), seed=1)
    inputs = stage_inputs(config, batch=1, frames=2)
    model = VideoUNet.from_config(config.model)

    def loss(p):
        return jnp.sum(jnp.square(model.apply({"params": p}, **inputs)))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def without_remat():
    return _loss_and_gradient("none")


@pytest.mark.parametrize("remat", ["block", "dots", "dots_spatial", "dots_attention"])
def test_remat_leaves_the_loss_and_gradient_unchanged(remat, without_remat):
    """Rematerialisation recomputes; it must not change what is computed."""
    (loss_plain, grads_plain), (loss, grads) = without_remat, _loss_and_gradient(remat)
    np.testing.assert_allclose(loss, loss_plain, rtol=1e-5)
    for plain, recomputed in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads)):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())


def _saved_residual_names(remat: str, capsys, attention_impl: str = "xla") -> list[str]:
    """The names of the residuals a tiny base U-Net's gradient keeps under ``remat``."""
    config = stage_config("base", remat=remat, attention_impl=attention_impl)
    model = VideoUNet.from_config(config.model)
    params = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(abstract_params(config.model))
    )
    inputs = stage_inputs(config, batch=1, frames=2)
    capsys.readouterr()
    print_saved_residuals(lambda p: jnp.sum(model.apply({"params": p}, **inputs)), params)
    return re.findall(r"named '(\w+)'", capsys.readouterr().out)


def test_dots_remat_keeps_the_norm_statistics_that_no_remat_keeps(capsys):
    # Recomputing a norm's statistics is a full pass over the activation; under 'dots' the
    # backward pass reads them as saved, as it does without remat.
    kept = _saved_residual_names("none", capsys).count(NORM_STATISTICS)
    assert kept > 0 and kept % 2 == 0  # a mean and a 1/std for each norm
    assert _saved_residual_names("dots", capsys).count(NORM_STATISTICS) == kept


def test_dots_remat_keeps_the_pallas_attention_outputs(capsys):
    # Recomputing them would run the forward kernel again in the backward pass.
    kept = _saved_residual_names("none", capsys, "pallas").count(ATTENTION_OUTPUTS)
    assert kept > 0 and kept % 2 == 0  # an output and its log-sum-exps for each attention
    assert _saved_residual_names("dots", capsys, "pallas").count(ATTENTION_OUTPUTS) == kept


# --- user mistakes ----------------------------------------------------------------------------


def _trace(config, **changes):
    """Trace init with the stage's inputs changed as given (None removes one); no compile."""
    model = VideoUNet.from_config(config.model)
    inputs = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype)
        for k, v in stage_inputs(config, batch=2, frames=config.stage.frames).items()
    }
    inputs.update(changes)
    jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))


def _spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize(
    "stage, changes, message",
    [
        (
            "base",
            {"z": _spec(2, 8, 8, 3)},
            r"'z'.*\[batch, frames, height, width, 3\].*\(2, 8, 8, 3\)",
        ),
        ("base", {"z": _spec(2, 2, 8, 8, 4)}, r"'z'.*got shape \(2, 2, 8, 8, 4\)"),
        ("base", {"z": _spec(2, 2, 7, 8, 3)}, r"multiples of 2.*7x8"),
        ("base", {"logsnr": _spec(3)}, r"'logsnr'.*\(\) or \(2,\).*\(3,\)"),
        ("base", {"text": _spec(2, 5, 768)}, r"'text'.*\(2, 'any', 384\).*\(2, 5, 768\)"),
        ("base", {"text": _spec(2, 5)}, r"'text'.*got shape \(2, 5\)"),
        ("base", {"text_mask": _spec(2, 4, dtype=bool)}, r"'text_mask'.*\(2, 5\).*\(2, 4\)"),
        ("base", {"text": None}, r"'text' is required.*use_text"),
        ("base", {"cond": _spec(2, 2, 8, 8, 3)}, r"'cond' is not expected.*cond_channels"),
        ("base", {"guidance": _spec(2)}, r"'guidance' is not expected.*guidance_input"),
        ("base", {"known": _spec(2, 2, 8, 8, 3)}, r"'known' is not expected.*mask_condition"),
        ("base", {"frame_mask": _spec(2, 3, dtype=bool)}, r"'frame_mask'.*\(2, 2\).*\(2, 3\)"),
        ("tsr1", {"cond": None}, r"'cond' is required.*cond_channels"),
        ("tsr1", {"cond_logsnr": None}, r"'cond_logsnr' is required.*cond_augmentation"),
        ("tsr1", {"cond": _spec(2, 2, 8, 8, 4)}, r"'cond'.*\[batch=2, .*3\].*\(2, 2, 8, 8, 4\)"),
        ("tsr1", {"cond": _spec(2, 3, 8, 8, 3)}, r"'cond'.*3 frames must divide z's 4"),
    ],
)
def test_wrong_inputs_raise_value_error(stage, changes, message):
    with pytest.raises(ValueError, match=message):
        _trace(stage_config(stage), **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_res_blocks": (1,)}, r"'num_res_blocks'.*one entry per level \(2"),
        ({"temporal_mixing": ("attention", "lstm")}, r"'temporal_mixing'.*'lstm'"),
        ({"remat": "all"}, r"'remat'.*'all'"),
        ({"head_dim": 3}, r"level 0: 8 channels not divisible by head_dim=3"),
        ({"unknown_field": 1}, r"unknown VideoUNet config field.*unknown_field"),
    ],
)
def test_wrong_config_raises_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        VideoUNet.from_config({**stage_config("base").model.to_dict(), **changes})

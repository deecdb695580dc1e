"""Attention blocks of the Video U-Net: spatial self-attention per frame, temporal
self-attention per pixel (relative position bias, image frames masked), and cross-attention
to text tokens. Spatial and cross-attention run through ``jax.nn.dot_product_attention``;
the temporal attention's T x T products are einsums in the video's own layout
(:func:`frame_attention`), or with ``implementation='cudnn'`` cuDNN's fused kernel reading that
layout with the pixels folded into the heads (:func:`fused_frame_attention`; on an H200 a
train step was 12 % slower with it at T = 16, docs/PERFORMANCE.md), or with
``implementation='pallas'`` by kernels that read that layout once
(:mod:`imagen_video_jax.models.pallas_attention`; spatial attention then picks its kernel as
'auto' does, or, with ``'pallas_cudnn'``, cuDNN's fused kernel; cross-attention takes the
spatial attention's kernel). All compute in the compute dtype, with a zero-initialised output
projection so each block starts as the identity.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from imagen_video_jax.models.layers import (
    FrameGroupNorm,
    constrain_video,
    frame_gate,
    kernel_init,
    partitioned,
)
from imagen_video_jax.models.pallas_attention import pallas_frame_attention


def heads_projection(heads: int, head_dim: int, dtype, *, parts: int, name: str, in_axis: str):
    """Project channels to ``parts`` stacked tensors of ``heads`` x ``head_dim`` (q, k, v)."""
    return HeadsProjection(parts, heads, head_dim, dtype, in_axis, name=name)


class HeadsProjection(nn.Module):
    """``x [..., C] -> [..., parts, heads, head_dim]``, a dense layer (kernel [C, parts, heads,
    head_dim], LeCun-normal; bias [parts, heads, head_dim], zeros).

    ``add_bias=False`` returns ``(product, bias)`` apart, for a kernel that adds the bias as it
    reads the product: the product is a cuBLAS matmul, which XLA does not fuse a bias into, so
    adding it here would be one more pass over the whole projection.
    """

    parts: int
    heads: int
    head_dim: int
    dtype: Any
    in_axis: str

    @nn.compact
    def __call__(self, x: jax.Array, add_bias: bool = True):
        shape = (self.parts, self.heads, self.head_dim)
        init = kernel_init(in_axis=0, out_axis=(1, 2, 3))
        kernel = self.param(
            "kernel",
            partitioned(init, (self.in_axis, None, "heads", "kv")),
            (x.shape[-1], *shape),
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros_init(), (None, "heads", "kv")), shape
        )
        product = jnp.einsum("...c,cpnd->...pnd", x.astype(self.dtype), kernel.astype(self.dtype))
        bias = bias.astype(self.dtype)
        return product + bias if add_bias else (product, bias)


def output_projection(features: int, dtype, name: str = "out") -> nn.DenseGeneral:
    """Merge heads back to ``features`` channels; zero-initialised: the block starts as identity."""
    return nn.DenseGeneral(
        features,
        axis=(-2, -1),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init(zero=True), ("heads", "kv", "embed")),
        bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


# model.attention_impl values naming different kernels for temporal and spatial attention:
# (temporal, spatial). 'pallas' names a temporal kernel only, so spatial attention picks as
# 'auto' (None) does; 'pallas_cudnn' adds cuDNN's fused kernel for spatial attention. Every
# other value names one kernel for both. Cross-attention takes the spatial attention's kernel.
_SPLIT_IMPLEMENTATIONS = {"pallas": ("pallas", None), "pallas_cudnn": ("pallas", "cudnn")}


def attention_kernels(implementation: str | None) -> tuple[str | None, str | None]:
    """(temporal, spatial): :func:`attend_frames`' implementation for temporal attention and
    ``jax.nn.dot_product_attention``'s for spatial attention, from ``model.attention_impl``."""
    return _SPLIT_IMPLEMENTATIONS.get(implementation, (implementation, implementation))


def _num_heads(channels: int, head_dim: int) -> int:
    if channels % head_dim:
        raise ValueError(
            f"attention over {channels} channels needs a head_dim dividing it; got {head_dim}"
        )
    return channels // head_dim


class SpatialAttention(nn.Module):
    """Self-attention among the pixels of each frame separately: [B*T, H*W, heads, d]."""

    head_dim: int
    groups: int
    dtype: jnp.dtype
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, height, width, c = x.shape
        heads = _num_heads(c, self.head_dim)
        h = FrameGroupNorm(self.groups, self.dtype, name="norm")(x)
        h = h.reshape(b * t, height * width, c)
        qkv = heads_projection(
            heads, self.head_dim, self.dtype, parts=3, name="qkv", in_axis="embed"
        )(h)
        qkv = nn.with_logical_constraint(qkv, ("batch", None, None, "heads", None))
        q, k, v = (qkv[:, :, i] for i in range(3))
        out = jax.nn.dot_product_attention(
            q, k, v, implementation=attention_kernels(self.implementation)[1]
        )
        out = output_projection(c, self.dtype)(out).reshape(x.shape)
        return constrain_video(x + out)


# Standard deviation of the relative position bias at initialisation (logit units).
RELATIVE_BIAS_INIT_STD = 0.5


# The name of the temporal attention's normalised input, for remat policies: the projection's
# kernel gradient reads it, which a rematerialised block would otherwise normalise again.
TEMPORAL_INPUT = "temporal_attention_input"


class TemporalAttention(nn.Module):
    """Self-attention among the T frames at each pixel, per head.

    A learned bias per head over frame offsets (clipped to ``max_distance``) gives the frames
    their order. Image frames (``video_frames`` False) are masked out as keys for every other
    frame and their own residual is bypassed, so for them the block is the identity.

    The norm and both projections work on the video's own [B, T, H, W, C] layout and
    :func:`frame_attention` computes the T x T attention from there, so only q, k, v and the
    attended values change layout (each once, inside the attention's products), never the
    normalised input or the block's output; with ``implementation='cudnn'`` none of them do.
    """

    head_dim: int
    groups: int
    dtype: jnp.dtype
    max_distance: int = 32
    # "cudnn": cuDNN's fused kernel (fused_frame_attention); "pallas" and "pallas_cudnn":
    # pallas_frame_attention
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, video_frames: jax.Array | None = None) -> jax.Array:
        b, t, height, width, c = x.shape
        heads = _num_heads(c, self.head_dim)
        h = checkpoint_name(FrameGroupNorm(self.groups, self.dtype, name="norm")(x), TEMPORAL_INPUT)
        qkv, qkv_bias = heads_projection(
            heads, self.head_dim, self.dtype, parts=3, name="qkv", in_axis="embed"
        )(h.reshape(b, t, height * width, c), add_bias=False)
        mask = None if video_frames is None else temporal_attention_mask(video_frames)
        bias = self._relative_position_bias(heads, t)
        out = attend_frames(
            qkv, bias, mask, attention_kernels(self.implementation)[0], qkv_bias=qkv_bias
        )
        out = output_projection(c, self.dtype)(out).reshape(x.shape)
        if video_frames is not None:
            out = out * frame_gate(video_frames, out.dtype)
        return constrain_video(x + out)

    def _relative_position_bias(self, heads: int, frames: int) -> jax.Array:
        """[heads, T, T] learned bias indexed by the clipped offset key - query.

        Initialised at random, as T5's relative attention bias is: every other part of the
        block is blind to frame order, so a bias that starts symmetric in the offset (zero)
        makes the network equivariant to reversing time, and training keeps it so (the
        clips, over all captions, are as likely played backwards): such a model cannot tell
        'moving up' from 'moving down'.
        """
        table = self.param(
            "relative_position_bias",
            partitioned(nn.initializers.normal(RELATIVE_BIAS_INIT_STD), (None, "heads")),
            (2 * self.max_distance + 1, heads),
        )
        offsets = jnp.arange(frames)[None, :] - jnp.arange(frames)[:, None]
        index = jnp.clip(offsets, -self.max_distance, self.max_distance) + self.max_distance
        return table[index].transpose(2, 0, 1)


def frame_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """Attention among the T frames at every pixel, in the video layout.

    ``q``, ``k``, ``v`` [B, T, P, heads, d], ``bias`` [heads, T, T], ``mask`` None or [B, T, T]
    (True: the query frame may attend to the key frame) -> [B, T, P, heads, d].

    With T small (16) this is a batch of tiny products, bound by memory traffic and layout, not
    a flash-attention workload: the einsums keep (B, P, heads) as batch axes, so each of q, k, v
    and the output is transposed once, inside the products. Logits and softmax in float32,
    products in ``q``'s dtype (as ``jax.nn.dot_product_attention`` does).
    """
    logits = jnp.einsum(
        "btpnd,bspnd->bpnts",
        q,
        k,
        precision=_float32_accumulation(q.dtype),
        preferred_element_type=jnp.float32,
    )
    logits = logits * q.shape[-1] ** -0.5 + bias
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bpnts,bspnd->btpnd", probs, v)


def attend_frames(
    qkv: jax.Array,
    bias: jax.Array,
    mask: jax.Array | None,
    implementation: str | None,
    *,
    qkv_bias: jax.Array | None = None,
    **kernel_options: Any,
) -> jax.Array:
    """Temporal attention of the projection ``qkv`` [B, T, P, 3, heads, d] (q, k, v on axis 3)
    plus ``qkv_bias`` [3, heads, d] (None: none) by ``implementation``: 'cudnn'
    (:func:`fused_frame_attention`), 'pallas' (:func:`pallas_frame_attention` per shard,
    ``kernel_options`` passed to it, reading ``qkv`` as it is and adding the bias as it reads),
    else the einsums of :func:`frame_attention`. ``bias``, ``mask`` and the output as
    :func:`frame_attention`'s."""
    if implementation == "pallas":
        kernels = functools.partial(pallas_frame_attention, **kernel_options)
        return per_shard(kernels, qkv, bias, mask, qkv_bias)
    if qkv_bias is not None:
        qkv = qkv + qkv_bias
    q, k, v = (qkv[:, :, :, i] for i in range(3))
    if implementation == "cudnn":
        return fused_frame_attention(q, k, v, bias, mask, implementation)
    return frame_attention(q, k, v, bias, mask)


def per_shard(attend, qkv: jax.Array, bias: jax.Array, mask, qkv_bias=None):
    """``attend(qkv, bias, mask, qkv_bias=qkv_bias)`` on each device's shard of the batch and
    heads.

    A custom kernel has no partitioning rule, so under a mesh XLA would gather its operands
    onto every device; this runs it per shard instead (shard_map over the mesh set by
    ``jax.set_mesh``, with the logical axis rules in effect: ``qkv`` [B, T, P, 3, heads, d] and
    the output [B, T, P, heads, d] split by 'batch' and 'heads', the bias [heads, T, T] and
    ``qkv_bias`` [3, heads, d] by 'heads', the mask [B, T, T] by 'batch'). Without a mesh of
    more than one device it is a plain call.
    """
    if qkv_bias is None:
        qkv_bias = jnp.zeros(qkv.shape[3:], qkv.dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return attend(qkv, bias, mask, qkv_bias=qkv_bias)
    batch, heads = nn.logical_to_mesh_axes(("batch", "heads"))
    video = P(batch, None, None, heads, None)
    projection = P(batch, None, None, None, heads, None)
    specs = [projection, P(heads), P(None, heads)] + ([] if mask is None else [P(batch)])

    def local(qkv, bias, qkv_bias, *mask_shard):
        return attend(qkv, bias, *(mask_shard or [None]), qkv_bias=qkv_bias)

    # check_vma off: a pallas_call's outputs do not say how they vary over the mesh axes.
    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=tuple(specs), out_specs=video, check_vma=False
    )
    return sharded(qkv, bias, qkv_bias, *([] if mask is None else [mask]))


def fused_frame_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    mask: jax.Array | None,
    implementation: str | None,
) -> jax.Array:
    """:func:`frame_attention` through ``jax.nn.dot_product_attention``: the P pixels folded
    into the heads ([B, T, P*heads, d], a free reshape of the video layout), so that a fused
    kernel (cuDNN's, which reads this [B, T, N, d] layout as it is) needs no transposes. The
    bias is tiled over the pixels ([1, P*heads, T, T]); softmax in float32 inside the kernel.
    """
    b, t, p, n, d = q.shape
    folded = [x.reshape(b, t, p * n, d) for x in (q, k, v)]
    tiled = jnp.broadcast_to(bias.astype(q.dtype), (p, n, t, t)).reshape(1, p * n, t, t)
    out = jax.nn.dot_product_attention(
        *folded,
        bias=tiled,
        mask=None if mask is None else mask[:, None],
        implementation=implementation,
    )
    return out.reshape(q.shape)


def _float32_accumulation(dtype: jnp.dtype) -> jax.lax.DotAlgorithmPreset | None:
    """Dot algorithm with ``dtype`` inputs and float32 accumulation (None for float32 inputs):
    explicit, so that the backward products of the float32 logits also take ``dtype`` inputs.
    """
    presets = {
        jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
        jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32,
    }
    return presets.get(jnp.dtype(dtype))


def temporal_attention_mask(video_frames: jax.Array) -> jax.Array:
    """[B, T] (True = video frame) -> [B, T, T] keys allowed per query.

    Video frames attend to video frames; an image frame attends only to itself.
    """
    both_video = video_frames[:, :, None] & video_frames[:, None, :]
    return both_video | jnp.eye(video_frames.shape[1], dtype=bool)[None]


class CrossAttention(nn.Module):
    """Every pixel of every frame attends to the valid text tokens: [B, T*H*W, heads, d].

    Each query is independent, so flattening frames into the query length mixes no frames.
    With cuDNN's kernel the valid tokens must come first (:func:`attend_text`).
    """

    head_dim: int
    groups: int
    dtype: jnp.dtype
    implementation: str | None = None  # model.attention_impl; the spatial attention's kernel

    @nn.compact
    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        b, t, height, width, c = x.shape
        heads = _num_heads(c, self.head_dim)
        h = FrameGroupNorm(self.groups, self.dtype, name="norm")(x).reshape(
            b, t * height * width, c
        )
        q = heads_projection(heads, self.head_dim, self.dtype, parts=1, name="q", in_axis="embed")(
            h
        )
        kv = heads_projection(
            heads, self.head_dim, self.dtype, parts=2, name="kv", in_axis="text_embed"
        )(text.astype(self.dtype))
        implementation = attention_kernels(self.implementation)[1]
        out = attend_text(q[:, :, 0], kv[:, :, 0], kv[:, :, 1], text_mask, implementation)
        out = output_projection(c, self.dtype)(out).reshape(x.shape)
        return constrain_video(x + out)


def valid_tokens_first(text: jax.Array, text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reorder each caption's tokens ``text`` [B, S, D] so that its valid ones (``text_mask``
    [B, S]) come first, in their own order.

    Cross-attention and the pooled text embedding ignore the order of the tokens, so this
    changes no output; it lets :func:`attend_text` give cuDNN the mask as a key length per
    caption, whatever order the caller's mask has.
    """
    order = jnp.argsort(~text_mask, axis=-1, stable=True)
    reordered = jnp.take_along_axis(text, order[:, :, None], axis=1)
    return reordered, jnp.take_along_axis(text_mask, order, axis=1)


def attend_text(
    q: jax.Array, k: jax.Array, v: jax.Array, text_mask: jax.Array, implementation: str | None
) -> jax.Array:
    """Queries [B, L, heads, d] attend to the valid tokens of keys and values [B, S, heads, d]
    (``text_mask`` [B, S], True: valid) through ``jax.nn.dot_product_attention``.

    cuDNN's kernel takes the mask as a key length per caption, and so needs the valid tokens
    first (:func:`valid_tokens_first`; ``VideoUNet`` puts them there when cuDNN is its
    kernel). Given as a mask, it would be a [B, 1, L, S] bias made in a pass of its own, with
    a gradient the kernel writes and XLA then sums over the heads.

    A caption masked whole (the null text of classifier-free guidance) gets the mean of its
    values, with no gradient to its q and k, whatever the kernel. XLA's kernel gives that by
    selecting one logit for every masked key. cuDNN's, with every key masked, computed NaN in
    its backward pass (the exponential of -inf less -inf), so it is given such a caption at
    full length with its keys zeroed: every logit is then 0, the softmax uniform, and the
    gradients of q and k are zero. (Replacing cuDNN's output by the mean instead cost a pass
    over the output and one over its gradient: 0.7 ms of an H200's bench-base-train step,
    docs/PERFORMANCE.md.)
    """
    if implementation != "cudnn":
        mask = text_mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    lengths = jnp.sum(text_mask, axis=-1, dtype=jnp.int32)
    null = lengths == 0
    k = jnp.where(null[:, None, None, None], jnp.zeros_like(k), k)
    lengths = jnp.where(null, k.shape[1], lengths)
    return jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
    )

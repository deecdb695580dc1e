"""Building blocks of the Video U-Net: per-frame convolutions and norms, residual blocks,
resampling, and the temporal convolution.

The norm (with its FiLM modulation and SiLU) has a hand-written gradient and the upsampling
convolution never builds the upsampled frames: both are memory-traffic and FLOP savings that
leave the computed function unchanged.

Activations are channels-last videos ``[batch, frames, height, width, channels]``. Spatial
operations treat every frame as an independent image; the temporal convolution mixes frames at
each spatial position. Parameters are float32 with logical axis names; compute runs in ``dtype``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

VIDEO_AXES = ("batch", "frames", "height", "width", "channels")


def partitioned(init, names: Sequence[str | None]):
    """An initializer whose parameter carries the logical axis ``names``.

    ``rules=()``: no sharding constraint at init (nn.DenseGeneral builds multi-axis kernels
    flat, then reshapes them); the trainer places parameters by their names.
    """
    return nn.with_logical_partitioning(init, tuple(names), rules=())


def kernel_init(zero: bool = False, *, in_axis: int = -2, out_axis: int | tuple[int, ...] = -1):
    """LeCun-normal kernels (fan-in: every axis but ``out_axis``), or zeros for layers that
    must start as a no-op."""
    if zero:
        return nn.initializers.zeros_init()
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis
    )


def dense(
    features: int,
    dtype: jnp.dtype,
    *,
    zero_init: bool = False,
    names: tuple[str | None, str | None] = ("embed", "mlp"),
    name: str | None = None,
) -> nn.Dense:
    """A dense layer with float32 parameters named by logical axes."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init(zero_init), names),
        bias_init=partitioned(nn.initializers.zeros_init(), names[1:]),
        name=name,
    )


def conv(
    features: int,
    kernel_size: tuple[int, int],
    dtype: jnp.dtype,
    *,
    strides: int = 1,
    zero_init: bool = False,
    names: tuple[str | None, str | None] = ("embed", "mlp"),
    name: str | None = None,
) -> Conv:
    """A 2-D convolution over the two axes before channels (leading axes are batch)."""
    return Conv(features, tuple(kernel_size), dtype, strides, zero_init, tuple(names), name=name)


class Conv(nn.Module):
    """``nn.Conv`` (SAME padding) with its kernel stored output-channels first: [O, H, W, I].

    That is the layout cuDNN's channels-last convolutions take and give their kernel gradient
    in; with ``nn.Conv``'s [H, W, I, O] the update of every kernel read its gradient transposed
    (on an H200 about 4 ms of a 105 ms bench-base-train step, docs/PERFORMANCE.md). The product
    itself is written on the kernel viewed [H, W, I, O]: on a GPU that view is free (XLA gives
    the convolution the stored layout), and on the CPU, whose convolutions take [H, W, I, O],
    sampling stays fast (the bundled cascade sampled 2x slower with [O, H, W, I] dimension
    numbers). ``names``: the logical axes of (input, output) channels.
    """

    features: int
    kernel_size: tuple[int, int]
    dtype: jnp.dtype
    strides: int = 1
    zero_init: bool = False
    names: tuple[str | None, str | None] = ("embed", "mlp")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        *lead, height, width, channels = x.shape
        in_axis, out_axis = self.names
        kernel = self.param(
            "kernel",
            partitioned(_ohwi_init(self.zero_init), (out_axis, None, None, in_axis)),
            (self.features, *self.kernel_size, channels),
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros_init(), self.names[1:]), (self.features,)
        )
        y = jax.lax.conv_general_dilated(
            x.reshape(-1, height, width, channels).astype(self.dtype),
            jnp.transpose(kernel, (1, 2, 3, 0)).astype(self.dtype),
            window_strides=(self.strides, self.strides),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + bias.astype(self.dtype)
        return y.reshape(*lead, *y.shape[1:])


def _ohwi_init(zero: bool = False):
    """:func:`kernel_init` for an [O, H, W, I] kernel."""
    return kernel_init(zero, in_axis=-1, out_axis=0)


def constrain_video(x: jax.Array) -> jax.Array:
    """Annotate a video activation with its logical axes (a no-op without sharding rules)."""
    return nn.with_logical_constraint(x, VIDEO_AXES)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame (never across frames), optionally FiLM-modulated
    and followed by SiLU (``silu``), in one fused pass (see :func:`frame_group_norm`).

    Per-frame statistics keep image frames packed into a video batch independent of the video
    frames. Statistics are float32 whatever the compute dtype. ``x`` may be a tuple of parts
    whose channels, concatenated, are the ones normalised (a U-Net skip connection beside its
    input): only the output holds them together.
    """

    groups: int
    dtype: jnp.dtype
    epsilon: float = 1e-5
    silu: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array | Sequence[jax.Array],
        scale_shift: tuple[jax.Array, jax.Array] | None = None,
    ):
        parts = _channel_parts(x)
        channels = sum(part.shape[-1] for part in parts)
        gamma = self.param("scale", partitioned(nn.initializers.ones_init(), (None,)), (channels,))
        beta = self.param("bias", partitioned(nn.initializers.zeros_init(), (None,)), (channels,))
        film = None if scale_shift is None else tuple(scale_shift)
        groups = min(self.groups, channels)
        return frame_group_norm(
            parts, gamma, beta, film, groups, self.epsilon, self.silu, jnp.dtype(self.dtype)
        )


def _channel_parts(x: jax.Array | Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """An array, or parts to concatenate along channels, as a tuple of parts."""
    return (x,) if isinstance(x, jax.Array) else tuple(x)


Film = tuple[jax.Array, jax.Array] | None

# The name of the norms' per-frame statistics, for remat policies: [B, T, groups] values whose
# recomputation is a full pass over the activation.
NORM_STATISTICS = "norm_statistics"


def frame_group_norm(
    x: jax.Array | Sequence[jax.Array],
    gamma: jax.Array,
    beta: jax.Array,
    film: Film,
    groups: int,
    epsilon: float,
    silu: bool,
    dtype: jnp.dtype,
) -> jax.Array:
    """``act((norm(x) * gamma + beta) * (1 + scale) + shift)`` in ``dtype``, per frame.

    ``x`` [B, T, ..., C], or a tuple of parts [B, T, ..., C_i] that are concatenated along
    channels: each part is read where it lies (a group may span two parts) and the
    concatenation is written only as the output, its gradient returned per part. Mean and
    variance over every axis after the frame axis and the C / ``groups`` channels of a group,
    in float32 and in one pass (sum and sum of squares). ``film`` is None or (scale, shift),
    each [B, C]; ``act`` is SiLU if ``silu``, else identity.

    The custom gradient keeps only the input and the per-frame statistics for the backward
    pass and reduces there over pixels once (two per-channel sums); the normalised values are
    recomputed elementwise. Memory-bound norms are the largest non-matmul cost of the U-Net,
    and letting autodiff differentiate the forward formula costs several full-size reductions
    and float32 intermediates per norm. Reverse mode only (no ``jax.jvp``).
    """
    return _frame_group_norm(_channel_parts(x), gamma, beta, film, groups, epsilon, silu, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _frame_group_norm(parts, gamma, beta, film, groups, epsilon, silu, dtype) -> jax.Array:
    return _norm_forward(parts, gamma, beta, film, groups, epsilon, silu, dtype)[0]


def _norm_forward(parts, gamma, beta, film, groups, epsilon, silu, dtype):
    views = [_pixels_view(x).astype(jnp.float32) for x in parts]
    # Two per-channel sums over the pixels (one pass over each part), then tiny sums over
    # each group.
    moments = _channels(
        [jnp.stack([jnp.sum(v, axis=2), jnp.sum(jnp.square(v), axis=2)]) for v in views]
    )
    mean, mean_square = _group_sum(moments, groups) / _group_size(views[0], moments, groups)
    inv_std = jax.lax.rsqrt(jnp.maximum(mean_square - jnp.square(mean), 0.0) + epsilon)
    mean, inv_std = (checkpoint_name(v, NORM_STATISTICS) for v in (mean, inv_std))
    outs = []
    for view, slot in zip(views, _channel_slots(parts)):
        y, _ = _modulated(view, slot, mean, inv_std, gamma, beta, film)
        outs.append((nn.silu(y) if silu else y).astype(dtype))
    out = _channels(outs).reshape(*parts[0].shape[:-1], moments.shape[-1])
    return out, (parts, mean, inv_std, gamma, beta, film)


def _norm_backward(groups, epsilon, silu, dtype, residuals, grad_out):
    del epsilon, dtype
    parts, mean, inv_std, gamma, beta, film = residuals
    grad_view = _pixels_view(grad_out).astype(jnp.float32)
    slots = _channel_slots(parts)
    terms = []  # per part: (normed, grad_y)
    for x, slot in zip(parts, slots):
        y, normed = _modulated(
            _pixels_view(x).astype(jnp.float32), slot, mean, inv_std, gamma, beta, film
        )
        grad_y = grad_view[..., slot]
        if silu:
            sigmoid = jax.nn.sigmoid(y)
            grad_y = grad_y * sigmoid * (1.0 + y * (1.0 - sigmoid))
        terms.append((normed, grad_y))
    # The only full-size reductions: per-channel sums over the pixels (one pass).
    sums = _channels([jnp.stack([jnp.sum(g, axis=2), jnp.sum(g * n, axis=2)]) for n, g in terms])

    gain = _film_gain(film)  # d y / d (normed * gamma + beta): [B, 1, C], or 1.0
    slope = gamma * gain  # d y / d normed
    size = _group_size(grad_view, sums, groups)
    mean_grad, mean_grad_normed = _group_sum(slope * sums, groups) / size
    channels = sums.shape[-1]
    per_channel = [_per_channel(v, channels) for v in (inv_std, mean_grad, mean_grad_normed)]
    slope = _per_pixel(slope)
    grad_parts = []
    for x, slot, (normed, grad_y) in zip(parts, slots, terms):
        # The part's channels of the per-channel terms.
        inv, mean_grad_c, mean_grad_normed_c = (v[..., slot] for v in per_channel)
        grad_x = inv * (grad_y * slope[..., slot] - mean_grad_c - normed * mean_grad_normed_c)
        grad_parts.append(grad_x.astype(x.dtype).reshape(x.shape))
    grad_beta, grad_gamma = jnp.sum(gain * sums, axis=(1, 2))
    grads = (tuple(grad_parts), grad_gamma.astype(gamma.dtype), grad_beta.astype(beta.dtype))
    if film is None:
        return (*grads, None)
    grad_shift, grad_normed = jnp.sum(sums, axis=2)  # per example, [B, C]
    grad_scale = gamma * grad_normed + beta * grad_shift
    return (*grads, (grad_scale.astype(film[0].dtype), grad_shift.astype(film[1].dtype)))


_frame_group_norm.defvjp(_norm_forward, _norm_backward)


def _modulated(pixels, slot, mean, inv_std, gamma, beta, film) -> tuple[jax.Array, jax.Array]:
    """(y, normed) of [B, T, P, C_i] ``pixels``, the channels ``slot`` of the norm's C:
    normed = (x - mean) / std, y before the activation."""
    channels = gamma.shape[-1]
    mean, inv_std = (_per_channel(v, channels)[..., slot] for v in (mean, inv_std))
    normed = (pixels - mean) * inv_std
    y = normed * gamma[slot] + beta[slot]
    if film is not None:
        scale, shift = (_per_pixel(v.astype(jnp.float32)[:, None, slot]) for v in film)
        y = y * (1.0 + scale) + shift
    return y, normed


def _film_gain(film: Film) -> jax.Array | float:
    """1 + scale as [B, 1, C] (1.0 without FiLM)."""
    return 1.0 if film is None else 1.0 + film[0].astype(jnp.float32)[:, None, :]


def _channel_slots(parts: Sequence[jax.Array]) -> list[slice]:
    """Each part's slice of the concatenated channels."""
    ends = np.cumsum([part.shape[-1] for part in parts])
    return [slice(int(end) - part.shape[-1], int(end)) for part, end in zip(parts, ends)]


def _channels(parts: Sequence[jax.Array]) -> jax.Array:
    """Concatenate along channels (the last axis); one part is returned as it is."""
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _pixels_view(x: jax.Array) -> jax.Array:
    """[B, T, ..., C] -> [B, T, P, C]: a free reshape putting every pixel of a frame on one axis."""
    return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])


def _group_size(pixels: jax.Array, per_channel: jax.Array, groups: int) -> int:
    """Number of values behind each statistic: the pixels of ``pixels`` [B, T, P, ...] times
    the channels of a group of ``per_channel`` [..., C]."""
    return pixels.shape[2] * (per_channel.shape[-1] // groups)


def _group_sum(per_channel: jax.Array, groups: int) -> jax.Array:
    """[..., C] -> [..., groups]: sums over the channels of each group."""
    return per_channel.reshape(*per_channel.shape[:-1], groups, -1).sum(axis=-1)


def _per_channel(per_group: jax.Array, channels: int) -> jax.Array:
    """[B, T, groups] -> [B, T, 1, C]: each group's value on its channels, for every pixel."""
    return _per_pixel(jnp.repeat(per_group, channels // per_group.shape[-1], axis=-1))


def _per_pixel(v: jax.Array) -> jax.Array:
    """[..., T, C] -> [..., T, 1, C], to broadcast over the pixel axis of [B, T, P, C]."""
    return v[..., None, :] if jnp.ndim(v) >= 2 else v


# The name of a residual block's first norm output where the block joins a skip connection
# (a decoder block), for remat policies: twice the channels of the block's output, and read by
# the first convolution's kernel gradient, which would otherwise normalise the input again.
JOINED_INPUT = "res_joined_input"


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, FiLM by the noise embedding, per frame; zero-init last conv."""

    features: int
    groups: int
    dtype: jnp.dtype
    dropout: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        """x [B,T,H,W,C_in], emb [B,E] (already SiLU-activated) -> [B,T,H,W,features].

        ``skip`` (a U-Net skip connection) joins ``x`` along channels. The two are never
        concatenated: the first norm and the skip projection read each where it lies, and
        only the norm's output holds their channels together.
        """
        parts = (x,) if skip is None else (x, skip)
        h = FrameGroupNorm(self.groups, self.dtype, silu=True, name="norm_in")(parts)
        if skip is not None:
            h = checkpoint_name(h, JOINED_INPUT)
        h = conv(self.features, (3, 3), self.dtype, name="conv_in")(h)
        scale, shift = jnp.split(dense(2 * self.features, self.dtype, name="film")(emb), 2, -1)
        h = FrameGroupNorm(self.groups, self.dtype, silu=True, name="norm_out")(h, (scale, shift))
        h = nn.Dropout(self.dropout, deterministic=not self.train)(h)
        h = conv(self.features, (3, 3), self.dtype, zero_init=True, name="conv_out")(h)
        if sum(part.shape[-1] for part in parts) != self.features:
            x = PartsDense(self.features, self.dtype, name="skip")(parts)
        else:
            x = _channels(parts)
        return constrain_video(x.astype(self.dtype) + h)


class PartsDense(nn.Module):
    """:func:`dense` over channel parts that are never concatenated: each part times its rows
    of the kernel, summed (the parameters of ``dense`` over the concatenation)."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, parts: Sequence[jax.Array]) -> jax.Array:
        channels = sum(part.shape[-1] for part in parts)
        kernel = self.param(
            "kernel", partitioned(kernel_init(), ("embed", "mlp")), (channels, self.features)
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros_init(), ("mlp",)), (self.features,)
        )
        kernel = kernel.astype(self.dtype)
        products = [
            jnp.dot(part.astype(self.dtype), kernel[slot])
            for part, slot in zip(parts, _channel_slots(parts))
        ]
        return sum(products[1:], products[0]) + bias.astype(self.dtype)


class Downsample(nn.Module):
    """Halve height and width of every frame with a stride-2 3x3 convolution."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(self.features, (3, 3), self.dtype, strides=2, name="conv")(x)


class Upsample(nn.Module):
    """Double height and width of every frame (nearest neighbour), then a 3x3 convolution.

    Computed without materialising the upsampled frames (:class:`SubpixelConv`), at less than
    half the multiply-adds; the parameters are those of the plain convolution ('conv').
    """

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return SubpixelConv(self.features, self.dtype, name="conv")(x)


# The 3 taps of a kernel over a 2x nearest-upsampled axis, summed onto the 2 low-resolution
# neighbours (tap 0: before, 1: after, in the input padded by one) that an output at an even
# (phase 0) or odd (phase 1) position reads: _PHASE_TAPS[phase][tap] lists the kernel's taps.
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def _fold_taps(kernel: jax.Array, axis: int) -> jax.Array:
    """A kernel's 3 taps on ``axis`` -> [2 phases, 2 taps] there, each the sum of the taps in
    :data:`_PHASE_TAPS`: elementwise adds, which XLA fuses (an einsum with a 0/1 fold matrix
    ran as slow matmuls: 0.4 ms a bench-base-train step on an H200)."""
    taps = [jnp.take(kernel, i, axis=axis) for i in range(3)]

    def summed(tap_set: tuple[int, ...]) -> jax.Array:
        return sum((taps[i] for i in tap_set[1:]), taps[tap_set[0]])

    phases = [jnp.stack([summed(s) for s in phase], axis=axis) for phase in _PHASE_TAPS]
    return jnp.stack(phases, axis=axis)


class SubpixelConv(nn.Module):
    """``conv3x3(nearest_upsample_2x(x))`` for ``x`` [..., H, W, C] -> [..., 2H, 2W, features].

    Each output phase (even/odd row x even/odd column) of that convolution is a 2x2
    convolution of the low-resolution input with taps summed from the 3x3 kernel. One 2x2
    convolution over the input padded by 1, with the 4 phases stacked as output channels,
    computes them all: 16 instead of 36 multiply-adds per input pixel and channel pair
    (times (H+1)(W+1)/HW), and the 4x larger upsampled input is never written. The phases
    are then interleaved. Parameters: 'kernel' [features, 3, 3, C] and 'bias', as :class:`Conv`.
    """

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        *lead, height, width, channels = x.shape
        kernel = self.param(
            "kernel",
            partitioned(_ohwi_init(), ("mlp", None, None, "embed")),
            (self.features, 3, 3, channels),
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros_init(), ("mlp",)), (self.features,)
        )
        # [O, 3, 3, I] -> [O, a, u, b, v, I] (row phase a, row tap u, column phase b, tap v)
        # -> [u, v, I, (a, b, O)]: one 2x2 kernel with the 4 phases as output channels.
        # Folded in float32 whatever the kernel's dtype (cast_kernels may give bfloat16).
        phase_kernel = _fold_taps(_fold_taps(kernel.astype(jnp.float32), 1), 3)
        phase_kernel = jnp.transpose(phase_kernel, (2, 4, 5, 1, 3, 0))
        phase_kernel = phase_kernel.reshape(2, 2, channels, 4 * self.features)
        frames = x.reshape(-1, height, width, channels).astype(self.dtype)
        padded = jnp.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = _conv_2x2(padded, phase_kernel.astype(self.dtype))
        y = y.reshape(-1, height + 1, width + 1, 2, 2, self.features)
        rows = [
            jnp.stack([y[:, a : a + height, b : b + width, a, b] for b in (0, 1)], axis=3)
            for a in (0, 1)
        ]
        out = jnp.stack(rows, axis=2).reshape(*lead, 2 * height, 2 * width, self.features)
        return out + bias.astype(self.dtype)


def _conv_2x2_valid(padded: jax.Array, kernel: jax.Array) -> jax.Array:
    """[N, H, W, C] * [2, 2, C, O] -> [N, H-1, W-1, O]: a VALID 2x2 convolution."""
    return jax.lax.conv_general_dilated(
        padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def _conv_2x2(padded: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`_conv_2x2_valid` whose kernel gradient is four matmuls, one a tap, each summing
    (shifted input) x (output gradient) over frames and pixels.

    As a convolution, XLA:GPU takes that gradient as a forward convolution over transposed
    copies of both operands: on an H200, 1.9 ms a bench-base-train step for the three
    upsamplings' kernel gradients and 0.8 ms for the copies; as matmuls the step took 1.1 ms
    less, for 0.38 GiB more at its peak (docs/PERFORMANCE.md). On XLA:CPU the padded input
    and VALID window keep it fast (a 2x2 window with SAME-style padding had no fast path there).
    """
    return _conv_2x2_valid(padded, kernel)


def _conv_2x2_forward(padded, kernel):
    return _conv_2x2_valid(padded, kernel), (padded, kernel)


def _conv_2x2_backward(residuals, grad_out):
    padded, kernel = residuals
    _, input_vjp = jax.vjp(lambda p: _conv_2x2_valid(p, kernel), padded)
    (grad_padded,) = input_vjp(grad_out)
    height, width = grad_out.shape[1:3]
    grad_kernel = [
        [
            jnp.einsum(
                "nhwc,nhwo->co",
                padded[:, u : u + height, v : v + width],
                grad_out,
                preferred_element_type=jnp.float32,
            )
            for v in (0, 1)
        ]
        for u in (0, 1)
    ]
    return grad_padded, jnp.asarray(grad_kernel).astype(kernel.dtype)


_conv_2x2.defvjp(_conv_2x2_forward, _conv_2x2_backward)


class TemporalConv(nn.Module):
    """Residual kernel-3 convolution over frames at every pixel, zero-initialised (identity).

    The video is viewed as ``[B, T, H*W, C]`` (a free reshape) and convolved with a (3, 1)
    kernel, so no transpose is needed. Image frames (``video_frames`` False) are zeroed at the
    input, so video frames never see them, and their residual is bypassed.
    """

    kernel_size: ClassVar[int] = 3  # frames: t - 1, t, t + 1

    groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, video_frames: jax.Array | None = None) -> jax.Array:
        b, t, height, width, c = x.shape
        h = FrameGroupNorm(self.groups, self.dtype, silu=True, name="norm")(x)
        if video_frames is not None:
            h = h * frame_gate(video_frames, h.dtype)
        h = h.reshape(b, t, height * width, c)
        h = conv(c, (self.kernel_size, 1), self.dtype, zero_init=True, name="conv")(h)
        h = h.reshape(b, t, height, width, c)
        if video_frames is not None:
            h = h * frame_gate(video_frames, h.dtype)
        return constrain_video(x + h)


def frame_gate(video_frames: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """[B, T] bool (True = video frame) -> [B, T, 1, 1, 1] multiplier in ``dtype``."""
    return video_frames.astype(dtype)[:, :, None, None, None]

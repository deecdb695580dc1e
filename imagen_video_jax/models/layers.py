"""Building blocks of the Video U-Net: per-frame convolutions and norms, residual blocks,
resampling, and the temporal convolution.

Activations are channels-last videos ``[batch, frames, height, width, channels]``. Spatial
operations treat every frame as an independent image; the temporal convolution mixes frames at
each spatial position. Parameters are float32 with logical axis names; compute runs in ``dtype``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VIDEO_AXES = ("batch", "frames", "height", "width", "channels")


def partitioned(init, names: Sequence[str | None]):
    """An initializer whose parameter carries the logical axis ``names``.

    ``rules=()``: no sharding constraint at init (nn.DenseGeneral builds multi-axis kernels
    flat, then reshapes them); the trainer places parameters by their names.
    """
    return nn.with_logical_partitioning(init, tuple(names), rules=())


def kernel_init(zero: bool = False):
    """LeCun-normal kernels, or zeros for layers that must start as a no-op."""
    return (
        nn.initializers.zeros_init()
        if zero
        else nn.initializers.variance_scaling(1.0, "fan_in", "normal")
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
) -> nn.Conv:
    """A 2-D convolution over the two axes before channels (leading axes are batch)."""
    return nn.Conv(
        features,
        kernel_size,
        strides=strides,
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init(zero_init), (None, None, *names)),
        bias_init=partitioned(nn.initializers.zeros_init(), names[1:]),
        name=name,
    )


def constrain_video(x: jax.Array) -> jax.Array:
    """Annotate a video activation with its logical axes (a no-op without sharding rules)."""
    return nn.with_logical_constraint(x, VIDEO_AXES)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame (never across frames), optionally FiLM-modulated.

    Per-frame statistics keep image frames packed into a video batch independent of the video
    frames. Statistics are float32 whatever the compute dtype.
    """

    groups: int
    dtype: jnp.dtype
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, scale_shift: tuple[jax.Array, jax.Array] | None = None):
        channels = x.shape[-1]
        groups = min(self.groups, channels)
        grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, channels // groups)
        axes = tuple(range(2, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.maximum(jnp.mean(jnp.square(grouped), axis=axes, keepdims=True) - mean**2, 0.0)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        gamma = self.param("scale", partitioned(nn.initializers.ones_init(), (None,)), (channels,))
        beta = self.param("bias", partitioned(nn.initializers.zeros_init(), (None,)), (channels,))
        y = y * gamma + beta
        if scale_shift is not None:
            scale, shift = (_per_example(s, y.ndim) for s in scale_shift)
            y = y * (1.0 + scale) + shift
        return y.astype(self.dtype)


def _per_example(v: jax.Array, ndim: int) -> jax.Array:
    """[B, C] -> [B, 1, ..., 1, C] in float32, to broadcast over a video's frames and pixels."""
    return v.astype(jnp.float32).reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, FiLM by the noise embedding, per frame; zero-init last conv."""

    features: int
    groups: int
    dtype: jnp.dtype
    dropout: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """x [B,T,H,W,C_in], emb [B,E] (already SiLU-activated) -> [B,T,H,W,features]."""
        h = nn.silu(FrameGroupNorm(self.groups, self.dtype, name="norm_in")(x))
        h = conv(self.features, (3, 3), self.dtype, name="conv_in")(h)
        scale, shift = jnp.split(dense(2 * self.features, self.dtype, name="film")(emb), 2, -1)
        h = nn.silu(FrameGroupNorm(self.groups, self.dtype, name="norm_out")(h, (scale, shift)))
        h = nn.Dropout(self.dropout, deterministic=not self.train)(h)
        h = conv(self.features, (3, 3), self.dtype, zero_init=True, name="conv_out")(h)
        if x.shape[-1] != self.features:
            x = dense(self.features, self.dtype, name="skip")(x)
        return constrain_video(x.astype(self.dtype) + h)


class Downsample(nn.Module):
    """Halve height and width of every frame with a stride-2 3x3 convolution."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(self.features, (3, 3), self.dtype, strides=2, name="conv")(x)


class Upsample(nn.Module):
    """Double height and width of every frame (nearest neighbour), then a 3x3 convolution."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, :, None, :, None, :], (b, t, h, 2, w, 2, c))
        x = x.reshape(b, t, 2 * h, 2 * w, c)
        return conv(self.features, (3, 3), self.dtype, name="conv")(x)


class TemporalConv(nn.Module):
    """Residual kernel-3 convolution over frames at every pixel, zero-initialised (identity).

    The video is viewed as ``[B, T, H*W, C]`` (a free reshape) and convolved with a (3, 1)
    kernel, so no transpose is needed. Image frames (``video_frames`` False) are zeroed at the
    input, so video frames never see them, and their residual is bypassed.
    """

    groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, video_frames: jax.Array | None = None) -> jax.Array:
        b, t, height, width, c = x.shape
        h = nn.silu(FrameGroupNorm(self.groups, self.dtype, name="norm")(x))
        if video_frames is not None:
            h = h * frame_gate(video_frames, h.dtype)
        h = h.reshape(b, t, height * width, c)
        h = conv(c, (3, 1), self.dtype, zero_init=True, name="conv")(h)
        h = h.reshape(b, t, height, width, c)
        if video_frames is not None:
            h = h * frame_gate(video_frames, h.dtype)
        return constrain_video(x + h)


def frame_gate(video_frames: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """[B, T] bool (True = video frame) -> [B, T, 1, 1, 1] multiplier in ``dtype``."""
    return video_frames.astype(dtype)[:, :, None, None, None]

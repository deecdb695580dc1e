"""T-KLVAE (NUWA-XL): an image KL-VAE extended to video, in whose latent space MTD diffuses.

The image KL-VAE is a convolutional encoder/decoder with ``len(channel_mult) - 1`` stride-2
downsamplings and a diagonal Gaussian posterior over ``latent_channels`` channels, trained with
a reconstruction loss plus a KL term. The video version (``temporal=True``) adds, after every
residual block, a kernel-3 temporal convolution initialised to the identity (centre tap = I,
other taps 0) and, in the middle blocks, temporal self-attention with a zero-initialised output
projection. Every other layer works on each frame alone, so at initialisation the T-KLVAE is
exactly the image KL-VAE applied frame by frame, and :func:`inflate_params` turns trained image
weights into video weights that start there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from imagen_video_jax.models.attention import SpatialAttention, TemporalAttention
from imagen_video_jax.models.layers import (
    Downsample,
    FrameGroupNorm,
    Upsample,
    constrain_video,
    conv,
    dense,
    partitioned,
)

LOGVAR_RANGE = (-30.0, 20.0)  # posterior log-variance is clipped here (numerical safety)


def identity_center_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
    """Kernel [taps, 1, C, C] whose centre tap is the identity and other taps are zero."""
    del key
    taps, _, c_in, c_out = shape
    if c_in != c_out:
        raise ValueError(f"an identity kernel needs equal in/out channels; got {c_in}, {c_out}")
    return jnp.zeros(shape, dtype).at[taps // 2, 0].set(jnp.eye(c_in, dtype=dtype))


class IdentityTemporalConv(nn.Module):
    """A kernel-3 convolution over frames at every pixel, initialised to the identity.

    Direct (not residual): with the centre tap I and zero side taps the output equals the input
    exactly, and training moves the side taps away from zero.
    """

    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, height, width, c = x.shape
        h = x.reshape(b, t, height * width, c)
        h = nn.Conv(
            c,
            (3, 1),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=partitioned(identity_center_init, (None, None, "embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros_init(), ("mlp",)),
            name="conv",
        )(h)
        return constrain_video(h.reshape(b, t, height, width, c))


class VAEResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a residual connection, each frame alone."""

    features: int
    groups: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(FrameGroupNorm(self.groups, self.dtype, name="norm_in")(x))
        h = conv(self.features, (3, 3), self.dtype, name="conv_in")(h)
        h = nn.silu(FrameGroupNorm(self.groups, self.dtype, name="norm_out")(h))
        h = conv(self.features, (3, 3), self.dtype, name="conv_out")(h)
        if x.shape[-1] != self.features:
            x = dense(self.features, self.dtype, name="skip")(x)
        return constrain_video(x.astype(self.dtype) + h)


@dataclasses.dataclass(frozen=True)
class _Layers:
    """Layer settings shared by the encoder and the decoder."""

    groups: int
    head_dim: int
    temporal: bool
    temporal_max_distance: int
    dtype: Any


class _Stack(nn.Module):
    """Residual block(s) followed, in the video VAE, by the identity temporal convolution."""

    features: int
    count: int
    layers: _Layers

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        o = self.layers
        for i in range(self.count):
            h = VAEResBlock(self.features, o.groups, o.dtype, name=f"res_{i}")(h)
            if o.temporal:
                h = IdentityTemporalConv(o.dtype, name=f"temporal_conv_{i}")(h)
        return h


class _Middle(nn.Module):
    """Residual block, spatial attention, [temporal attention], residual block."""

    layers: _Layers

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        o = self.layers
        features = h.shape[-1]
        h = VAEResBlock(features, o.groups, o.dtype, name="res_in")(h)
        h = SpatialAttention(o.head_dim, o.groups, o.dtype, name="spatial_attention")(h)
        if o.temporal:
            h = TemporalAttention(
                o.head_dim, o.groups, o.dtype, o.temporal_max_distance, name="temporal_attention"
            )(h)
        return VAEResBlock(features, o.groups, o.dtype, name="res_out")(h)


class VAEEncoder(nn.Module):
    """Video -> (mean, logvar) of the latents; see :class:`TKLVAE`."""

    latent_channels: int
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    layers: _Layers

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        o = self.layers
        h = conv(self.channels, (3, 3), o.dtype, names=(None, "mlp"), name="conv_in")(
            x.astype(o.dtype)
        )
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            h = _Stack(self.channels * mult, self.num_res_blocks, o, name=f"level_{level}")(h)
            if level < last:
                h = Downsample(h.shape[-1], o.dtype, name=f"level_{level}_down")(h)
        h = _Middle(o, name="middle")(h)
        h = nn.silu(FrameGroupNorm(o.groups, o.dtype, name="norm_out")(h))
        moments = conv(2 * self.latent_channels, (3, 3), o.dtype, name="conv_out")(h)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class VAEDecoder(nn.Module):
    """Latents -> video; the encoder's mirror with one more residual block per level."""

    out_channels: int
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    layers: _Layers

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        o = self.layers
        top = self.channels * self.channel_mult[-1]
        h = conv(top, (3, 3), o.dtype, name="conv_in")(z.astype(o.dtype))
        h = _Middle(o, name="middle")(h)
        for level in reversed(range(len(self.channel_mult))):
            features = self.channels * self.channel_mult[level]
            h = _Stack(features, self.num_res_blocks + 1, o, name=f"level_{level}")(h)
            if level > 0:
                h = Upsample(features, o.dtype, name=f"level_{level}_up")(h)
        h = nn.silu(FrameGroupNorm(o.groups, o.dtype, name="norm_out")(h))
        out = conv(self.out_channels, (3, 3), o.dtype, names=("embed", None), name="conv_out")(h)
        return out.astype(jnp.float32)


class TKLVAE(nn.Module):
    """Video (``temporal=True``) or image (``temporal=False``) KL-VAE on [B, T, H, W, C].

    ``encode(x) -> (mean, logvar)`` of the latent [B, T, H/f, W/f, latent_channels] with
    f = 2 ** (len(channel_mult) - 1); ``decode(z) -> x``; calling the module returns
    ``(reconstruction, mean, logvar)``, decoding a posterior sample when ``key`` is given and
    the mean otherwise. Outputs are float32.
    """

    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    norm_groups: int = 16
    head_dim: int = 32
    temporal: bool = True
    temporal_max_distance: int = 16
    dtype: str = "float32"

    @classmethod
    def from_config(cls, vae_config: Mapping[str, Any], **overrides: Any) -> TKLVAE:
        """Build from ``config.vae`` (ConfigDict or dict); unknown keys raise ValueError."""
        values = dict(vae_config.to_dict() if hasattr(vae_config, "to_dict") else vae_config)
        values.update(overrides)
        fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown TKLVAE config field(s) {unknown}; expected {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def setup(self):
        layers = _Layers(
            self.norm_groups,
            self.head_dim,
            self.temporal,
            self.temporal_max_distance,
            jnp.dtype(self.dtype),
        )
        self.encoder = VAEEncoder(
            self.latent_channels, self.channels, self.channel_mult, self.num_res_blocks, layers
        )
        self.decoder = VAEDecoder(
            self.in_channels, self.channels, self.channel_mult, self.num_res_blocks, layers
        )

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance (clipped to LOGVAR_RANGE) of the latents, float32."""
        _check_video(x, self.in_channels, "input")
        factor = self.downsample_factor
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"TKLVAE input: height and width must be multiples of {factor}; "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """Video [B, T, H, W, in_channels] (float32) from latents."""
        _check_video(z, self.latent_channels, "latent")
        return self.decoder(z)

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encode(x)
        z = mean if key is None else sample_posterior(mean, logvar, key)
        return self.decode(z), mean, logvar


def _check_video(x: jax.Array, channels: int, name: str) -> None:
    if x.ndim != 5 or x.shape[-1] != channels:
        raise ValueError(
            f"TKLVAE {name}: expected [batch, frames, height, width, {channels}]; "
            f"got shape {tuple(x.shape)}"
        )


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """z ~ N(mean, exp(logvar)) by reparameterisation."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Per-example KL(N(mean, exp(logvar)) || N(0, I)), averaged over latent elements: [B]."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.mean(kl, axis=tuple(range(1, kl.ndim)))


def reconstruction_loss(x: jax.Array, reconstruction: jax.Array) -> jax.Array:
    """Per-example mean absolute error over pixels: [B]."""
    error = jnp.abs(reconstruction.astype(jnp.float32) - x.astype(jnp.float32))
    return jnp.mean(error, axis=tuple(range(1, error.ndim)))


def vae_loss(
    x: jax.Array,
    reconstruction: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    kl_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of reconstruction + ``kl_weight`` * KL, and both terms (batch means)."""
    recon = jnp.mean(reconstruction_loss(x, reconstruction))
    kl = jnp.mean(kl_divergence(mean, logvar))
    return recon + kl_weight * kl, {"reconstruction": recon, "kl": kl}


def inflate_params(image_params: Any, video_params: Any) -> Any:
    """Video VAE params whose image layers are ``image_params`` and whose temporal layers are
    those of ``video_params`` (at initialisation: identity), so that the result starts as the
    image VAE applied frame by frame."""
    image_flat = traverse_util.flatten_dict(nn.meta.unbox(image_params))
    video_flat = traverse_util.flatten_dict(nn.meta.unbox(video_params))
    missing = sorted("/".join(k) for k in set(image_flat) - set(video_flat))
    if missing:
        raise ValueError(
            f"image VAE params do not fit the video VAE (configs differ?): {missing[:5]} missing"
        )
    for path, value in image_flat.items():
        if value.shape != video_flat[path].shape:
            raise ValueError(
                f"param {'/'.join(path)}: image shape {value.shape} vs video "
                f"{video_flat[path].shape}"
            )
        video_flat[path] = value
    return traverse_util.unflatten_dict(video_flat)

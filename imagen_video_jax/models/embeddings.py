"""Embeddings of per-example scalars (log-SNR, guidance weight) and of pooled text."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models.layers import dense


def sinusoidal_embedding(
    x: jax.Array, dim: int, min_period: float = 0.1, max_period: float = 100.0
):
    """Sin/cos features of scalars ``x`` [B] -> [B, dim], periods geometric in [min, max].

    The period range suits log-SNR values in [-20, 20] and guidance weights in [0, ~30]: the
    longest period exceeds the whole range, so nearby values stay distinguishable and far ones
    do not alias.
    """
    half = dim // 2
    periods = np.geomspace(min_period, max_period, half)
    angles = x.astype(jnp.float32)[:, None] * (2 * np.pi / periods)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ScalarEmbedding(nn.Module):
    """Sinusoidal features of a per-example scalar through a two-layer MLP -> [B, features].

    ``zero_init`` zeroes the last layer so that adding this embedding changes nothing at
    initialisation (used for the guidance-weight input of distilled students).
    """

    features: int
    frequencies: int
    dtype: jnp.dtype = jnp.float32
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = sinusoidal_embedding(x, self.frequencies)
        h = dense(self.features, self.dtype, name="dense_in")(h)
        h = nn.silu(h)
        return dense(self.features, self.dtype, zero_init=self.zero_init, name="dense_out")(h)


def masked_mean(text: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of the tokens ``text`` [B, L, D] where ``mask`` [B, L]; zeros if none is valid."""
    weights = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(text.astype(jnp.float32) * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

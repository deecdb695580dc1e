"""Pieces shared by the text encoders (T5, BERT): input checks, partitioned inits, attention."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# Logical axis names of the text encoders' parameters (mapped to mesh axes by parallel/): the
# model width is 'embed' like every dense layer's, so large encoders are FSDP-sharded too.
EMBED_TABLE = (None, "embed")
QKV_KERNEL = ("embed", "heads", "kv")
QKV_BIAS = ("heads", "kv")
OUT_KERNEL = ("heads", "kv", "embed")
MLP_IN_KERNEL = ("embed", "mlp")
MLP_OUT_KERNEL = ("mlp", "embed")
VECTOR = (None,)
HIDDEN = ("batch", "length", "text_embed")


def partitioned(init: Initializer, names: tuple[str | None, ...]) -> Initializer:
    """An initializer whose parameter carries logical axis names (``rules=()``: no sharding
    constraint at init, where nn.DenseGeneral holds multi-axis kernels flat)."""
    return nn.with_logical_partitioning(init, names, rules=())


def check_token_inputs(ids: jax.Array, mask: jax.Array) -> None:
    """Token ids must be integer [batch, length] and the mask of the same shape."""
    if ids.ndim != 2:
        raise ValueError(f"token ids must have shape [batch, length]; got shape {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"token ids must be integers; got dtype {ids.dtype}")
    if mask.shape != ids.shape:
        raise ValueError(f"mask must have the ids' shape {ids.shape}; got {mask.shape}")


def key_padding_mask(mask: jax.Array) -> jax.Array:
    """[batch, length] token mask -> boolean [batch, 1, 1, length]: queries see only real keys."""
    return mask.astype(bool)[:, None, None, :]


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Multi-head attention on [batch, length, heads, head_dim] arrays with an additive bias."""
    if bias is not None:
        bias = bias.astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale)

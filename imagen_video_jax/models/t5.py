"""T5 v1.1 encoder (the frozen text encoder of Imagen Video) and Hugging Face weight conversion.

v1.1 differs from the original T5 by a gated-GELU feed-forward layer; like T5 it has pre-norm
RMSNorm without bias, no bias in any dense layer, no embedding scaling, and a relative position
bias computed once (in the first layer's attention) and shared by every layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models.text_layers import (
    EMBED_TABLE,
    HIDDEN,
    MLP_IN_KERNEL,
    MLP_OUT_KERNEL,
    OUT_KERNEL,
    QKV_KERNEL,
    VECTOR,
    attention,
    check_token_inputs,
    key_padding_mask,
    partitioned,
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder (names follow the Hugging Face config.json)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    num_heads: int = 6
    num_layers: int = 8
    d_ff: int = 1024
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: int = 1

    @property
    def width(self) -> int:
        return self.d_model


T5_CONFIGS = {
    "small": T5Config(d_model=512, num_heads=6, num_layers=8, d_ff=1024),
    "base": T5Config(d_model=768, num_heads=12, num_layers=12, d_ff=2048),
    "large": T5Config(d_model=1024, num_heads=16, num_layers=24, d_ff=2816),
    "xl": T5Config(d_model=2048, num_heads=32, num_layers=24, d_ff=5120),
    "xxl": T5Config(d_model=4096, num_heads=64, num_layers=24, d_ff=10240),
}


def t5_config_from_hf(hf_config: Mapping[str, Any]) -> T5Config:
    """A T5Config from a Hugging Face config.json dict; only v1.1 (gated-GELU) encoders."""
    projection = hf_config.get("feed_forward_proj", "relu")
    if projection != "gated-gelu":
        raise ValueError(
            f"only T5 v1.1 checkpoints (feed_forward_proj 'gated-gelu') are supported; "
            f"got feed_forward_proj {projection!r}"
        )
    fields = {f.name for f in dataclasses.fields(T5Config)}
    return T5Config(**{k: v for k, v in hf_config.items() if k in fields})


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets [query, key] of the offsets key - query.

    Half the buckets hold keys before the query, half keys after. In each half, offsets below
    a quarter of the buckets get a bucket each; larger ones share log-spaced buckets up to
    max_distance, beyond which all offsets fall in the last bucket. Computed in float32 like
    the reference implementation so bucket edges agree exactly.
    """
    positions = np.arange(length)
    offset = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(offset)
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
    scaled = log_ratio / np.float32(np.log(max_distance / exact)) * np.float32(half - exact)
    far = np.minimum(exact + scaled.astype(np.int32), half - 1)
    near_or_far = np.where(distance < exact, distance, far)
    return (np.where(offset > 0, half, 0) + near_or_far).astype(np.int32)


class RMSNorm(nn.Module):
    """Scale-only RMS normalisation, computed in float32."""

    epsilon: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", partitioned(nn.initializers.ones, VECTOR), (x.shape[-1],), jnp.float32
        )
        x = x.astype(jnp.float32)
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.epsilon) * scale


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention with an additive position bias (T5 folds 1/sqrt(d) into
    the query initialisation)."""

    config: T5Config
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config

        def heads_projection(name: str, std: float) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                (c.num_heads, c.d_kv),
                use_bias=False,
                dtype=self.dtype,
                kernel_init=partitioned(nn.initializers.normal(std), QKV_KERNEL),
                name=name,
            )

        query = heads_projection("query", (c.d_model * c.d_kv) ** -0.5)(x)
        key = heads_projection("key", c.d_model**-0.5)(x)
        value = heads_projection("value", c.d_model**-0.5)(x)
        mixed = attention(query, key, value, mask, bias=bias, scale=1.0)
        return nn.DenseGeneral(
            c.d_model,
            axis=(-2, -1),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=partitioned(
                nn.initializers.normal((c.num_heads * c.d_kv) ** -0.5), OUT_KERNEL
            ),
            name="out",
        )(mixed)


class T5GatedMLP(nn.Module):
    """gelu(x W_0) * (x W_1) W_o, with the tanh approximation of GELU."""

    config: T5Config
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config

        def dense(name: str, features: int, fan_in: int, names: tuple[str, str]) -> nn.Dense:
            init = partitioned(nn.initializers.normal(fan_in**-0.5), names)
            return nn.Dense(features, use_bias=False, dtype=self.dtype, kernel_init=init, name=name)

        gate = dense("wi_0", c.d_ff, c.d_model, MLP_IN_KERNEL)(x)
        up = dense("wi_1", c.d_ff, c.d_model, MLP_IN_KERNEL)(x)
        return dense("wo", c.d_model, c.d_ff, MLP_OUT_KERNEL)(jax.nn.gelu(gate) * up)


class T5Block(nn.Module):
    """Pre-norm residual block: self-attention, then the gated MLP; residual kept in float32."""

    config: T5Config
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_epsilon
        normed = RMSNorm(eps, name="attention_norm")(x)
        x = x + T5Attention(self.config, self.dtype, name="attention")(normed, bias, mask)
        normed = RMSNorm(eps, name="mlp_norm")(x)
        x = x + T5GatedMLP(self.config, self.dtype, name="mlp")(normed)
        return nn.with_logical_constraint(x, HIDDEN)


class T5Encoder(nn.Module):
    """T5 v1.1 encoder: token ids [B, L] and mask [B, L] -> hidden states float32 [B, L, d_model].

    Padded keys are masked out of attention; padded positions still get (unused) outputs.
    """

    config: T5Config
    dtype: Any = jnp.bfloat16

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        check_token_inputs(ids, mask)
        c = self.config
        embed = nn.Embed(
            c.vocab_size,
            c.d_model,
            embedding_init=partitioned(nn.initializers.normal(1.0), EMBED_TABLE),
            name="token_embedding",
        )
        x = nn.with_logical_constraint(embed(ids), HIDDEN)
        bias_table = self.param(
            "relative_attention_bias",
            partitioned(nn.initializers.normal(c.d_model**-0.5), (None, "heads")),
            (c.relative_attention_num_buckets, c.num_heads),
            jnp.float32,
        )
        buckets = relative_position_buckets(
            ids.shape[1], c.relative_attention_num_buckets, c.relative_attention_max_distance
        )
        bias = jnp.transpose(bias_table[buckets], (2, 0, 1))[None]
        attention_mask = key_padding_mask(mask)
        for i in range(c.num_layers):
            x = T5Block(c, self.dtype, name=f"block_{i}")(x, bias, attention_mask)
        x = RMSNorm(c.layer_norm_epsilon, name="final_norm")(x)
        return nn.with_logical_constraint(x, HIDDEN)


def t5_params_from_hf(state: Mapping[str, np.ndarray], config: T5Config) -> dict:
    """Convert a Hugging Face T5 state dict (names like encoder.block.0.layer.0.SelfAttention.q)
    into T5Encoder params: Linear weights [out, in] are transposed and split into heads."""
    c = config

    def get(name: str) -> np.ndarray:
        return np.asarray(state[name], dtype=np.float32)

    def heads_in(name: str) -> dict:
        return {"kernel": get(name).T.reshape(c.d_model, c.num_heads, c.d_kv)}

    def block(i: int) -> dict:
        prefix = f"encoder.block.{i}.layer."
        attn = prefix + "0.SelfAttention."
        mlp = prefix + "1.DenseReluDense."
        return {
            "attention_norm": {"scale": get(prefix + "0.layer_norm.weight")},
            "attention": {
                "query": heads_in(attn + "q.weight"),
                "key": heads_in(attn + "k.weight"),
                "value": heads_in(attn + "v.weight"),
                "out": {"kernel": get(attn + "o.weight").T.reshape(c.num_heads, c.d_kv, c.d_model)},
            },
            "mlp_norm": {"scale": get(prefix + "1.layer_norm.weight")},
            "mlp": {
                name: {"kernel": get(f"{mlp}{name}.weight").T} for name in ("wi_0", "wi_1", "wo")
            },
        }

    embedding = "shared.weight" if "shared.weight" in state else "encoder.embed_tokens.weight"
    params = {f"block_{i}": block(i) for i in range(c.num_layers)}
    params["token_embedding"] = {"embedding": get(embedding)}
    params["relative_attention_bias"] = get(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    )
    params["final_norm"] = {"scale": get("encoder.final_layer_norm.weight")}
    return params

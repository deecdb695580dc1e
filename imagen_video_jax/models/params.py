"""Parameter counting and example inputs for a VideoUNet config, without allocating memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models.unet import VideoUNet


def example_inputs(
    model_config: Mapping[str, Any],
    *,
    batch: int = 1,
    frames: int = 2,
    height: int | None = None,
    width: int | None = None,
    text_length: int = 4,
) -> dict[str, jax.Array]:
    """Zero inputs of the right shapes for ``VideoUNet.from_config(model_config)`` (e.g. for init).

    Height and width default to the smallest size the levels allow. Conditioning inputs are
    included exactly when the config enables them.
    """
    model = VideoUNet.from_config(model_config)
    smallest = 2 ** (len(model.channel_mult) - 1)
    height, width = height or smallest, width or smallest
    inputs = {
        "z": jnp.zeros((batch, frames, height, width, model.in_channels)),
        "logsnr": jnp.zeros((batch,)),
    }
    if model.use_text:
        inputs["text"] = jnp.zeros((batch, text_length, model.text_dim))
        inputs["text_mask"] = jnp.ones((batch, text_length), bool)
    if model.cond_channels:
        inputs["cond"] = jnp.zeros((batch, frames, height, width, model.cond_channels))
        if model.cond_augmentation:
            inputs["cond_logsnr"] = jnp.zeros((batch,))
    if model.mask_condition:
        inputs["known"] = jnp.zeros_like(inputs["z"])
        inputs["known_mask"] = jnp.zeros((batch, frames), bool)
    if model.guidance_input:
        inputs["guidance"] = jnp.zeros((batch,))
    return inputs


def abstract_params(model_config: Mapping[str, Any]) -> Any:
    """The parameter tree of ``model_config`` as ShapeDtypeStructs (boxed with logical axes).

    Rematerialisation changes no parameter, so it is left out here to trace faster.
    """
    model = VideoUNet.from_config(model_config).clone(remat="none")

    def init():
        inputs = example_inputs(model_config)
        z, logsnr = inputs.pop("z"), inputs.pop("logsnr")
        return model.init(jax.random.key(0), z, logsnr, **inputs)["params"]

    return jax.eval_shape(init)


def count_params(model_config: Mapping[str, Any]) -> int:
    """Number of parameters of ``model_config``, computed on abstract shapes (no memory)."""
    leaves = jax.tree.leaves(abstract_params(model_config))
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def cast_kernels(params: Any, dtype: Any) -> Any:
    """``params`` with every leaf named 'kernel' in ``dtype``; other leaves as they are.

    Every module of the U-Net casts its kernels to the compute dtype before its product, so
    casting them once beforehand changes no product but the upsampling's, which then sums
    its 3 x 3 taps from the rounded kernel. A train step that does so keeps
    rematerialised blocks from casting every kernel again; the kernels' gradients then come
    out of the products in ``dtype``. Norm scales, biases and the relative position tables
    keep their dtype.
    """

    def cast(path: tuple, leaf: jax.Array) -> jax.Array:
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        return leaf.astype(dtype) if names and names[-1] == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(cast, params)

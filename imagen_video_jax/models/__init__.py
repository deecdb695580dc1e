"""Flax modules: the Video U-Net and its layers; frozen text encoders."""

from imagen_video_jax.models.params import (
    abstract_params,
    cast_kernels,
    count_params,
    example_inputs,
)
from imagen_video_jax.models.t5 import T5Encoder
from imagen_video_jax.models.text_cache import cache_embeddings, load_embedding_cache
from imagen_video_jax.models.text_encoder import TextEncoder, load_text_encoder
from imagen_video_jax.models.tklvae import TKLVAE
from imagen_video_jax.models.unet import VideoUNet

__all__ = [
    "T5Encoder",
    "TKLVAE",
    "TextEncoder",
    "VideoUNet",
    "abstract_params",
    "cache_embeddings",
    "cast_kernels",
    "count_params",
    "example_inputs",
    "load_embedding_cache",
    "load_text_encoder",
]

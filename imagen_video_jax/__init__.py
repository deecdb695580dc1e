"""Imagen Video, Video Diffusion Models and NUWA-XL in JAX/Flax."""

__version__ = "0.1.0"

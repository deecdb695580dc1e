"""Array helpers shared by the diffusion modules: float32 math, per-example broadcasting."""

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike


def as_float(x: ArrayLike) -> Array:
    """`x` as an array of at least float32 precision (bfloat16, float16, int become float32)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x.astype(jnp.float32)


def result_dtype(*xs: ArrayLike) -> jnp.dtype:
    """The floating dtype results should be cast back to: the promoted dtype of the inputs."""
    dtype = jnp.result_type(*xs)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def expand_to(scalar: ArrayLike, ndim: int) -> Array:
    """Append unit axes so a per-example value ([] or [B]) broadcasts against rank `ndim`."""
    scalar = as_float(scalar)
    return scalar.reshape(scalar.shape + (1,) * (ndim - scalar.ndim))

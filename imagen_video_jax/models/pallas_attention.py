"""Temporal attention as Pallas kernels that read and write the video layout as it is.

:func:`frame_attention`'s einsums keep (B, pixels, heads) as batch axes, so XLA transposes q, k,
v and the output of every call, and the T x T products run as a batch of tiny matmuls; on an
H200 a forward and backward call moves its activations at about 14 % of the memory bandwidth
(docs/PERFORMANCE.md, "Temporal attention alone"). Here each program takes one example, one
head and a block of pixels, [T, pixels, d] of q, k and v in place, and runs the softmax over
the T key frames one frame at a time (the online softmax of flash attention) in registers:
nothing is transposed and each activation is read once. The backward kernel recomputes the
probabilities from the forward's log-sum-exp.

On a GPU the kernels compile through Triton, which needs T, d and the pixel block to be powers
of 2 (the pixel block always is); on the CPU they run in Pallas' interpreter (tests); other
backends are refused. q, k and v, sliced from one projection, are copied once as the kernels'
operands.

Measured on an H200 (docs/PERFORMANCE.md): alone, the kernels take 22.1 ms a training step of
the bench U-Net against the einsums' 16.6 ms, yet the whole step is faster with them, 114.8
against 120.3 ms (``imagen-video bench base-train --attention pallas``). The products are
reductions over d across a warp's lanes, not tensor-core dots, the likely reason a call stays
at 380-590 GB/s; a [T, d] x [d, T] dot per pixel is the next thing to try.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# Logit of a masked (query, key) pair: exp() of it is 0 against any real logit, and adding
# q.k to it cannot overflow in float32.
MASKED_LOGIT = -1e30
# Pixels a program takes. On an H200 (bench temporal-attention, docs/PERFORMANCE.md) blocks of
# 1 and 2 were the fastest (22.5 and 22.1 ms a training step), 4, 8 and 16 slower (24-34 ms).
DEFAULT_BLOCK_PIXELS = 2
# Values of a [T, pixels, d] block each thread holds, which sets the warps a program runs.
VALUES_PER_THREAD = 32


def triton_params(frames: int, pixels: int, head_dim: int) -> pl_triton.CompilerParams:
    """Triton (not Mosaic GPU: the parameters' type picks the lowering), with 1-8 warps so that
    each thread holds about VALUES_PER_THREAD values of a block (a first guess, to be tuned)."""
    warps = frames * pixels * head_dim // (32 * VALUES_PER_THREAD)
    return pl_triton.CompilerParams(num_warps=min(8, max(1, warps)), num_stages=1)


def pallas_frame_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    mask: jax.Array | None,
    *,
    block_pixels: int = DEFAULT_BLOCK_PIXELS,
    interpret: bool | None = None,
) -> jax.Array:
    """:func:`imagen_video_jax.models.attention.frame_attention` by the kernels.

    ``q``, ``k``, ``v`` [B, T, P, heads, d], ``bias`` [heads, T, T] (query, key), ``mask`` None or
    [B, T, T] (True: the query frame may attend to the key frame; every query must keep at
    least one key) -> [B, T, P, heads, d] in ``q``'s dtype; softmax in float32. ``interpret``:
    run in Pallas' interpreter (default: on the CPU backend, compiled on a GPU).
    """
    b, t, p, n, d = q.shape
    if interpret is None:
        interpret = _interpret_on(jax.default_backend())
    pixels = _pixel_block(p, block_pixels)
    if not interpret:
        _check_powers_of_two(frames=t, head_dim=d)  # the pixel block is one by construction
    return _attention(q, k, v, key_major_bias(bias, mask, b), pixels, interpret)


def key_major_bias(bias: jax.Array, mask: jax.Array | None, batch: int) -> jax.Array:
    """The bias and mask as one additive float32 term [B, heads, S (key), T (query)], key-major
    so that a kernel reads one key frame's row at a time."""
    logit_bias = jnp.broadcast_to(
        jnp.swapaxes(bias.astype(jnp.float32), 1, 2)[None], (batch, *bias.shape)
    )
    if mask is None:
        return logit_bias
    return jnp.where(jnp.swapaxes(mask, 1, 2)[:, None], logit_bias, MASKED_LOGIT)


def _interpret_on(backend: str) -> bool:
    """Compiled (Triton) on a GPU, interpreted on the CPU; no kernel for other backends."""
    if backend not in ("gpu", "cpu"):
        raise ValueError(
            f"the Pallas temporal attention has Triton kernels for GPUs only, not {backend!r}: "
            "use model.attention_impl='xla' (or 'auto')"
        )
    return backend == "cpu"


def _pixel_block(pixels: int, largest: int) -> int:
    """The largest power of 2 <= ``largest`` that divides ``pixels``."""
    block = 1
    while block * 2 <= largest and pixels % (block * 2) == 0:
        block *= 2
    return block


def _check_powers_of_two(**sizes: int) -> None:
    bad = {name: size for name, size in sizes.items() if size & (size - 1)}
    if bad:
        raise ValueError(
            f"the Pallas temporal attention compiles through Triton, which needs powers of 2; "
            f"got {bad}: use model.attention_impl='xla' for these shapes"
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, logit_bias, pixels: int, interpret: bool) -> jax.Array:
    return _forward(q, k, v, logit_bias, pixels, interpret)[0]


def _video_spec(t: int, pixels: int, d: int) -> pl.BlockSpec:
    """[B, T, P, heads, d] -> one example's, one head's [T, pixels, d] block."""
    return pl.BlockSpec((None, t, pixels, None, d), lambda b, i, h: (b, 0, i, h, 0))


def _row_spec(t: int, pixels: int) -> pl.BlockSpec:
    """[B, T, P, heads] (per query statistics) -> [T, pixels]."""
    return pl.BlockSpec((None, t, pixels, None), lambda b, i, h: (b, 0, i, h))


def _bias_spec(t: int) -> pl.BlockSpec:
    """[B, heads, S, T] -> one example's, one head's [S, T]."""
    return pl.BlockSpec((None, None, t, t), lambda b, i, h: (b, h, 0, 0))


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, o_ref, lse_ref, *, scale: float):
    """One block: out = softmax over key frames s of (q . k_s * scale + bias_s) times v_s,
    accumulated one key frame at a time; also each query's log-sum-exp for the backward."""
    frames = q_ref.shape[0]
    q = q_ref[...].astype(jnp.float32) * scale

    def key_frame(s, carry):
        top, total, acc = carry
        k_s = k_ref[s].astype(jnp.float32)  # [pixels, d]
        logit = jnp.sum(q * k_s[None], axis=-1) + bias_ref[s][:, None]  # [T, pixels]
        new_top = jnp.maximum(top, logit)
        rescale, prob = jnp.exp(top - new_top), jnp.exp(logit - new_top)
        acc = acc * rescale[..., None] + prob[..., None] * v_ref[s].astype(jnp.float32)[None]
        return new_top, total * rescale + prob, acc

    rows = q.shape[:2]
    init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros_like(q))
    top, total, acc = jax.lax.fori_loop(0, frames, key_frame, init)
    o_ref[...] = (acc / total[..., None]).astype(o_ref.dtype)
    lse_ref[...] = top + jnp.log(total)


def _backward_kernel(
    q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, db_ref,
    *, scale: float,
):  # fmt: skip
    """One block's gradients, one key frame s at a time: the probabilities p_s recomputed from
    the log-sum-exp, d logit_s = p_s (do . v_s - delta); dk_s, dv_s and the bias gradient's row
    s are sums over the query frames, dq a sum over s."""
    frames = q_ref.shape[0]
    q = q_ref[...].astype(jnp.float32) * scale
    grad_out = do_ref[...].astype(jnp.float32)
    lse, delta = lse_ref[...], delta_ref[...]

    def key_frame(s, grad_q):
        k_s, v_s = k_ref[s].astype(jnp.float32), v_ref[s].astype(jnp.float32)
        prob = jnp.exp(jnp.sum(q * k_s[None], axis=-1) + bias_ref[s][:, None] - lse)
        grad_logit = prob * (jnp.sum(grad_out * v_s[None], axis=-1) - delta)  # [T, pixels]
        dk_ref[s] = jnp.sum(grad_logit[..., None] * q, axis=0).astype(dk_ref.dtype)
        dv_ref[s] = jnp.sum(prob[..., None] * grad_out, axis=0).astype(dv_ref.dtype)
        db_ref[s] = jnp.sum(grad_logit, axis=1)
        return grad_q + grad_logit[..., None] * k_s[None]

    grad_q = jax.lax.fori_loop(0, frames, key_frame, jnp.zeros_like(q))
    dq_ref[...] = (grad_q * scale).astype(dq_ref.dtype)


def _grid(q: jax.Array, pixels: int) -> tuple[int, int, int]:
    b, _, p, n, _ = q.shape
    return (b, p // pixels, n)


def _forward(q, k, v, logit_bias, pixels, interpret):
    b, t, p, n, d = q.shape
    video, rows = _video_spec(t, pixels, d), _row_spec(t, pixels)
    out, lse = pl.pallas_call(
        functools.partial(_forward_kernel, scale=d**-0.5),
        grid=_grid(q, pixels),
        in_specs=[video, video, video, _bias_spec(t)],
        out_specs=[video, rows],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, t, p, n), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=triton_params(t, pixels, d),
        name="temporal_attention_forward",
    )(q, k, v, logit_bias)
    return out, (q, k, v, logit_bias, out, lse)


def _backward(pixels, interpret, residuals, grad_out):
    q, k, v, logit_bias, out, lse = residuals
    b, t, p, n, d = q.shape
    blocks = p // pixels
    delta = jnp.sum(grad_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    video, rows, bias = _video_spec(t, pixels, d), _row_spec(t, pixels), _bias_spec(t)
    partial_bias = pl.BlockSpec((None, None, None, t, t), lambda b, i, h: (b, i, h, 0, 0))
    dq, dk, dv, dbias = pl.pallas_call(
        functools.partial(_backward_kernel, scale=d**-0.5),
        grid=_grid(q, pixels),
        in_specs=[video, video, video, bias, video, rows, rows],
        out_specs=[video, video, video, partial_bias],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct(k.shape, k.dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct((b, blocks, n, t, t), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=triton_params(t, pixels, d),
        name="temporal_attention_backward",
    )(q, k, v, logit_bias, grad_out, lse, delta)
    return dq, dk, dv, jnp.sum(dbias, axis=1).astype(logit_bias.dtype)


_attention.defvjp(_forward, _backward)

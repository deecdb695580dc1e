"""Temporal attention as Pallas kernels that read and write the video layout as it is.

:func:`frame_attention`'s einsums keep (B, pixels, heads) as batch axes, so XLA transposes q, k,
v and the output of every call, and the T x T products run as a batch of tiny matmuls; on an
H200 a forward and backward call moves its activations at about 14 % of the memory bandwidth
(docs/PERFORMANCE.md, "Temporal attention alone"). Here each program takes one example, one
head and a block of pixels, [T, pixels, d] of q, k and v in place, and computes the softmax
over the T key frames in registers: nothing is transposed and each activation is read once.
The backward kernel recomputes the probabilities from the forward's log-sum-exp, and reads
the output beside its gradient for softmax's correction term (do . out), so that no pass of
its own reads both again.

On a GPU the kernels compile through Triton, which needs T, d and the pixel block to be powers
of 2 (the pixel block always is); on the CPU they run in Pallas' interpreter (tests); other
backends are refused. The kernels take the block's one [B, T, P, 3, heads, d] projection as it
is, each program reading its head's q, k and v from it, and the backward kernel writes the
gradient of that projection whole: q, k and v are never sliced out into copies, nor their
gradients concatenated.

Two kernel bodies share the grid and the layout. Where T and d are at least 16 (Triton's
smallest dot), each pixel's [T, T] logits and [T, d] output are tensor-core dots; for fewer
frames or narrower heads the products are reductions over d across a warp's lanes, one key
frame at a time (the online softmax of flash attention). Measured on an H200
(docs/PERFORMANCE.md, ``bench temporal-attention``, ms a training step of the bench U-Net,
forward and backward): the dots 12.2-13.8, the einsums 16.6-19.0, the lane reductions 22.1.
In the whole step the dots give 105.1 ms against 120.3 with the einsums.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# Logit of a masked (query, key) pair: exp() of it is 0 against any real logit, and adding
# q.k to it cannot overflow in float32.
MASKED_LOGIT = -1e30
# The name of the kernels' outputs and log-sum-exps, for remat policies.
ATTENTION_OUTPUTS = "attention_outputs"
# Pixels a program takes. On an H200 (bench temporal-attention, docs/PERFORMANCE.md) a block of
# 2 was the fastest with the dots (12.2 ms a training step; 1: 12.8, 4: 12.6-14.5, 8: 15.1)
# and with the lane reductions (22.1 ms; 1: 22.5, 4-16: 24-34).
DEFAULT_BLOCK_PIXELS = 2
# Values of a [T, pixels, d] block each thread holds, which sets the warps a program runs: 2
# warps at the default block, T = 16 and d = 64 (the fastest of 1-4 warps and blocks of 1-8 on
# an H200 with the dots).
VALUES_PER_THREAD = 32
# Triton's smallest dot operand side: below it on T or d the products are lane reductions.
SMALLEST_DOT = 16


def triton_params(frames: int, pixels: int, head_dim: int) -> pl_triton.CompilerParams:
    """Triton (not Mosaic GPU: the parameters' type picks the lowering), with 1-8 warps so that
    each thread holds about VALUES_PER_THREAD values of a block."""
    warps = frames * pixels * head_dim // (32 * VALUES_PER_THREAD)
    return pl_triton.CompilerParams(num_warps=min(8, max(1, warps)), num_stages=1)


def pallas_frame_attention(
    qkv: jax.Array,
    bias: jax.Array,
    mask: jax.Array | None,
    *,
    qkv_bias: jax.Array | None = None,
    block_pixels: int = DEFAULT_BLOCK_PIXELS,
    interpret: bool | None = None,
) -> jax.Array:
    """:func:`imagen_video_jax.models.attention.frame_attention` by the kernels.

    ``qkv`` [B, T, P, 3, heads, d] (q, k, v stacked on axis 3), ``bias`` [heads, T, T] (query,
    key), ``mask`` None or [B, T, T] (True: the query frame may attend to the key frame; every
    query must keep at least one key) -> [B, T, P, heads, d] in ``qkv``'s dtype; softmax in
    float32. ``qkv_bias`` [3, heads, d] (or None: zeros) is added to ``qkv`` as the kernels
    read it: the projection's bias, left out of its matmul. ``interpret``: run in Pallas'
    interpreter (default: on the CPU backend, compiled on a GPU).
    """
    b, t, p, _, n, d = qkv.shape
    if interpret is None:
        interpret = _interpret_on(jax.default_backend())
    pixels = _pixel_block(p, block_pixels)
    if not interpret:
        _check_powers_of_two(frames=t, head_dim=d)  # the pixel block is one by construction
    dots = uses_dots(frames=t, head_dim=d)
    if qkv_bias is None:
        qkv_bias = jnp.zeros(qkv.shape[3:], qkv.dtype)
    logit_bias = key_major_bias(bias, mask, b)
    return _attention(qkv, qkv_bias, logit_bias, pixels, dots, interpret)


def uses_dots(*, frames: int, head_dim: int) -> bool:
    """Whether the kernels take the T x T and T x d products as tensor-core dots."""
    return frames >= SMALLEST_DOT and head_dim >= SMALLEST_DOT


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(qkv, qkv_bias, logit_bias, pixels: int, dots: bool, interpret: bool) -> jax.Array:
    return _forward(qkv, qkv_bias, logit_bias, pixels, dots, interpret)[0]


# Where q, k and v lie on axis 3 of the projection.
Q, K, V = 0, 1, 2


def _video_spec(t: int, pixels: int, d: int) -> pl.BlockSpec:
    """[B, T, P, heads, d] -> one example's, one head's [T, pixels, d] block."""
    return pl.BlockSpec((None, t, pixels, None, d), lambda b, i, h: (b, 0, i, h, 0))


def _part_spec(part: int, t: int, pixels: int, d: int) -> pl.BlockSpec:
    """[B, T, P, 3, heads, d] -> q's, k's or v's [T, pixels, d] block (``part`` Q, K or V)."""
    return pl.BlockSpec((None, t, pixels, None, None, d), lambda b, i, h: (b, 0, i, part, h, 0))


def _parts_spec(t: int, pixels: int, d: int) -> pl.BlockSpec:
    """[B, T, P, 3, heads, d] -> the [T, pixels, 3, d] block of q, k and v together."""
    return pl.BlockSpec((None, t, pixels, 3, None, d), lambda b, i, h: (b, 0, i, 0, h, 0))


def _row_spec(t: int, pixels: int) -> pl.BlockSpec:
    """[B, T, P, heads] (per query statistics) -> [T, pixels]."""
    return pl.BlockSpec((None, t, pixels, None), lambda b, i, h: (b, 0, i, h))


def _bias_spec(t: int) -> pl.BlockSpec:
    """[B, heads, S, T] -> one example's, one head's [S, T]."""
    return pl.BlockSpec((None, None, t, t), lambda b, i, h: (b, h, 0, 0))


def _forward_kernel(q_ref, k_ref, v_ref, qkv_bias_ref, bias_ref, o_ref, lse_ref, *, scale: float):
    """One block: out = softmax over key frames s of (q . k_s * scale + bias_s) times v_s,
    accumulated one key frame at a time; also each query's log-sum-exp for the backward."""
    frames = q_ref.shape[0]
    q = _biased(q_ref[...], qkv_bias_ref[Q]) * scale

    def key_frame(s, carry):
        top, total, acc = carry
        k_s = _biased(k_ref[s], qkv_bias_ref[K])  # [pixels, d]
        logit = jnp.sum(q * k_s[None], axis=-1) + bias_ref[s][:, None]  # [T, pixels]
        new_top = jnp.maximum(top, logit)
        rescale, prob = jnp.exp(top - new_top), jnp.exp(logit - new_top)
        acc = acc * rescale[..., None] + prob[..., None] * _biased(v_ref[s], qkv_bias_ref[V])[None]
        return new_top, total * rescale + prob, acc

    rows = q.shape[:2]
    init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros_like(q))
    top, total, acc = jax.lax.fori_loop(0, frames, key_frame, init)
    o_ref[...] = (acc / total[..., None]).astype(o_ref.dtype)
    lse_ref[...] = top + jnp.log(total)


def _backward_kernel(
    q_ref, k_ref, v_ref, qkv_bias_ref, bias_ref, o_ref, do_ref, lse_ref,
    grad_ref, db_ref, dqkv_bias_ref, *, scale: float,
):  # fmt: skip
    """One block's gradients, one key frame s at a time: the probabilities p_s recomputed from
    the log-sum-exp, d logit_s = p_s (do . v_s - delta) with delta = do . out; dk_s, dv_s and
    the bias gradient's row s are sums over the query frames, dq a sum over s. The block's
    share of the projection bias's gradient is the sum of dq, dk and dv over its frames and
    pixels."""
    frames = q_ref.shape[0]
    q = _biased(q_ref[...], qkv_bias_ref[Q]) * scale
    grad_out = do_ref[...].astype(jnp.float32)
    lse, delta = lse_ref[...], jnp.sum(grad_out * o_ref[...].astype(jnp.float32), axis=-1)

    def key_frame(s, carry):
        grad_q, sum_k, sum_v = carry
        k_s, v_s = _biased(k_ref[s], qkv_bias_ref[K]), _biased(v_ref[s], qkv_bias_ref[V])
        prob = jnp.exp(jnp.sum(q * k_s[None], axis=-1) + bias_ref[s][:, None] - lse)
        grad_logit = prob * (jnp.sum(grad_out * v_s[None], axis=-1) - delta)  # [T, pixels]
        grad_k = jnp.sum(grad_logit[..., None] * q, axis=0)  # [pixels, d]
        grad_v = jnp.sum(prob[..., None] * grad_out, axis=0)
        grad_ref[s, :, K, :] = grad_k.astype(grad_ref.dtype)
        grad_ref[s, :, V, :] = grad_v.astype(grad_ref.dtype)
        db_ref[s] = jnp.sum(grad_logit, axis=1)
        grad_q = grad_q + grad_logit[..., None] * k_s[None]
        return grad_q, sum_k + jnp.sum(grad_k, axis=0), sum_v + jnp.sum(grad_v, axis=0)

    row = jnp.zeros(q.shape[-1:], jnp.float32)
    grad_q, sum_k, sum_v = jax.lax.fori_loop(0, frames, key_frame, (jnp.zeros_like(q), row, row))
    grad_q = grad_q * scale
    grad_ref[:, :, Q, :] = grad_q.astype(grad_ref.dtype)
    dqkv_bias_ref[Q] = jnp.sum(grad_q, axis=(0, 1))
    dqkv_bias_ref[K], dqkv_bias_ref[V] = sum_k, sum_v


def _biased(x: jax.Array, bias: jax.Array) -> jax.Array:
    """A block of the projection with its bias added, in float32."""
    return x.astype(jnp.float32) + bias


def _pixel_qkv(q_ref, k_ref, v_ref, qkv_bias_ref, j: int) -> list[jax.Array]:
    """Pixel ``j``'s q, k and v [T, d], biased, in the projection's dtype (dot operands)."""
    refs = ((q_ref, Q), (k_ref, K), (v_ref, V))
    return [_biased(ref[:, j, :], qkv_bias_ref[part]).astype(ref.dtype) for ref, part in refs]


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b on tensor cores, accumulated in float32."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _forward_dots_kernel(
    q_ref, k_ref, v_ref, qkv_bias_ref, bias_ref, o_ref, lse_ref, *, scale: float
):
    """:func:`_forward_kernel` with each pixel's products as dots: logits = q k^T [T, S], then
    the softmax over S and out = p v."""
    bias = bias_ref[...].T  # [T (query), S (key)]
    for j in range(q_ref.shape[1]):
        q, k, v = _pixel_qkv(q_ref, k_ref, v_ref, qkv_bias_ref, j)
        logit = _dot(q, k.T) * scale + bias
        top = jnp.max(logit, axis=1)
        prob = jnp.exp(logit - top[:, None])
        total = jnp.sum(prob, axis=1)
        o_ref[:, j, :] = (_dot(prob.astype(v.dtype), v) / total[:, None]).astype(o_ref.dtype)
        lse_ref[:, j] = top + jnp.log(total)


def _backward_dots_kernel(
    q_ref, k_ref, v_ref, qkv_bias_ref, bias_ref, o_ref, do_ref, lse_ref,
    grad_ref, db_ref, dqkv_bias_ref, *, scale: float,
):  # fmt: skip
    """:func:`_backward_kernel` with each pixel's products as dots: p from the log-sum-exp,
    dv = p^T do, d logit = p (do v^T - delta), dq = d logit k, dk = d logit^T q."""
    bias = bias_ref[...].T
    grad_bias = jnp.zeros(bias.shape, jnp.float32)
    grad_qkv_bias = {part: jnp.zeros(q_ref.shape[-1:], jnp.float32) for part in (Q, K, V)}
    for j in range(q_ref.shape[1]):
        q, k, v = _pixel_qkv(q_ref, k_ref, v_ref, qkv_bias_ref, j)
        grad_out = do_ref[:, j, :]
        delta = jnp.sum(grad_out.astype(jnp.float32) * o_ref[:, j, :].astype(jnp.float32), axis=1)
        prob = jnp.exp(_dot(q, k.T) * scale + bias - lse_ref[:, j][:, None])
        grad_v = _dot(prob.astype(grad_out.dtype).T, grad_out)
        grad_logit = prob * (_dot(grad_out, v.T) - delta[:, None])
        grad_q = _dot(grad_logit.astype(k.dtype), k) * scale
        grad_k = _dot(grad_logit.astype(q.dtype).T, q) * scale
        for part, grad in ((Q, grad_q), (K, grad_k), (V, grad_v)):
            grad_ref[:, j, part, :] = grad.astype(grad_ref.dtype)
            grad_qkv_bias[part] = grad_qkv_bias[part] + jnp.sum(grad, axis=0)
        grad_bias = grad_bias + grad_logit
    db_ref[...] = grad_bias.T
    for part, grad in grad_qkv_bias.items():
        dqkv_bias_ref[part] = grad


def _grid(qkv: jax.Array, pixels: int) -> tuple[int, int, int]:
    b, _, p, _, n, _ = qkv.shape
    return (b, p // pixels, n)


def _qkv_specs(t: int, pixels: int, d: int) -> list[pl.BlockSpec]:
    """q's, k's and v's blocks of the projection, then their biases' [3, d] of the head."""
    qkv_bias = pl.BlockSpec((3, None, d), lambda b, i, h: (0, h, 0))
    return [*(_part_spec(part, t, pixels, d) for part in (Q, K, V)), qkv_bias]


def _forward(qkv, qkv_bias, logit_bias, pixels, dots, interpret):
    b, t, p, _, n, d = qkv.shape
    video, rows = _video_spec(t, pixels, d), _row_spec(t, pixels)
    kernel = _forward_dots_kernel if dots else _forward_kernel
    out, lse = pl.pallas_call(
        functools.partial(kernel, scale=d**-0.5),
        grid=_grid(qkv, pixels),
        in_specs=[*_qkv_specs(t, pixels, d), _bias_spec(t)],
        out_specs=[video, rows],
        out_shape=[
            jax.ShapeDtypeStruct((b, t, p, n, d), qkv.dtype),
            jax.ShapeDtypeStruct((b, t, p, n), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=triton_params(t, pixels, d),
        name="temporal_attention_forward",
    )(qkv, qkv, qkv, qkv_bias.astype(jnp.float32), logit_bias)
    out, lse = (checkpoint_name(v, ATTENTION_OUTPUTS) for v in (out, lse))
    return out, (qkv, qkv_bias, logit_bias, out, lse)


def _backward(pixels, dots, interpret, residuals, grad_out):
    qkv, qkv_bias, logit_bias, out, lse = residuals
    b, t, p, _, n, d = qkv.shape
    blocks = p // pixels
    video, rows, bias = _video_spec(t, pixels, d), _row_spec(t, pixels), _bias_spec(t)
    # Each program's share of the logit bias's and of the projection bias's gradients, summed
    # over the programs below: the projection bias's gradient is a sum over every frame and
    # pixel of the projection's, which a pass of its own would read whole again.
    partial_bias = pl.BlockSpec((None, None, None, t, t), lambda b, i, h: (b, i, h, 0, 0))
    partial_qkv_bias = pl.BlockSpec((None, None, 3, None, d), lambda b, i, h: (b, i, 0, h, 0))
    kernel = _backward_dots_kernel if dots else _backward_kernel
    grad_qkv, grad_bias, grad_qkv_bias = pl.pallas_call(
        functools.partial(kernel, scale=d**-0.5),
        grid=_grid(qkv, pixels),
        in_specs=[*_qkv_specs(t, pixels, d), bias, video, video, rows],
        out_specs=[_parts_spec(t, pixels, d), partial_bias, partial_qkv_bias],
        out_shape=[
            jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
            jax.ShapeDtypeStruct((b, blocks, n, t, t), jnp.float32),
            jax.ShapeDtypeStruct((b, blocks, 3, n, d), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=triton_params(t, pixels, d),
        name="temporal_attention_backward",
    )(qkv, qkv, qkv, qkv_bias.astype(jnp.float32), logit_bias, out, grad_out, lse)
    grad_qkv_bias = jnp.sum(grad_qkv_bias, axis=(0, 1))
    return (
        grad_qkv,
        grad_qkv_bias.astype(qkv_bias.dtype),
        jnp.sum(grad_bias, axis=1).astype(logit_bias.dtype),
    )


_attention.defvjp(_forward, _backward)

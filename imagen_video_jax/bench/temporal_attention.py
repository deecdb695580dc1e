"""Temporal attention alone: forward and backward at each level of the bench-base-train U-Net.

Times the T x T attention among the frames at every pixel (:func:`frame_attention`, the
einsums that ``model.attention_impl`` 'auto' and 'xla' use, :func:`fused_frame_attention`,
cuDNN's fused kernel for 'cudnn', and :func:`pallas_frame_attention` for 'pallas', named
``pallas/N`` for a block of N pixels), from q, k, v to their gradients, at the activation shape
of every level, with that level's number of blocks. Each call must move at least the
activations it reads and writes: q, k, v and the output forward, and q, k, v, the output's
gradient and the three input gradients backward, 11 activations in all. The achieved GB/s
against the device's memory bandwidth says how far a call is from that floor.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from imagen_video_jax.bench import measure
from imagen_video_jax.configs.imagen_video import bench_base_train_model_config
from imagen_video_jax.models.attention import attend_frames, attention_kernels
from imagen_video_jax.models.validation import ATTENTION_IMPLS

# Activations a forward and backward call moves at the least: q, k, v, out; then q, k, v,
# d out in and d q, d k, d v out.
ACTIVATIONS_MOVED = 11

# The temporal kernels model.attention_impl names ("auto" picks among the others).
IMPLEMENTATIONS = tuple(
    dict.fromkeys(attention_kernels(name)[0] for name in ATTENTION_IMPLS if name != "auto")
)


def attention_fn(implementation: str) -> Callable[..., jax.Array]:
    """(qkv, bias) -> out of ``implementation``: xla, cudnn, pallas or pallas/N (a block
    of N pixels a program), through the U-Net block's own :func:`attend_frames`."""
    name, _, block = implementation.partition("/")
    if name not in IMPLEMENTATIONS or (block and not (name == "pallas" and block.isdigit())):
        raise ValueError(
            f"unknown implementation {implementation!r}: choose from {IMPLEMENTATIONS} or pallas/N"
        )
    options = {"block_pixels": int(block)} if block else {}
    return lambda qkv, bias: attend_frames(qkv, bias, None, name, **options)


@dataclasses.dataclass(frozen=True)
class Level:
    """One U-Net level's temporal attention: activation [batch, frames, side, side, channels]."""

    index: int
    batch: int
    frames: int
    side: int
    channels: int
    heads: int
    blocks: int  # temporal attention blocks at this level in one forward pass

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.frames, self.side, self.side, self.channels)

    def bytes_moved(self, dtype: jnp.dtype = jnp.bfloat16) -> int:
        """The least memory traffic of one forward and backward call."""
        activation = self.batch * self.frames * self.side**2 * self.channels
        return ACTIVATIONS_MOVED * activation * jnp.dtype(dtype).itemsize


def bench_levels(batch: int = 8, frames: int = 16, side: int = 64) -> list[Level]:
    """The levels of bench-base-train's U-Net: 2 blocks a level down and up, the middle block
    at the lowest level."""
    model = bench_base_train_model_config()
    levels = []
    for index, (mult, blocks) in enumerate(zip(model.channel_mult, model.num_res_blocks)):
        channels = model.channels * mult
        last = index == len(model.channel_mult) - 1
        levels.append(
            Level(
                index=index,
                batch=batch,
                frames=frames,
                side=side // 2**index,
                channels=channels,
                heads=channels // model.head_dim,
                blocks=2 * blocks + int(last),
            )
        )
    return levels


def attention_step(implementation: str, level: Level, seed: int = 0) -> Callable[[], Any]:
    """A jitted forward and backward call of ``implementation`` at ``level``, on one bfloat16
    [B, T, P, 3, heads, d] projection as the U-Net's block does."""
    attend = attention_fn(implementation)
    b, t, h, w, c = level.shape
    keys = jax.random.split(jax.random.key(seed), 3)
    qkv = jax.random.normal(keys[0], (b, t, h * w, 3, level.heads, c // level.heads), jnp.bfloat16)
    bias = jax.random.normal(keys[1], (level.heads, t, t), jnp.float32)
    grad_out = jax.random.normal(keys[2], qkv.shape[:3] + qkv.shape[4:], jnp.bfloat16)

    def loss(qkv, bias):
        out = attend(qkv, bias).astype(jnp.float32)
        return jnp.sum(out * grad_out.astype(jnp.float32))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: step(qkv, bias)


def measure_level(implementation: str, level: Level, iters: int) -> dict[str, Any]:
    """One record: ``implementation`` at ``level``, timed, or the error that stopped it."""
    record = {
        "bench": "temporal_attention",
        "implementation": implementation,
        "level": level.index,
        "shape": "x".join(map(str, level.shape)),
        "heads": level.heads,
        "blocks": level.blocks,
        **measure.device_description(),
    }
    try:
        seconds = measure.median_step_seconds(attention_step(implementation, level), iters=iters)
    except Exception as err:  # noqa: BLE001 - recorded: e.g. no cuDNN kernel on this device
        return {**record, "error": measure.error_line(err)}
    return {
        **record,
        "ms": seconds * 1e3,
        "ms_per_step": seconds * 1e3 * level.blocks,
        "gb_per_s": level.bytes_moved() / seconds / 1e9,
    }


def totals(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per implementation: the forward-and-backward time of every block of one train step."""
    by_impl: dict[str, float] = {}
    for record in records:
        if "ms_per_step" in record:
            by_impl[record["implementation"]] = (
                by_impl.get(record["implementation"], 0.0) + record["ms_per_step"]
            )
    return [
        {"bench": "temporal_attention", "implementation": name, "level": "all", "ms_per_step": ms}
        for name, ms in by_impl.items()
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="clips")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument(
        "--implementations",
        default="xla,cudnn,pallas/1,pallas/2,pallas/4,pallas/8",
        help="comma-separated: xla, cudnn, pallas/N (N pixels a program)",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed calls after warm-up")


def main(args: argparse.Namespace) -> int:
    names = [n for n in args.implementations.split(",") if n]
    try:
        for name in names:
            attention_fn(name)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    records = [
        measure.emit(measure_level(name, level, args.iters))
        for level in bench_levels(args.batch, args.frames)
        for name in names
    ]
    records += [measure.emit(r) for r in totals(records)]
    columns = ("implementation", "level", "shape", "blocks", "ms", "ms_per_step", "gb_per_s")
    measure.print_table(records, (*columns, "error"))
    return 0

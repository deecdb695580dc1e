"""Measuring on an accelerator: wall time of compiled calls, matmul peak, model FLOPs, memory.

Every benchmark prints one JSON line per measurement (:func:`emit`) and a table at the end
(:func:`print_table`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def block(tree: Any) -> Any:
    """Wait for every array in ``tree``; returns it."""
    return jax.block_until_ready(tree)


def median_step_seconds(step: Callable[[], Any], *, warmup: int = 3, iters: int = 20) -> float:
    """Median wall time of ``step()`` (which must return its device outputs) after warm-up."""
    for _ in range(warmup):
        block(step())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        block(step())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_tflops(n: int = 8192, dtype: jnp.dtype = jnp.bfloat16, iters: int = 20) -> float:
    """Measured TFLOP/s of a large square matmul on the default device (the MFU denominator)."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_step_seconds(lambda: matmul(a, b), iters=iters)
    return 2 * n**3 / seconds / 1e12


def cpu_compiled_flops(fn: Callable, *abstract_args: Any) -> float:
    """FLOPs of ``fn`` from XLA's cost analysis of a compile for the CPU backend.

    A GPU compile's cost analysis leaves out convolutions that run in cuDNN, so the count
    comes from the CPU compile of the same function; nothing is executed.
    """
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    args = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), abstract_args
    )
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def peak_memory_gib(device: jax.Device | None = None) -> float | None:
    """Peak bytes in use on ``device`` since start, in GiB (None where the backend has no stats)."""
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)) / 2**30


def device_description() -> dict[str, str]:
    """The device, its count and the JAX version, for every record."""
    device = jax.devices()[0]
    return {
        "device": getattr(device, "device_kind", device.platform),
        "num_devices": str(jax.device_count()),
        "jax": jax.__version__,
    }


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Print one measurement as a JSON line (flushed at once) and return it."""
    print(json.dumps(record, sort_keys=True), flush=True)
    return record


def print_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain-text table of ``columns`` over ``records``, printed last."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [[cell(r.get(c, "")) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=sys.stdout)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=sys.stdout)

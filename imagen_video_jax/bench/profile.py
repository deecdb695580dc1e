"""Where a profiled program's accelerator time goes, by the JAX op each kernel came from.

A ``jax.profiler`` trace names the HLO op of each device kernel, and the compiled program's
optimised HLO names, in each op's metadata, the JAX op it came from (its ``op_name``: the
module path, e.g. ``jit(step)/jvp(VideoUNet)/down_0_0/res/conv_in/conv_general_dilated``).
Joining the two gives milliseconds a step per JAX op. On a GPU, XLA runs most of a step as
CUDA graphs, whose kernels the trace names only as ``command_buffer_N``: profile with
``XLA_FLAGS=--xla_gpu_enable_command_buffer=`` to have every kernel named.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# An HLO instruction line: its name, then (if it has one) the op_name of its metadata.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\"", re.M)
# Layer indices at the end of a module path's part (down_0_1, blocks_3).
_INDEX = re.compile(r"(?:_\d+)+$")
COMMAND_BUFFER = "command_buffer"
UNNAMED = "(no JAX op)"
OTHER = "(the rest)"


def latest_trace(profile_dir: str | Path) -> Path:
    """The newest perfetto trace ``jax.profiler.trace(..., create_perfetto_trace=True)`` wrote."""
    traces = sorted(Path(profile_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {profile_dir}/plugins/profile")
    return traces[-1]


def device_kernel_ms(trace: dict[str, Any] | list) -> dict[str, tuple[float, int]]:
    """HLO op -> (milliseconds, kernels) of the trace's device kernels, summed over the whole
    trace: the events of processes named ``/device:...`` (GPU, TPU), or where there are none
    (the CPU backend, which runs its HLO ops on host threads) the events that name an HLO op.

    A kernel counts from its start or the end of the kernel before it on the same stream,
    whichever is later. XLA:GPU launches kernels early (programmatic dependent launch), and
    such a kernel's span then holds its wait for its predecessor: counted whole, a small
    reduction after a long convolution would take the convolution's time again.
    """
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and str(e.get("args", {}).get("name", "")).startswith("/device:")
    }

    def is_kernel(event: dict[str, Any]) -> bool:
        if devices:
            return event.get("pid") in devices
        return "hlo_op" in event.get("args", {})

    streams: dict[tuple, list] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and is_kernel(e):
            streams[e.get("pid"), e.get("tid")].append(e)
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for stream in streams.values():
        previous_end = -math.inf
        for e in sorted(stream, key=lambda e: e["ts"]):
            end = e["ts"] + e["dur"]
            op = e.get("args", {}).get("hlo_op") or e["name"]
            # The trace's times are microseconds.
            totals[op][0] += max(end - max(e["ts"], previous_end), 0.0) / 1e3
            totals[op][1] += 1
            previous_end = max(previous_end, end)
    return {op: (ms, n) for op, (ms, n) in totals.items()}


def read_trace(path: str | Path) -> dict[str, Any] | list:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def hlo_op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the op_name of its metadata, from optimised HLO text."""
    return {m.group(1): m.group(2) for m in _INSTRUCTION.finditer(hlo_text)}


def jax_op_key(op_name: str, depth: int = 3) -> str:
    """The last ``depth`` parts of a JAX op's path, layer indices dropped, so that the same
    layer at every level of a U-Net adds up (``down_0_1/res/conv_in/conv_general_dilated``
    -> ``res/conv_in/conv_general_dilated``)."""
    parts = [_INDEX.sub("", part) for part in op_name.split("/") if part]
    return "/".join(parts[-depth:])


def time_by_jax_op(
    kernels: dict[str, tuple[float, int]], sources: dict[str, str], steps: int, depth: int = 3
) -> list[dict[str, Any]]:
    """Milliseconds and kernels a step by JAX op (:func:`jax_op_key`), largest first. Kernels
    of HLO ops without an op_name count as ``(no JAX op)``; CUDA graphs as ``command_buffer``."""

    def key_of(hlo_op: str) -> str:
        if hlo_op.startswith(COMMAND_BUFFER):
            return COMMAND_BUFFER
        return jax_op_key(sources[hlo_op], depth) if hlo_op in sources else UNNAMED

    rows = _per_step_rows("jax_op", _tally(kernels, key_of), steps)
    return sorted(rows, key=lambda row: -row["ms_per_step"])


def _tally(
    kernels: dict[str, tuple[float, int]], key_of: Callable[[str], str], keys: Sequence[str] = ()
) -> dict[str, list]:
    """key -> [milliseconds, kernels] of the HLO ops ``key_of`` maps to it (``keys`` first, at
    zero where nothing maps to them)."""
    totals: dict[str, list] = {key: [0.0, 0] for key in keys}
    for hlo_op, (ms, count) in kernels.items():
        total = totals.setdefault(key_of(hlo_op), [0.0, 0])
        total[0] += ms
        total[1] += count
    return totals


def _per_step_rows(name: str, totals: dict[str, list], steps: int) -> list[dict[str, Any]]:
    return [
        {name: key, "ms_per_step": ms / steps, "kernels_per_step": count / steps}
        for key, (ms, count) in totals.items()
    ]


# The profiled program's optimised HLO, saved beside its trace (:func:`save_hlo`).
HLO_FILE = "optimized_hlo.txt"


def save_hlo(profile_dir: str | Path, hlo_text: str) -> Path:
    """Keep the profiled program's optimised HLO beside its trace, so that the trace can be
    attributed again later, away from the accelerator (:func:`summarize`)."""
    path = Path(profile_dir) / HLO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hlo_text)
    return path


def time_by_part(
    kernels: dict[str, tuple[float, int]],
    sources: dict[str, str],
    steps: int,
    parts: Sequence[tuple[str, str]],
) -> list[dict[str, Any]]:
    """Milliseconds and kernels a step by part of the program, in the order of ``parts``
    ((name, regular expression) pairs), then ``OTHER``: each kernel counts for the first part
    whose expression its JAX op's whole path (its op_name) matches."""
    patterns = [(name, re.compile(expression)) for name, expression in parts]

    def part_of(hlo_op: str) -> str:
        op_name = sources.get(hlo_op, "")
        return next((name for name, p in patterns if op_name and p.search(op_name)), OTHER)

    names = [name for name, _ in parts] + [OTHER]
    return _per_step_rows("part", _tally(kernels, part_of, names), steps)


def load(profile_dir: str | Path, hlo_text: str | None = None) -> tuple[dict, dict[str, str]]:
    """(kernels, sources) of the newest trace under ``profile_dir``: its device kernels
    (:func:`device_kernel_ms`) and the JAX op of each HLO op of ``hlo_text`` (default: the HLO
    :func:`save_hlo` kept there)."""
    if hlo_text is None:
        hlo_path = Path(profile_dir) / HLO_FILE
        if not hlo_path.exists():
            raise FileNotFoundError(f"no {HLO_FILE} under {profile_dir}: pass the HLO text")
        hlo_text = hlo_path.read_text()
    return device_kernel_ms(read_trace(latest_trace(profile_dir))), hlo_op_sources(hlo_text)


def summarize(
    profile_dir: str | Path, hlo_text: str | None = None, steps: int = 1
) -> list[dict[str, Any]]:
    """:func:`time_by_jax_op` of the newest trace under ``profile_dir`` (see :func:`load`)."""
    return time_by_jax_op(*load(profile_dir, hlo_text), steps)


def unnamed_kernels_hint(rows: list[dict[str, Any]]) -> str | None:
    """A note when most of the time is in CUDA graphs, whose kernels name no HLO op."""
    total = sum(row["ms_per_step"] for row in rows)
    graphs = sum(row["ms_per_step"] for row in rows if row["jax_op"] == COMMAND_BUFFER)
    if total and graphs > total / 2:
        return (
            f"{graphs / total:.0%} of the profiled device time ran in CUDA graphs, whose kernels "
            "name no HLO op: profile with XLA_FLAGS=--xla_gpu_enable_command_buffer= to have "
            "each kernel attributed to its JAX op"
        )
    return None

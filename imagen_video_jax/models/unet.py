"""The space-time separable Video U-Net shared by every stage of the cascade, VDM and NUWA-XL.

Each resolution level stacks blocks of: a residual block (3x3 convolutions per frame, FiLM by
the noise embedding), optional spatial self-attention per frame, optional cross-attention to
text tokens, and temporal mixing across frames at each pixel ('attention', 'conv' or 'none').
The conditioning inputs (super-resolution video, noise-augmentation level, text, NUWA-XL's
known frames, the guidance weight of distilled students) are each enabled by a config field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_video_jax.models.attention import (
    TEMPORAL_INPUT,
    CrossAttention,
    SpatialAttention,
    TemporalAttention,
    attention_kernels,
    valid_tokens_first,
)
from imagen_video_jax.models.embeddings import ScalarEmbedding, masked_mean
from imagen_video_jax.models.layers import (
    JOINED_INPUT,
    NORM_STATISTICS,
    Downsample,
    FrameGroupNorm,
    ResBlock,
    TemporalConv,
    Upsample,
    constrain_video,
    conv,
    dense,
)
from imagen_video_jax.models.pallas_attention import ATTENTION_OUTPUTS
from imagen_video_jax.models.validation import check_config, check_inputs


def dots_remat_policy(prim, *_, **params) -> bool:
    """Remat policy: keep the outputs of convolutions and of unbatched matmuls (the dense
    projections), the norms' per-frame statistics and the Pallas temporal attention's outputs;
    recompute the norms' elementwise passes, activations and XLA's attention products (batched
    matmuls, whose float32 logits are the largest activations and cost little to redo).

    The statistics are [B, T, groups] values whose recomputation is a full reduction over the
    activation; a Pallas attention output is an activation, but recomputing it is a kernel.
    On an H200 (docs/PERFORMANCE.md) keeping them took bench-base-train's step from 108.5 to
    102.4 ms for 0.7 GiB more at batch 8.
    """
    if prim is jax.lax.dot_general_p:
        (_, _), (lhs_batch, _) = params["dimension_numbers"]
        return not lhs_batch
    if prim.name == "name":
        return params["name"] in (NORM_STATISTICS, ATTENTION_OUTPUTS)
    return prim is jax.lax.conv_general_dilated_p


def dots_and_inputs_policy(prim, *avals, **params) -> bool:
    """:func:`dots_remat_policy`, and two normalised inputs kept too: the temporal
    attention's and a decoder residual block's (its input joined with the skip)."""
    if prim.name == "name" and params["name"] in (TEMPORAL_INPUT, JOINED_INPUT):
        return True
    return dots_remat_policy(prim, *avals, **params)


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of one U-Net."""

    head_dim: int
    groups: int
    dtype: Any
    dropout: float
    train: bool
    remat: str
    temporal_max_distance: int
    attention_impl: str | None
    level: int = 0  # of the block's resolution: 0 at the input's, 1 at half of it, ...

    def wrap(self, module_cls):
        """``module_cls`` under the configured rematerialisation: none, the whole block
        recomputed ('block'), :func:`dots_remat_policy` ('dots'), or that policy with spatial
        attention left out of it ('dots_spatial'), or spatial and cross-attention
        ('dots_attention').

        'dots_spatial' keeps spatial attention's products (per-frame H*W x H*W float32
        logits) rather than recomputing them: for low-resolution levels only. In
        bench-base-train's U-Net (spatial attention at 16 x 16 and 8 x 8) the logits are 8 and
        2 times the block's activation, and keeping them took an H200's step from 95.2 to
        93.0 ms for 2.1 GiB more at batch 8 (docs/PERFORMANCE.md); at 64 x 64 with 128
        channels they would be 128 times the activation. 'dots_attention' also keeps
        cross-attention's (queries x text tokens): with XLA's cross-attention that took the
        step from 91.1 to 90.2 ms for 1.0 GiB more, with cuDNN's from 90.4 to 89.1 ms for
        0.6 GiB more. Below the top level it also keeps the temporal attention's normalised
        input and a decoder block's normalised joined input (:func:`dots_and_inputs_policy`):
        85.7 to 85.1 ms for 0.45 GiB more, then 85.9 to 85.7 ms for 0.53 GiB more. The
        temporal input kept at every level saved 1.3 ms for 3.5 GiB, past bench-base-train's
        16 GiB.
        """
        if self.remat == "none" or module_cls in KEPT_WHOLE.get(self.remat, ()):
            return module_cls
        return nn.remat(module_cls, policy=self._policy())

    def _policy(self):
        """The remat policy of this block's modules (None: recompute everything)."""
        if self.remat == "block":
            return None
        if self.remat == "dots_attention" and self.level > 0:
            return dots_and_inputs_policy  # names only TemporalAttention and ResBlock give
        return dots_remat_policy


# The remat policies that leave some blocks out of rematerialisation: those blocks.
KEPT_WHOLE = {
    "dots_spatial": (SpatialAttention,),
    "dots_attention": (SpatialAttention, CrossAttention),
}


class SpaceTimeBlock(nn.Module):
    """Residual block, then spatial attention, cross-attention and temporal mixing as enabled."""

    features: int
    spatial_attention: bool
    cross_attention: bool
    temporal_mixing: str
    options: BlockOptions

    @nn.compact
    def __call__(self, h, emb, text, text_mask, video_frames, skip=None):
        o = self.options
        h = o.wrap(ResBlock)(self.features, o.groups, o.dtype, o.dropout, o.train, name="res")(
            h, emb, skip
        )
        if self.spatial_attention:
            h = o.wrap(SpatialAttention)(
                o.head_dim, o.groups, o.dtype, o.attention_impl, name="spatial_attention"
            )(h)
        if self.cross_attention:
            h = o.wrap(CrossAttention)(
                o.head_dim, o.groups, o.dtype, o.attention_impl, name="cross_attention"
            )(h, text, text_mask)
        if self.temporal_mixing == "attention":
            h = o.wrap(TemporalAttention)(
                o.head_dim,
                o.groups,
                o.dtype,
                o.temporal_max_distance,
                o.attention_impl,
                name="temporal_attention",
            )(h, video_frames)
        elif self.temporal_mixing == "conv":
            h = o.wrap(TemporalConv)(o.groups, o.dtype, name="temporal_conv")(h, video_frames)
        return h


class MaskCondition(nn.Module):
    """NUWA-XL's visual and mask condition at one resolution, zero-initialised (identity).

    ``h = w_c * h + b_c + h`` with (w_c, b_c) from the known frames, then
    ``h = w_m * h + b_m + h`` with (w_m, b_m) from the known-frame mask; both per frame.
    """

    dtype: Any

    @nn.compact
    def __call__(self, h: jax.Array, condition: jax.Array) -> jax.Array:
        features = h.shape[-1]
        visual, mask = condition[..., :-1], condition[..., -1:]
        for name, source in (("visual", visual), ("mask", mask)):
            project = conv(
                2 * features, (3, 3), self.dtype, zero_init=True, names=(None, "mlp"), name=name
            )
            w, b = jnp.split(project(source), 2, axis=-1)
            h = w * h + b + h
        return constrain_video(h)


def upsample_condition(cond: jax.Array, frames: int, height: int, width: int) -> jax.Array:
    """Low-res video [B,T',H',W',C] -> [B,T,H,W,C]: bilinear in space, frames repeated."""
    b, cond_frames, cond_height, cond_width, c = cond.shape
    if (cond_height, cond_width) != (height, width):
        cond = jax.image.resize(cond, (b, cond_frames, height, width, c), method="bilinear")
    return jnp.repeat(cond, frames // cond_frames, axis=1)


def average_pool_frames(x: jax.Array, factor: int) -> jax.Array:
    """Average ``factor`` x ``factor`` pixel blocks of every frame."""
    if factor == 1:
        return x
    b, t, h, w, c = x.shape
    return x.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


class VideoUNet(nn.Module):
    """Space-time separable U-Net: ``(z, logsnr, ...) -> prediction`` of z's shape, float32.

    Encoder: per level, ``num_res_blocks`` SpaceTimeBlocks, then a stride-2 downsample (not
    after the last level). Middle: one SpaceTimeBlock at the lowest level. Decoder: per level,
    as many blocks, each taking the matching encoder block's output concatenated as a skip,
    then a 2x upsample. Output: GroupNorm, SiLU and a zero-initialised 3x3 convolution.

    Fields mirror the keys of ``config.model`` (documented in ``configs/imagen_video.py``);
    per-level tuples have one entry per resolution level.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    spatial_attention: tuple[bool, ...] = (False, False, True, True)
    cross_attention: tuple[bool, ...] = (False, False, True, True)
    temporal_mixing: tuple[str, ...] = ("attention",) * 4
    head_dim: int = 64
    temporal_max_distance: int = 32
    norm_groups: int = 32
    emb_channels: int = 512
    use_text: bool = True
    text_dim: int = 768
    cond_channels: int = 0
    cond_augmentation: bool = False
    mask_condition: bool = False
    guidance_input: bool = False
    dropout: float = 0.0
    dtype: str = "bfloat16"
    attention_impl: str = "auto"
    remat: str = "none"

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> VideoUNet:
        """Build from ``config.model`` (a ConfigDict or dict); unknown keys raise ValueError."""
        values = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
        fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(
                f"unknown VideoUNet config field(s) {unknown}; expected some of {sorted(fields)}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        model = cls(**values)
        check_config(model)
        return model

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def _options(self, train: bool) -> BlockOptions:
        return BlockOptions(
            head_dim=self.head_dim,
            groups=self.norm_groups,
            dtype=jnp.dtype(self.dtype),
            dropout=self.dropout,
            train=train,
            remat=self.remat,
            temporal_max_distance=self.temporal_max_distance,
            attention_impl=None if self.attention_impl == "auto" else self.attention_impl,
        )

    def _block(self, name: str, level: int, features: int, options: BlockOptions):
        """The SpaceTimeBlock of ``level``, with that level's attention and temporal mixing."""
        return SpaceTimeBlock(
            features,
            self.spatial_attention[level],
            self.cross_attention[level],
            self.temporal_mixing[level],
            dataclasses.replace(options, level=level),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        logsnr: jax.Array,
        *,
        text: jax.Array | None = None,
        text_mask: jax.Array | None = None,
        cond: jax.Array | None = None,
        cond_logsnr: jax.Array | None = None,
        frame_mask: jax.Array | None = None,
        known: jax.Array | None = None,
        known_mask: jax.Array | None = None,
        guidance: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Predict (v, eps or x, as trained) for the noisy video ``z`` [B,T,H,W,C] -> float32.

        ``frame_mask`` [B,T] (True = image frame) is accepted by every configuration.
        """
        check_config(self)
        check_inputs(
            self,
            dict(
                z=z,
                logsnr=logsnr,
                text=text,
                text_mask=text_mask,
                cond=cond,
                cond_logsnr=cond_logsnr,
                frame_mask=frame_mask,
                known=known,
                known_mask=known_mask,
                guidance=guidance,
            ),
        )
        dtype = jnp.dtype(self.dtype)
        options = self._options(train)
        batch, frames, height, width, _ = z.shape

        emb = self._embedding(batch, logsnr, text, text_mask, cond_logsnr, guidance)
        video_frames = None if frame_mask is None else ~jnp.asarray(frame_mask).astype(bool)
        if not self.use_text:
            text = text_mask = None
        elif text_mask is not None:
            text_mask = jnp.asarray(text_mask).astype(bool)
            if attention_kernels(options.attention_impl)[1] == "cudnn":  # reads lengths, not masks
                text, text_mask = valid_tokens_first(text, text_mask)

        inputs = [z]
        if self.cond_channels:
            inputs.append(upsample_condition(cond, frames, height, width))
        h = jnp.concatenate(inputs, axis=-1).astype(dtype)
        h = conv(self.channels, (3, 3), dtype, names=(None, "mlp"), name="conv_in")(h)
        h = constrain_video(h)
        condition = self._mask_condition_input(known, known_mask) if self.mask_condition else None

        def condition_at(h, level, path):
            if condition is None:
                return h
            pooled = average_pool_frames(condition, 2**level)
            return MaskCondition(dtype, name=f"{path}_{level}_mask_condition")(h, pooled)

        ctx = (emb, text, text_mask, video_frames)
        skips = []
        for level, mult in enumerate(self.channel_mult):
            h = condition_at(h, level, "down")
            for i in range(self.num_res_blocks[level]):
                h = self._block(f"down_{level}_{i}", level, self.channels * mult, options)(h, *ctx)
                skips.append(h)
            if level < self.num_levels - 1:
                h = Downsample(h.shape[-1], dtype, name=f"down_{level}_resample")(h)

        h = self._block("middle", self.num_levels - 1, h.shape[-1], options)(h, *ctx)

        for level in reversed(range(self.num_levels)):
            h = condition_at(h, level, "up")
            features = self.channels * self.channel_mult[level]
            for i in range(self.num_res_blocks[level]):
                block = self._block(f"up_{level}_{i}", level, features, options)
                h = block(h, *ctx, skip=skips.pop())
            if level > 0:
                h = Upsample(features, dtype, name=f"up_{level}_resample")(h)

        h = FrameGroupNorm(self.norm_groups, dtype, silu=True, name="norm_out")(h)
        out = conv(
            self.out_channels, (3, 3), dtype, zero_init=True, names=("embed", None), name="conv_out"
        )(h)
        return out.astype(jnp.float32)

    def _embedding(self, batch, logsnr, text, text_mask, cond_logsnr, guidance) -> jax.Array:
        """SiLU of the sum of the noise-level, augmentation, guidance and pooled-text embeddings."""
        emb_dtype = jnp.dtype(self.dtype)
        frequencies = 2 * (self.channels // 2)

        def per_example(x):
            return jnp.broadcast_to(jnp.asarray(x, jnp.float32), (batch,))

        emb = ScalarEmbedding(self.emb_channels, frequencies, emb_dtype, name="noise_embedding")(
            per_example(logsnr)
        )
        if self.cond_channels and self.cond_augmentation:
            emb += ScalarEmbedding(
                self.emb_channels, frequencies, emb_dtype, name="cond_noise_embedding"
            )(per_example(cond_logsnr))
        if self.guidance_input:
            emb += ScalarEmbedding(
                self.emb_channels, frequencies, emb_dtype, zero_init=True, name="guidance_embedding"
            )(per_example(guidance))
        if self.use_text:
            pooled = masked_mean(text, jnp.asarray(text_mask).astype(bool))
            emb += dense(
                self.emb_channels, emb_dtype, names=("text_embed", "mlp"), name="text_pool"
            )(pooled)
        return nn.silu(emb)

    @staticmethod
    def _mask_condition_input(known: jax.Array, known_mask: jax.Array) -> jax.Array:
        """Known frames (unknown ones zeroed) and the mask as a last channel: [B,T,H,W,C+1]."""
        gate = jnp.asarray(known_mask).astype(known.dtype)[:, :, None, None, None]
        mask_channel = jnp.broadcast_to(gate, (*known.shape[:-1], 1))
        return jnp.concatenate([known * gate, mask_channel], axis=-1).astype(jnp.float32)

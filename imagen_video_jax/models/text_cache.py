"""Precomputed text embeddings: a dataset's captions go through the frozen encoder once.

A cache is one .npz file: the SHA-256 of each text, its embeddings [N, L, D] and masks [N, L],
and the encoder name and max length it was made with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagen_video_jax.models.text_encoder import TextEncoder, as_text_list

STORAGE_DTYPES = (np.float32, np.float16)


def text_key(text: str) -> str:
    """The cache key of a text: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class EmbeddingCache:
    """Embeddings of texts made by one encoder at one max length, looked up by text."""

    encoder_name: str
    max_length: int
    keys: np.ndarray
    embeddings: np.ndarray
    masks: np.ndarray

    @functools.cached_property
    def _rows(self) -> dict[str, int]:
        return {key: row for row, key in enumerate(self.keys.tolist())}

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._rows

    def lookup(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], mask bool [B, L]) of cached texts."""
        texts = as_text_list(texts)
        missing = [text for text in texts if text not in self]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(texts)} texts are not in the cache, e.g. "
                f"{missing[0]!r:.80}; add them with cache_embeddings"
            )
        rows = [self._rows[text_key(text)] for text in texts]
        return self.embeddings[rows].astype(np.float32), self.masks[rows]


def load_embedding_cache(path: str | os.PathLike) -> EmbeddingCache:
    """Read a cache written by cache_embeddings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no embedding cache at {path}")
    with np.load(path) as data:
        return EmbeddingCache(
            encoder_name=str(data["encoder_name"]),
            max_length=int(data["max_length"]),
            keys=data["keys"],
            embeddings=data["embeddings"],
            masks=data["masks"],
        )


def _encode_in_batches(
    encoder: TextEncoder, texts: list[str], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encode in equal batches (the last padded with empty texts) so one program serves all."""
    size = min(batch_size, len(texts))
    embeddings, masks = [], []
    for start in range(0, len(texts), size):
        batch = texts[start : start + size]
        emb, mask = encoder.encode(batch + [""] * (size - len(batch)))
        embeddings.append(np.asarray(emb)[: len(batch)])
        masks.append(np.asarray(mask)[: len(batch)])
    return np.concatenate(embeddings), np.concatenate(masks)


def _save(cache: EmbeddingCache, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(
            f,
            encoder_name=np.array(cache.encoder_name),
            max_length=np.array(cache.max_length),
            keys=cache.keys,
            embeddings=cache.embeddings,
            masks=cache.masks,
        )
    os.replace(partial, path)


def cache_embeddings(
    encoder: TextEncoder,
    texts: str | Sequence[str],
    path: str | os.PathLike,
    batch_size: int = 64,
    dtype: np.typing.DTypeLike = np.float32,
) -> EmbeddingCache:
    """Encode the texts not yet cached at path (repeats encoded once) and write the cache.

    dtype: storage precision, float32 or float16 (lookups return float32).
    """
    dtype = np.dtype(dtype)
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be float32 or float16; got {dtype}")
    path = Path(path)
    texts = as_text_list(texts)
    if path.is_file():
        cache = load_embedding_cache(path)
        if (cache.encoder_name, cache.max_length) != (encoder.name, encoder.max_length):
            raise ValueError(
                f"{path} holds embeddings of {cache.encoder_name!r} at max_length "
                f"{cache.max_length}; the encoder is {encoder.name!r} at {encoder.max_length}"
            )
    else:
        empty = np.zeros((0, encoder.max_length), bool)
        cache = EmbeddingCache(
            encoder.name,
            encoder.max_length,
            np.zeros((0,), "<U64"),
            np.zeros((0, encoder.max_length, encoder.dim), dtype),
            empty,
        )
    new = {text_key(text): text for text in texts if text not in cache}
    if not new:
        return cache
    embeddings, masks = _encode_in_batches(encoder, list(new.values()), batch_size)
    cache = EmbeddingCache(
        encoder.name,
        encoder.max_length,
        np.concatenate([cache.keys, np.array(list(new), "<U64")]),
        np.concatenate([cache.embeddings, embeddings.astype(cache.embeddings.dtype)]),
        np.concatenate([cache.masks, masks]),
    )
    _save(cache, path)
    return cache

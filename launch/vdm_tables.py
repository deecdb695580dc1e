"""Small-scale analogues of Video Diffusion Models' Tables 4, 5 and 6 on moving digits.

    python launch/vdm_tables.py table4 --out runs/vdm   # 0, 4, 8 appended images: FVD
    python launch/vdm_tables.py table5 --out runs/vdm   # classifier-free guidance weights
    python launch/vdm_tables.py table6 --out runs/vdm   # 64-frame extension: replacement vs
                                                        # reconstruction guidance

Each table trains its model(s) with configs/vdm.py (a run resumes, or is skipped when its
checkpoint is complete, in ``<out>/<table>/<variant>/base``), samples ``--num-samples`` videos
with the EMA params and scores them against as many test clips: FVD and KVD (I3D features), and
for Table 5 caption accuracy when the caption classifier's weights are found. Each table's
first row, "real clips", scores the next ``--num-samples`` test clips as if they were samples:
FVD between two samples of the data itself, below which differences between rows are sampling
noise (``--reference-only`` makes that row alone, without training). Every row is
printed as one JSON line and appended to ``<out>/<table>.jsonl``; the table of every row there,
with commands, seeds, device and run times, is printed last as markdown and written to
``<out>/<table>.md`` (train_s: that invocation's training, near 0 when it found the checkpoint
complete; sample_s includes compiling). A table can be made one variant per invocation
(``table4 --images 0``, then ``--images 4``, ...; ``table6 --methods replacement``, ...): rows
accumulate, and a variant run again replaces its row. Flags set the train steps and sample
counts (on one H200, 500 steps of the default 16x32x32 class model took 150 s with compilation
and start-up, and 64 videos of 64 DDIM steps 30 s).

Class-conditional models (``--cond class``, the default of Tables 4 and 5) can read their
captions' embeddings from a cache instead of running the text encoder (for machines without
its weights): ``python launch/vdm_tables.py text-cache --out classes.npz`` writes the embeddings
of every class caption; pass ``--text-cache classes.npz`` to a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.data import MOTIONS, digits_caption, make_eval_source, make_train_iterator
from imagen_video_jax.eval import (
    frechet_distance_of_features,
    i3d_features,
    kernel_distance,
    load_classifier,
)
from imagen_video_jax.eval.caption_classifier import DEFAULT_WEIGHTS, prompt_labels
from imagen_video_jax.long_video import vdm
from imagen_video_jax.models import VideoUNet, load_text_encoder
from imagen_video_jax.models.text_cache import (
    EmbeddingCache,
    cache_embeddings,
    load_embedding_cache,
)
from imagen_video_jax.train import train, video_to_uint8

CONFIG_FILE = bundled_config_file("vdm")


def log(message: str) -> None:
    print(f"[vdm_tables] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models


def make_config(args: argparse.Namespace, **arguments: Any) -> Any:
    """configs/vdm.py with the table's arguments, --steps, --seed and --set overrides."""
    values = {"size": args.size, "res": args.res, **arguments}
    spec = f"{CONFIG_FILE}:" + ",".join(f"{k}={v}" for k, v in values.items())
    overrides = [
        f"train.num_steps={args.steps}",
        f"train.seed={args.seed}",
        f"data.seed={args.seed}",
        *args.set,
    ]
    return load_config(spec, overrides)


def train_model(config: Any, workdir: Path, cache: EmbeddingCache | None) -> tuple[Any, float]:
    """(EMA params, seconds) of a run trained to config.train.num_steps in ``workdir``, its
    text from ``cache`` when given."""
    log(f"training {workdir} for {config.train.num_steps} steps")
    start = time.perf_counter()
    iterator = None
    if cache is not None:
        iterator = CachedText(make_train_iterator(config), cache)
    state = train(config, workdir, data_iterator=iterator, progress_bar=False)
    params = jax.block_until_ready(state.ema_params)
    return params, time.perf_counter() - start


def class_captions() -> list[str]:
    """Every caption of configs/vdm.py's cond=class data: one digit, straight or bouncing."""
    return [digits_caption([(digit, motion)]) for digit in range(10) for motion in MOTIONS]


def write_text_cache(args: argparse.Namespace) -> None:
    """The text encoder's embeddings of every class caption, in one .npz file."""
    encoder = make_config(args, cond="class").text_encoder
    text_encoder = load_text_encoder(encoder.name, max_length=encoder.max_length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache = cache_embeddings(text_encoder, class_captions(), args.out, dtype=np.float16)
    log(f"wrote {len(cache.keys)} caption embeddings of {encoder.name} to {args.out}")


def open_text_cache(path: Path | None, config: Any) -> EmbeddingCache | None:
    """The cache at ``path`` (None: none), checked against the config's text encoder."""
    if path is None or not config.model.use_text:
        return None
    cache = load_embedding_cache(path)
    encoder = config.text_encoder
    if (cache.encoder_name, cache.max_length) != (encoder.name, encoder.max_length):
        raise ValueError(
            f"{path} holds embeddings of {cache.encoder_name!r} at max_length "
            f"{cache.max_length}; the config's encoder is {encoder.name!r} at {encoder.max_length}"
        )
    return cache


class CachedText:
    """Training batches with their captions' embeddings ('text_emb', 'text_mask') from a
    cache, so the train step needs no text encoder; checkpoints keep the data state."""

    def __init__(self, iterator: Any, cache: EmbeddingCache):
        self.iterator, self.cache = iterator, cache

    def __iter__(self) -> CachedText:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.iterator)
        text_emb, text_mask = self.cache.lookup([str(c) for c in batch["caption"]])
        return {**batch, "text_emb": text_emb, "text_mask": text_mask}

    def get_state(self) -> Any:
        return self.iterator.get_state()

    def set_state(self, state: Any) -> None:
        self.iterator.set_state(state)


class Prompts:
    """Captions as text embeddings for text- and class-conditional models: from the cache
    when there is one, else from the config's text encoder."""

    def __init__(self, config: Any, cache: EmbeddingCache | None):
        self.use_text = bool(config.model.use_text)
        self.cache, self.encoder = cache, None
        if self.use_text and cache is None:
            encoder = config.text_encoder
            self.encoder = load_text_encoder(encoder.name, max_length=encoder.max_length)

    def __call__(self, captions: Sequence[str]) -> dict[str, Any]:
        if not self.use_text:
            return {"batch": len(captions)}
        if self.cache is not None:
            text, text_mask = self.cache.lookup(list(captions))
        else:
            text, text_mask = self.encoder.encode(list(captions))
        return {"text": jnp.asarray(text), "text_mask": jnp.asarray(text_mask)}


def in_batches(
    make: Callable[[int, list[str]], jax.Array], captions: Sequence[str], batch: int
) -> np.ndarray:
    """uint8 videos of ``make(index, captions)`` over batches of ``batch`` captions; the last
    batch is padded to full size, so nothing recompiles."""
    videos = []
    for index, begin in enumerate(range(0, len(captions), batch)):
        chunk = list(captions[begin : begin + batch])
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        video = video_to_uint8(make(index, padded))
        videos.append(np.asarray(video)[: len(chunk)])
        log(f"sampled {begin + len(chunk)} of {len(captions)}")
    return np.concatenate(videos)


def sample_clips(
    sampler: vdm.WindowSampler,
    params: Any,
    prompts: Prompts,
    captions: Sequence[str],
    *,
    guidance_weight: float,
    seed: int,
    batch: int,
) -> np.ndarray:
    """One window per caption, sampled unconditionally (but for the text) and guided by w."""

    def make(index: int, chunk: list[str]) -> jax.Array:
        key = jax.random.fold_in(jax.random.key(seed), index)
        return sampler(params, key, guidance_weight=guidance_weight, **prompts(chunk))

    return in_batches(make, captions, batch)


def extend_clips(
    sampler: vdm.WindowSampler,
    params: Any,
    prompts: Prompts,
    captions: Sequence[str],
    *,
    num_frames: int,
    context_frames: int,
    guidance_weight: float,
    seed: int,
    batch: int,
) -> np.ndarray:
    """One ``num_frames`` video per caption by autoregressive extension."""

    def make(index: int, chunk: list[str]) -> jax.Array:
        window = sampler.bind(params, guidance_weight=guidance_weight, **prompts(chunk))
        return vdm.extend_video(
            window,
            jax.random.fold_in(jax.random.key(seed), index),
            num_frames=num_frames,
            window_frames=sampler.window[0],
            context_frames=context_frames,
        )

    return in_batches(make, captions, batch)


# ----------------------------------------------------------------------------- metrics


# Key of the row that scores real test clips (the next ``num_samples``, disjoint from the
# reference set) as if they were samples: FVD's reading between two samples of the data itself,
# the floor below which differences between rows are sampling noise.
REAL = "real clips"


def real_clips(
    config: Any, count: int, frames: int | None = None, start: int = 0
) -> dict[str, np.ndarray]:
    """``count`` test clips from ``start`` ('video' uint8, 'caption') at the config's shape,
    or ``frames`` long."""
    if frames is not None:
        config = config.copy_and_resolve_references()
        config.stage.frames = frames
    return make_eval_source(config, "test").batch(range(start, start + count))


def distances(real_features: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    fake_features = i3d_features(fake)
    return {
        "fvd": round(frechet_distance_of_features(real_features, fake_features), 3),
        "kvd": round(kernel_distance(real_features, fake_features), 5),
    }


def caption_scores(videos: np.ndarray, captions: Sequence[str], classifier: Any) -> dict:
    """Share of videos whose digit, and whose digit and motion, the classifier reads from
    their caption (None without classifier weights or one-digit captions)."""
    one_digit = []
    for i, caption in enumerate(captions):
        try:
            prompt_labels([caption])
            one_digit.append(i)
        except ValueError:
            continue
    if classifier is None or not one_digit:
        return {"digit_accuracy": None, "caption_accuracy": None}
    digits, motions = prompt_labels([captions[i] for i in one_digit])
    predicted_digits, predicted_motions = classifier.predict(videos[one_digit])
    right_digit = predicted_digits == digits
    return {
        "digit_accuracy": round(float(np.mean(right_digit)), 4),
        "caption_accuracy": round(float(np.mean(right_digit & (predicted_motions == motions))), 4),
    }


# ----------------------------------------------------------------------------- reporting


class Report:
    """Rows as JSON lines (printed and appended to ``<out>/<table>.jsonl``), then the markdown
    table of every row in that file, so a table may be made over several invocations (one
    variant each: ``--images 0``, then ``--images 4``, ...); a variant run again replaces its
    row."""

    def __init__(self, out: Path, table: str, title: str, args: argparse.Namespace):
        self.out, self.table, self.title, self.args = out, table, title, args
        self.path = out / f"{table}.jsonl"
        self.command = "python launch/vdm_tables.py " + shlex.join(sys.argv[1:])
        device = jax.devices()[0]
        self.device = f"{jax.device_count()} x {device.device_kind}, JAX {jax.__version__}"
        out.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        row = {
            "table": self.table,
            **row,
            "num_samples": self.args.num_samples,
            "seed": self.args.seed,
            "device": self.device,
            "command": self.command,
        }
        line = json.dumps(row)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def finish(self, columns: Sequence[str], key: Sequence[str], note: str) -> str:
        rows = {}
        for line in self.path.read_text().splitlines():
            row = json.loads(line)
            rows[tuple(row.get(k) for k in key)] = row
        columns = [*columns, "num_samples", "seed"]
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for row in rows.values():
            cells = ["n/a" if row.get(c) is None else str(row.get(c)) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", note, "", "Commands (seed: training, data and sampling):", ""]
        runs = dict.fromkeys((row["command"], row["device"]) for row in rows.values())
        lines += [f"- `{command}` on {device}" for command, device in runs]
        text = "\n".join(lines) + "\n"
        (self.out / f"{self.table}.md").write_text(text)
        print(text, flush=True)
        return text


def describe(config: Any) -> str:
    stage = config.stage
    return f"{stage.frames}x{stage.height}x{stage.width} moving digits at {stage.fps:g} fps"


def sampler_for(config: Any, args: argparse.Namespace, **options: Any) -> vdm.WindowSampler:
    """A WindowSampler of the config's model and window with --sampler and --sample-steps."""
    model = VideoUNet.from_config(config.model)
    stage = config.stage
    window = (stage.frames, stage.height, stage.width, model.out_channels)
    sampling = vdm.sampling_from_config(
        config, sampler=args.sampler, num_steps=args.sample_steps, **options
    )
    return vdm.WindowSampler(model, window, sampling)


# ----------------------------------------------------------------------------- the tables


def table4(args: argparse.Namespace) -> None:
    """FVD of models trained with 0, 4 and 8 images appended to each clip."""
    report = Report(args.out, "table4", "VDM Table 4 analogue: joint image-video training", args)
    first = make_config(args, images=args.images[0], cond=args.cond)
    real = real_clips(first, args.num_samples)
    real_features = i3d_features(real["video"])
    second = real_clips(first, args.num_samples, start=args.num_samples)
    report.add({"images": REAL, **distances(real_features, second["video"])})
    cache = open_text_cache(args.text_cache, first)
    prompts = Prompts(first, cache)
    for images in [] if args.reference_only else args.images:
        config = make_config(args, images=images, cond=args.cond)
        params, train_s = train_model(config, args.out / "table4" / f"images{images}", cache)
        start = time.perf_counter()
        fake = sample_clips(
            sampler_for(config, args),
            params,
            prompts,
            list(real["caption"]),
            guidance_weight=args.guidance,
            seed=args.seed,
            batch=args.batch,
        )
        sample_s = time.perf_counter() - start
        report.add(
            {
                "images": images,
                **distances(real_features, fake),
                "cond": args.cond,
                "train_steps": args.steps,
                "train_s": round(train_s, 1),
                "sample_s": round(sample_s, 1),
                "guidance": args.guidance,
            }
        )
    report.finish(
        ["images", "fvd", "kvd", "train_steps", "train_s", "sample_s"],
        ["images"],
        f"{describe(first)}, cond={args.cond}, {args.sampler} "
        f"{args.sample_steps} steps, guidance w={args.guidance}. Paper (text-to-video, FVD): "
        "202.28 with 0 images, 68.11 with 4, 57.84 with 8.",
    )


def table5(args: argparse.Namespace) -> None:
    """FVD and caption accuracy over classifier-free guidance weights of one model."""
    report = Report(args.out, "table5", "VDM Table 5 analogue: classifier-free guidance", args)
    config = make_config(args, images=args.images[0], cond=args.cond)
    real = real_clips(config, args.num_samples)
    real_features = i3d_features(real["video"])
    classifier = load_classifier(args.classifier) if Path(args.classifier).is_file() else None
    if classifier is None:
        log(f"no caption classifier at {args.classifier}: caption accuracy is left out")
    second = real_clips(config, args.num_samples, start=args.num_samples)
    scores = caption_scores(second["video"], list(second["caption"]), classifier)
    report.add({"guidance": REAL, **distances(real_features, second["video"]), **scores})
    weights = [] if args.reference_only else args.weights
    cache = open_text_cache(args.text_cache, config)
    if weights:
        params, train_s = train_model(config, args.out / "table5" / f"{args.cond}", cache)
    prompts = Prompts(config, cache)
    sampler = sampler_for(config, args)
    for weight in weights:
        start = time.perf_counter()
        fake = sample_clips(
            sampler,
            params,
            prompts,
            list(real["caption"]),
            guidance_weight=weight,
            seed=args.seed,
            batch=args.batch,
        )
        sample_s = time.perf_counter() - start
        report.add(
            {
                "guidance": weight,
                **distances(real_features, fake),
                **caption_scores(fake, list(real["caption"]), classifier),
                "cond": args.cond,
                "images": args.images[0],
                "train_steps": args.steps,
                "train_s": round(train_s, 1),
                "sample_s": round(sample_s, 1),
            }
        )
    report.finish(
        ["guidance", "fvd", "kvd", "caption_accuracy", "digit_accuracy", "sample_s"],
        ["guidance"],
        f"One {args.cond}-conditional model of {describe(config)} ({args.images[0]} appended "
        f"images, {args.steps} steps); guided prediction (1 + w) cond - w null. "
        "Caption accuracy: the bundled classifier reads digit and motion (one-digit prompts).",
    )


def table6(args: argparse.Namespace) -> None:
    """FVD of long videos made by extension with replacement vs reconstruction guidance."""
    report = Report(args.out, "table6", "VDM Table 6 analogue: autoregressive extension", args)
    config = make_config(args, images=args.images[0], cond=args.cond, motion="bounce")
    window = int(config.stage.frames)
    real = real_clips(config, args.num_samples, frames=args.frames)
    real_features = i3d_features(real["video"])
    real_last = i3d_features(real["video"][:, -window:])
    second = real_clips(config, args.num_samples, frames=args.frames, start=args.num_samples)
    report.add(
        {
            "method": REAL,
            **distances(real_features, second["video"]),
            "fvd_last_window": distances(real_last, second["video"][:, -window:])["fvd"],
            "frames": args.frames,
        }
    )
    variants = [("replacement", 0.0)] if "replacement" in args.methods else []
    if "reconstruction" in args.methods:
        variants += [("reconstruction", w) for w in args.recon_weights]
    if args.reference_only:
        variants = []
    cache = open_text_cache(args.text_cache, config)
    if variants:
        params, train_s = train_model(config, args.out / "table6" / f"{args.cond}", cache)
    prompts = Prompts(config, cache)
    for method, weight in variants:
        start = time.perf_counter()
        fake = extend_clips(
            sampler_for(config, args, method=method, weight=weight),
            params,
            prompts,
            list(real["caption"]),
            num_frames=args.frames,
            context_frames=args.context,
            guidance_weight=args.guidance,
            seed=args.seed,
            batch=args.batch,
        )
        sample_s = time.perf_counter() - start
        last = distances(real_last, fake[:, -window:])
        report.add(
            {
                "method": method,
                "w_r": weight if method == "reconstruction" else None,
                **distances(real_features, fake),
                "fvd_last_window": last["fvd"],
                "frames": args.frames,
                "context": args.context,
                "cond": args.cond,
                "train_steps": args.steps,
                "train_s": round(train_s, 1),
                "sample_s": round(sample_s, 1),
            }
        )
    report.finish(
        ["method", "w_r", "fvd", "kvd", "fvd_last_window", "sample_s"],
        ["method", "w_r"],
        f"{args.frames} frames from a model of {describe(config)} (bouncing, cond={args.cond}, "
        f"{args.images[0]} appended images, {args.steps} steps): "
        f"a first window, then windows with the last {args.context} frames known. "
        "fvd_last_window: the last window's frames against the real clips' last frames. "
        "Paper (64 frames, FVD): 451.45 replacement, 136.22 reconstruction guidance.",
    )


TABLES = {"table4": table4, "table5": table5, "table6": table6, "text-cache": write_text_cache}
TABLE_DEFAULTS = {  # per table: appended images, conditioning, videos per row
    "table4": {"images": [0, 4, 8], "cond": "class", "num_samples": 256},
    "table5": {"images": [4], "cond": "class", "num_samples": 256},
    "table6": {"images": [4], "cond": "none", "num_samples": 128},
    "text-cache": {"images": [0], "cond": "class", "num_samples": 2},
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument(
        "--out", type=Path, default=Path("runs/vdm"), help="runs and results (text-cache: file)"
    )
    parser.add_argument("--text-cache", type=Path, help="caption embeddings (cond=class)")
    parser.add_argument("--steps", type=int, default=3000, help="train steps per model")
    parser.add_argument("--res", type=int, default=32, choices=(32, 64), help="frame side")
    parser.add_argument(
        "--size", default="small", choices=("small", "tiny"), help="tiny: a CPU smoke run"
    )
    parser.add_argument(
        "--images", type=int, nargs="+", help="appended images (table4: each; others: one)"
    )
    parser.add_argument("--cond", choices=("none", "class", "text"), help="model conditioning")
    parser.add_argument("--num-samples", type=int, help="videos per row (table4/5: 256, 6: 128)")
    parser.add_argument("--batch", type=int, default=64, help="videos sampled together")
    parser.add_argument("--sampler", default="ddim", help="ddim | ancestral | stochastic | pc")
    parser.add_argument("--sample-steps", type=int, default=128, help="sampling steps per window")
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free w (table4, table6)"
    )
    parser.add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0], help="table5: w"
    )
    parser.add_argument("--frames", type=int, default=64, help="table6: frames to extend to")
    parser.add_argument("--context", type=int, default=8, help="table6: known frames a window")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=vdm.METHODS,
        default=["replacement", "reconstruction"],
        help="table6: conditioning methods",
    )
    parser.add_argument(
        "--recon-weights", type=float, nargs="+", default=[2.0], help="table6: w_r values"
    )
    parser.add_argument("--classifier", default=str(DEFAULT_WEIGHTS), help="table5: weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="only the real-clips row (FVD between two sets of test clips): no training",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    defaults = TABLE_DEFAULTS[args.table]
    args.images = args.images or defaults["images"]
    args.cond = args.cond or defaults["cond"]
    args.num_samples = args.num_samples or defaults["num_samples"]
    if args.cond == "none":
        args.guidance, args.weights = 0.0, [0.0]
    if args.num_samples < 2 or args.batch < 1:
        parser.error("--num-samples must be >= 2 and --batch >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jnp.zeros(()).block_until_ready()  # start the backend before the clocks
    TABLES[args.table](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper-table scripts of launch/: their argument checks and the commands they build."""

import concurrent.futures
import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vdm_tables():
    return load_script("vdm_tables")


@pytest.fixture(scope="module")
def stage_fixed_cost():
    return load_script("stage_fixed_cost")


@pytest.fixture(scope="module")
def distill_table1():
    return load_script("distill_table1")


@pytest.fixture(scope="module")
def stage_probe():
    return load_script("stage_probe")


def test_reference_clips_are_the_next_test_clips(vdm_tables):
    """The "real clips" row scores test clips disjoint from the reference set."""
    argv = ["table6", "--size", "tiny", "--num-samples", "3", "--reference-only"]
    args = vdm_tables.parse_args(argv)
    assert args.reference_only
    config = vdm_tables.make_config(args, images=0, cond="none", motion="bounce")
    both = vdm_tables.real_clips(config, 6, frames=8)
    first = vdm_tables.real_clips(config, 3, frames=8)
    second = vdm_tables.real_clips(config, 3, frames=8, start=3)
    np.testing.assert_array_equal(first["video"], both["video"][:3])
    np.testing.assert_array_equal(second["video"], both["video"][3:])
    assert second["video"].shape[1] == 8
    assert not np.array_equal(first["video"], second["video"])


def _table1_args(distill_table1, tmp_path, *argv):
    cache = tmp_path / "captions.npz"
    cache.touch()
    return distill_table1.parse_args(["--text-cache", str(cache), *argv])


def _sets(command):
    return [command[i + 1] for i, part in enumerate(command) if part == "--set"]


def test_table1_distill_command_sets_every_round_to_the_steps_asked(distill_table1, tmp_path):
    args = _table1_args(distill_table1, tmp_path, "--steps-per-round", "400", "--batch", "4")
    command = distill_table1.distill_command(args, "ssr3")
    assert command[command.index("--config") + 1] == "configs/imagen_video.py:stage=ssr3,size=mini"
    sets = _sets(command)
    for wanted in (
        "distill.guided_steps=400",
        "distill.steps_per_round=400",
        "distill.warmup_steps=40",
        "train.checkpoint_every=400",
        "data.batch_size=4",
        "data.num_workers=8",
    ):
        assert wanted in sets
    ssr2 = _sets(distill_table1.distill_command(args, "ssr2"))
    assert "data.num_workers=2" in ssr2
    assert not any(s.startswith("data.crop") for s in ssr2)  # distilled on its training crops


def test_fixed_cost_times_the_loop_sample_stage_runs(stage_fixed_cost):
    """The loop timed alone is the computation of sample_stage: the same video, bit for bit."""
    from imagen_video_jax.cascade import Cascade

    cascade = Cascade.from_random_init("tiny", stop_after="tsr1", overrides=["model.dtype=float32"])
    cond = np.random.default_rng(0).integers(0, 256, (1, 2, 8, 8, 3), dtype=np.uint8)
    for sampler in ("ddim", "stochastic"):
        alone = stage_fixed_cost.loop_call(cascade, "tsr1", cond, 2, sampler)()
        whole = cascade.sample_stage(
            "tsr1", [stage_fixed_cost.PROMPT], cond=cond, num_steps=2, sampler=sampler
        )
        np.testing.assert_array_equal(np.asarray(alone), whole)


class _FakeDistill:
    """Stands in for the `imagen-video distill` processes: each run writes its output to the
    stage's log, takes its seconds and exits with its code (a queue of runs a stage); the
    (stage, start, end) of every run are kept."""

    def __init__(self, outcomes):
        self.outcomes = {stage: list(runs) for stage, runs in outcomes.items()}
        self.runs = []

    def __call__(self, command, cwd, env, stdout, stderr):
        stage = command[command.index("--config") + 1].split("stage=")[1].split(",")[0]
        output, seconds, code = self.outcomes[stage].pop(0)
        start = time.monotonic()
        time.sleep(seconds)
        stdout.write(output)
        stdout.flush()
        self.runs.append((stage, start, time.monotonic()))
        return type("Completed", (), {"returncode": code})()


def _run_students(distill_table1, args, fake, monkeypatch):
    monkeypatch.setattr(distill_table1.subprocess, "run", fake)
    with concurrent.futures.ThreadPoolExecutor(len(fake.outcomes)) as pool:
        running = {s: pool.submit(distill_table1.distill_stage, args, s) for s in fake.outcomes}
        return distill_table1.finish_students(args, running)


def test_table1_distills_a_student_that_ran_out_of_memory_again_once_the_rest_stopped(
    distill_table1, tmp_path, monkeypatch
):
    args = _table1_args(distill_table1, tmp_path, "--workdir", str(tmp_path / "run"))
    oom = "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate"
    fake = _FakeDistill(
        {"ssr3": [(oom, 0, 1), ("distilled ssr3\n", 0, 0)], "base": [("done\n", 0.3, 0)]}
    )
    seconds = _run_students(distill_table1, args, fake, monkeypatch)
    assert [stage for stage, _, _ in fake.runs] == ["ssr3", "base", "ssr3"]
    (_, _, base_end), (_, retry_start, _) = fake.runs[1:]
    assert retry_start >= base_end  # alone: only once base has stopped
    assert set(seconds) == {"ssr3", "base"}
    log = (tmp_path / "run" / "students" / "ssr3.log").read_text()
    assert log.startswith(oom) and log.endswith("distilled ssr3\n")  # the retry appends


def test_table1_stops_on_a_student_that_failed_otherwise(distill_table1, tmp_path, monkeypatch):
    args = _table1_args(distill_table1, tmp_path, "--workdir", str(tmp_path / "run"))
    # An out-of-memory line left in the log by an earlier run does not count as this run's.
    log = tmp_path / "run" / "students" / "ssr3.log"
    log.parent.mkdir(parents=True)
    log.write_text("RESOURCE_EXHAUSTED: Out of memory (an earlier run)\n")
    fake = _FakeDistill({"ssr3": [("ValueError: bad config\n", 0, 1)]})
    with pytest.raises(RuntimeError, match="distilling ssr3 failed") as failure:
        _run_students(distill_table1, args, fake, monkeypatch)
    assert not isinstance(failure.value, distill_table1.StudentOutOfMemory)
    assert len(fake.runs) == 1


def test_table1_stage_steps_override_the_rounds_of_the_stages_named(distill_table1, tmp_path):
    args = _table1_args(distill_table1, tmp_path, "--stage-steps", "ssr3=1000")
    ssr3 = _sets(distill_table1.distill_command(args, "ssr3"))
    assert "distill.steps_per_round=1000" in ssr3 and "distill.guided_steps=1000" in ssr3
    assert "train.checkpoint_every=1000" in ssr3
    assert "distill.steps_per_round=400" in _sets(distill_table1.distill_command(args, "tsr3"))
    assert distill_table1.rounds_text(args) == "400 (ssr3 1000)"
    for bad in ("1000", "ssr9=10"):
        with pytest.raises(SystemExit):
            _table1_args(distill_table1, tmp_path, "--stage-steps", bad)


def test_table1_stage_set_overrides_only_the_stage_named(distill_table1, tmp_path):
    args = _table1_args(
        distill_table1, tmp_path, "--set", "data.batch_size=6",
        "--stage-set", "ssr3:data.crop_height=0", "--stage-set", "ssr3:data.batch_size=4",
    )  # fmt: skip
    ssr3 = _sets(distill_table1.distill_command(args, "ssr3"))
    assert "data.crop_height=0" in ssr3
    # After the script's own batch and --set, so that the stage's value wins.
    batches = [value for value in ssr3 if value.startswith("data.batch_size=")]
    assert batches == [
        "data.batch_size=8", "data.batch_size=4", "data.batch_size=6", "data.batch_size=4"
    ]  # fmt: skip
    tsr3 = _sets(distill_table1.distill_command(args, "tsr3"))
    assert "data.crop_height=0" not in tsr3 and "data.batch_size=4" not in tsr3
    for bad in ("ssr3=data.batch_size=4", "ssr9:data.batch_size=4", "ssr3:data.batch_size"):
        with pytest.raises(SystemExit):
            _table1_args(distill_table1, tmp_path, "--stage-set", bad)


def test_table1_distills_ssr3_on_whole_frames_by_default(distill_table1, tmp_path):
    """ssr3 learns on the whole frames it samples (its training crops cost it caption
    accuracy), at batch 4; the other stages keep their teachers' crops and --batch."""
    args = _table1_args(distill_table1, tmp_path)
    ssr3 = _sets(distill_table1.distill_command(args, "ssr3"))
    for setting in ("data.crop_height=0", "data.crop_width=0", "data.batch_size=4"):
        assert setting in ssr3
    assert ssr3.index("data.batch_size=4") > ssr3.index("data.batch_size=8")  # it wins
    tsr3 = _sets(distill_table1.distill_command(args, "tsr3"))
    assert not any(value.startswith("data.crop_") for value in tsr3)
    assert [v for v in tsr3 if v.startswith("data.batch_size=")] == ["data.batch_size=8"]


def test_table1_links_a_student_given_instead_of_distilling_it(distill_table1, tmp_path):
    """--student ssr3=DIR: the distilled cascade links DIR for ssr3, the workdir's students for
    the stages distilled, and the teachers for the rest."""
    given = tmp_path / "whole_frames" / "ssr3"
    given.mkdir(parents=True)
    args = _table1_args(
        distill_table1, tmp_path, "--workdir", str(tmp_path / "run"), "--student", f"ssr3={given}"
    )
    assert args.student == {"ssr3": given.resolve()}
    folder = distill_table1.distilled_folder(args, ["base", "tsr1", "ssr3"], ["base", "ssr3"])
    assert (folder / "ssr3").resolve() == given.resolve()
    assert (folder / "base").resolve() == (args.workdir / "students" / "base").resolve()
    assert (folder / "tsr1").resolve() == (args.cascade / "tsr1").resolve()
    for bad in (f"ssr9={given}", str(given), f"ssr3={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit):
            _table1_args(distill_table1, tmp_path, "--student", bad)


class _SlowCascade:
    """Stands in for a cascade whose stage takes the given seconds, run after run."""

    stage_names = ["base"]

    def __init__(self, seconds):
        self.seconds = list(seconds)

    def sample_stage(self, name, prompts, cond, seed):
        time.sleep(self.seconds.pop(0))
        return np.zeros((len(prompts), 1))


def test_table1_times_the_median_of_three_runs_by_default(distill_table1, tmp_path):
    """A slow first run (as the first after compiling can be) does not set the timing."""
    repeats = _table1_args(distill_table1, tmp_path).repeats
    assert repeats == 3
    timing = distill_table1.speed(_SlowCascade([0.3, 0.02, 0.05]), [1], repeats)
    assert 0.02 <= timing[1]["base"] < 0.1 and timing[1]["base"] == timing[1]["total"]


def _earlier_run(path, **cascade_fields):
    """A table1.jsonl as a run writes it: the original's stage and cascade records, then the
    distilled cascade's."""
    stage = {"table": "distill_table1_stage", "variant": "original", "stage": "base", "fvd": 230.0}
    cascade = {"table": "distill_table1_cascade", "variant": "original", "fvd": 2063.4}
    cascade.update(device="NVIDIA H200", jax="0.11.2", **cascade_fields)
    distilled = {**cascade, "variant": "distilled", "fvd": 2636.0}
    path.write_text("".join(json.dumps(r) + "\n" for r in (stage, cascade, distilled)))
    return path


def test_table1_takes_the_original_from_an_earlier_run_of_the_same_kind(distill_table1, tmp_path):
    args = _table1_args(distill_table1, tmp_path)
    settings = distill_table1.run_settings(args)
    assert settings["cascade"] == "imagen_video_jax/assets/demo_cascade"  # the same anywhere
    info = {"device": "NVIDIA H200", "jax": "0.11.2"}
    earlier = _earlier_run(tmp_path / "old.jsonl", **settings)
    rows, summary = distill_table1.earlier_original(earlier, settings, info)
    assert [r["stage"] for r in rows] == ["base"] and summary["fvd"] == 2063.4
    # A run from before the settings were recorded is checked on device and JAX alone.
    older = _earlier_run(tmp_path / "older.jsonl")
    assert distill_table1.earlier_original(older, settings, info)[1]["fvd"] == 2063.4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"device": "NVIDIA H100"}, "device 'NVIDIA H200' (here 'NVIDIA H100')"),
        ({"jax": "0.10.2"}, "jax '0.11.2' (here '0.10.2')"),
        ({"num_samples": 64}, "num_samples 40 (here 64)"),
    ],
)
def test_table1_refuses_an_original_measured_otherwise(distill_table1, tmp_path, change, message):
    args = _table1_args(distill_table1, tmp_path)
    settings = distill_table1.run_settings(args)
    earlier = _earlier_run(tmp_path / "old.jsonl", **settings)
    info = {"device": "NVIDIA H200", "jax": "0.11.2"}
    here = {**settings, **{k: v for k, v in change.items() if k in settings}}
    with pytest.raises(SystemExit, match=re.escape(message)):
        distill_table1.earlier_original(earlier, here, {**info, **change})


@pytest.mark.parametrize("reuse", [True, False])
def test_table1_with_an_earlier_original_measures_only_the_students(
    distill_table1, tmp_path, monkeypatch, reuse
):
    """The whole run (--skip-distill, with and without --original-from) with the GPU work
    stood in for: given an earlier original, the distilled cascade alone is scored and timed,
    and the table compares it with the earlier original's figures."""
    import imagen_video_jax.cascade as cascade_module
    import imagen_video_jax.eval.cascade_eval as cascade_eval
    import imagen_video_jax.models.text_cache as text_cache
    from imagen_video_jax.bench.measure import device_description

    workdir = tmp_path / "run"
    argv = ["--skip-distill", "--workdir", str(workdir)]
    argv += ["--original-from", str(tmp_path / "old.jsonl")] if reuse else []
    args = _table1_args(distill_table1, tmp_path, *argv)
    names = list(cascade_module.stage_dirs(args.cascade))
    earlier = {
        "table": "distill_table1_cascade", "variant": "original", "steps": "base 256",
        "model_calls": 2048, "tflop_per_sample": 320.0, "seconds_batch_1": 6.0,
        "seconds_batch_n": 7.0, "caption_accuracy": 0.85, "fvd": 2000.0, "kvd": 1.0,
        **device_description(), **distill_table1.run_settings(args),
    }  # fmt: skip
    stages = [
        {"table": "distill_table1_stage", "variant": "original", "stage": name, "shape": "4x16x16",
         "sampler": "ddim", "num_steps": 128, "model_calls": 256, "tflop_per_sample": 1.0,
         "caption_accuracy": 0.9, "fvd": 2000.0, "kvd": 1.0, "stage_seconds_batch_1": 0.5,
         "stage_seconds_per_sample": 0.5}
        for name in names
    ]  # fmt: skip
    lines = [json.dumps(r) + "\n" for r in (*stages, earlier)]
    (tmp_path / "old.jsonl").write_text("".join(lines))

    done = concurrent.futures.Future()
    done.set_result(1e12)
    measured = []
    monkeypatch.setattr(text_cache, "load_embedding_cache", lambda path: {})
    monkeypatch.setattr(cascade_eval, "CachedTextEncoder", lambda cache: None)
    monkeypatch.setattr(
        cascade_module.Cascade, "from_checkpoints", classmethod(lambda cls, folder, **_: folder)
    )
    monkeypatch.setattr(
        distill_table1,
        "stage_costs",
        lambda cascade, pool: {
            n: {"sampler": "stochastic", "num_steps": 8, "guidance": "input", "model_calls": 8,
                "flops": done}
            for n in names
        },
    )  # fmt: skip
    monkeypatch.setattr(distill_table1, "compile_loops", lambda cascade, batches: 1.0)

    def evaluate(args, cascade):
        measured.append(cascade)
        score = {"shape": (4, 16, 16), "caption_accuracy": 0.8, "fvd": 2400.0, "kvd": 2.0}
        return {n: score for n in names}

    monkeypatch.setattr(distill_table1, "evaluate", evaluate)
    timing = {n: 0.01 for n in names}
    speeds = {1: {**timing, "total": 0.25}, 8: {**timing, "total": 0.35}}
    monkeypatch.setattr(distill_table1, "speed", lambda cascade, batches, repeats: speeds)
    monkeypatch.setattr(distill_table1, "parse_args", lambda argv: args)

    assert distill_table1.main([]) == 0
    records = [json.loads(r) for r in (workdir / "table1.jsonl").read_text().splitlines()]
    markdown = (workdir / "table1.md").read_text()
    if not reuse:  # both measured alike: no speedup, and the stub scores on both sides
        assert measured == [args.cascade, workdir / "distilled_cascade"]
        assert records[-1]["speedup_batch_1"] == 1.0 and records[-1]["fvd_ratio"] == 1.0
        assert len(records) == 2 * len(names) + 3 and "earlier run" not in markdown
        return
    assert measured == [workdir / "distilled_cascade"]  # the original is not measured again
    assert records[: len(names)] == stages
    assert records[-1]["speedup_batch_1"] == pytest.approx(6.0 / 0.25)
    assert records[-1]["fvd_ratio"] == pytest.approx(1.2)
    assert records[-1]["caption_accuracy_change"] == pytest.approx(-0.05)
    assert "figures are those of an earlier run" in markdown


def _probe_chain(tmp_path):
    """A two-stage chain of small random stages (2 steps each) and a caption cache of the
    first 5 held-out prompts: (folder, cache, prompts)."""
    from test_eval_cascade import HashEncoder, small_stage

    from imagen_video_jax.cascade import Cascade
    from imagen_video_jax.eval.cascade_eval import held_out_prompts
    from imagen_video_jax.models.text_cache import cache_embeddings

    configs = [small_stage("base", "attention"), small_stage("tsr1", "conv")]
    for config in configs:
        config.sample.num_steps = 2
    folder, cache = tmp_path / "cascade", tmp_path / "captions.npz"
    Cascade.from_configs(configs).save(folder, dtype="float32")
    prompts = held_out_prompts(5)
    cache_embeddings(HashEncoder(), prompts, cache)
    return folder, cache, prompts


def test_stage_probe_samples_the_stage_from_the_chains_own_input(stage_probe, tmp_path):
    """A variant that is the chain itself reproduces the chain's own output of the stage (the
    same input videos and seeds, in batches of 2 with the last one padded); another seed gives
    other videos; each variant is scored and saved."""
    from imagen_video_jax.cascade import Cascade
    from imagen_video_jax.eval.cascade_eval import with_text_cache

    folder, cache, prompts = _probe_chain(tmp_path)
    out = tmp_path / "probe"
    argv = [
        "--chain", str(folder), "--stage", "tsr1", "--text-cache", str(cache), "--out", str(out),
        "--variant", f"same={folder}", "--variant", f"reseeded={folder}:seed=100",
        "--num-samples", "5", "--batch", "2", "--no-fvd",
    ]  # fmt: skip
    assert stage_probe.main(argv) == 0
    want = with_text_cache(Cascade.from_checkpoints(folder), cache, prompts).sample(
        prompts, seed=0, progress=False
    )
    same, reseeded = np.load(out / "same.npy"), np.load(out / "reseeded.npy")
    difference = np.abs(same.astype(int) - want[: len(same)])
    assert difference.max() <= 1 and difference.mean() < 0.01  # uint8 rounding at most
    assert np.abs(reseeded.astype(int) - same).mean() > 5
    records = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in records] == [("same", 0), ("reseeded", 100)]
    assert all(0 <= r["caption_accuracy"] <= 1 and r["fvd"] is None for r in records)
    assert (out / "probe.md").read_text().count("\n") == 4


def test_stage_probe_reads_the_input_videos_it_kept(stage_probe, tmp_path, monkeypatch):
    """With --inputs, the first probe writes the chain's videos and a second one reads them
    instead of sampling the chain (same output); a file made with another seed is refused."""
    folder, cache, _ = _probe_chain(tmp_path)
    inputs = tmp_path / "inputs.npz"

    def probe(out, *more):
        argv = [
            "--chain", str(folder), "--stage", "tsr1", "--text-cache", str(cache),
            "--out", str(tmp_path / out), "--variant", f"same={folder}", "--num-samples", "3",
            "--batch", "3", "--no-fvd", "--inputs", str(inputs), *more,
        ]  # fmt: skip
        assert stage_probe.main(argv) == 0
        return np.load(tmp_path / out / "same.npy")

    first = probe("first")
    assert inputs.exists()

    def no_sampling(*args, **kwargs):
        raise AssertionError("the chain was sampled again")

    monkeypatch.setattr(stage_probe, "input_videos", no_sampling)
    np.testing.assert_array_equal(probe("second"), first)
    with pytest.raises(SystemExit, match="'seed': 0.*'seed': 4"):
        probe("third", "--seed", "4")


def test_stage_probe_names_a_malformed_variant(stage_probe):
    with pytest.raises(SystemExit):
        stage_probe.parse_args(["--chain", "c", "--stage", "ssr3", "--text-cache", "t",
                                "--out", "o", "--variant", "a=dir:stepz=8"])  # fmt: skip
    name, folder, options = stage_probe.parse_variant("fast=dir/x:steps=8:sampler=ddim:guidance=7")
    assert (name, str(folder)) == ("fast", "dir/x")
    assert options == {"steps": 8, "sampler": "ddim", "guidance": 7.0}

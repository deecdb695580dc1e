"""The paper-table scripts of launch/: their argument checks and the commands they build."""

import concurrent.futures
import importlib.util
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
    assert not any(s.startswith("data.crop") for s in sets)  # distilled on its training crops
    assert "data.num_workers=2" in _sets(distill_table1.distill_command(args, "ssr2"))


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


def test_table1_times_the_median_of_three_runs_by_default(distill_table1, tmp_path):
    assert _table1_args(distill_table1, tmp_path).repeats == 3

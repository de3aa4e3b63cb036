"""Killed during a checkpoint save, a run resumes from the last complete one and continues exactly.

The training process is really SIGKILLed (``POSE_TEST_KILL_DURING_SAVE``: right after its shards of
iteration 4 are on disk, before the rename that publishes them), then restarted with ``--load``;
with the GPTModel and (megatron-core 0.19+) the HybridModel, whose checkpoints have their own
layout.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from pose_megatron.checkpoint import resumable
from tests.distributed import child_env
from tests.model_classes import ONE_PER_RELEASE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, name, extra, env_extra=None):
    log = tmp_path / f"{name}.jsonl"
    argv = [sys.executable, "-m", "pose_megatron.train", "--mock-data", "--device", "cpu",
            "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--vocab-size", "256", "--pose-train-len", "32", "--pose-target-len", "128",
            "--rope-scaling-type", "linear", "--micro-batch-size", "2", "--global-batch-size",
            "4", "--train-iters", "6", "--lr", "1e-3", "--lr-warmup-iters", "2", "--seed", "11",
            "--log-json", str(log), *extra]
    env = child_env(OMP_NUM_THREADS="1")
    env.pop(resumable.KILL_DURING_SAVE_ENV, None)
    env.update(env_extra or {})
    # Own session: after a SIGKILL, the helper processes Megatron's checkpoint writer started
    # (a multiprocessing manager) outlive their parent and hold the pipes; we end them by group.
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fo, stderr=fe,
                                start_new_session=True)
    try:
        proc.wait(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.stdout_text, proc.stderr_text = out.read_text(), err.read_text()
    steps = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, steps


@pytest.mark.parametrize("model_class", ONE_PER_RELEASE)
def test_kill_during_save_then_resume_matches_uninterrupted(tmp_path, model_class):
    model = ["--model-class", model_class]
    ran, straight = _run(tmp_path, "straight", model)
    assert [s["iteration"] for s in straight] == [1, 2, 3, 4, 5, 6], ran.stderr_text[-3000:]

    ckpt = tmp_path / "ckpt"
    save = ["--save", str(ckpt), "--save-interval", "2", *model]
    killed, first = _run(tmp_path, "killed", save, {resumable.KILL_DURING_SAVE_ENV: "4"})
    assert killed.returncode == -9, killed.stderr_text[-2000:]
    assert [s["iteration"] for s in first] == [1, 2, 3, 4]
    # Iteration 4's shards are there but unpublished; the tracker still names iteration 2.
    assert (ckpt / "iter_0000004.tmp").is_dir()
    assert not (ckpt / "iter_0000004").exists()
    assert resumable.read_tracker(str(ckpt)) == 2

    resumed_proc, resumed = _run(tmp_path, "resumed", ["--load", str(ckpt), *save])
    assert resumed_proc.returncode == 0, resumed_proc.stderr_text[-2000:]
    assert "loaded iteration 2" in resumed_proc.stdout_text
    assert [s["iteration"] for s in resumed] == [3, 4, 5, 6]
    # Same samples, weights, Adam moments and LR schedule: bit-identical losses on the CPU.
    for got, want in zip(resumed, straight[2:]):
        assert got["loss"] == want["loss"]
        assert got["lr"] == want["lr"]
        assert got["grad_norm"] == want["grad_norm"]
    assert resumable.read_tracker(str(ckpt)) == 6
    assert not (ckpt / "iter_0000004.tmp").exists()  # replaced by the complete save
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "iter_0000002", "iter_0000004", "iter_0000006", "latest_checkpointed_iteration.txt",
        "pose_model.json"]

    # --finetune takes the weights only: a new run from iteration 1, with a fresh schedule.
    tuned_proc, tuned = _run(tmp_path, "finetune", ["--load", str(ckpt), "--finetune", *model])
    assert tuned_proc.returncode == 0, tuned_proc.stderr_text[-2000:]
    assert [s["iteration"] for s in tuned] == [1, 2, 3, 4, 5, 6]
    assert tuned[0]["lr"] == straight[0]["lr"] == 0.0  # warm-up starts again
    assert tuned[0]["loss"] != straight[0]["loss"]  # but from the trained weights


def test_tracker_reading(tmp_path):
    assert resumable.read_tracker(str(tmp_path)) is None
    (tmp_path / "release").mkdir()
    assert resumable.read_tracker(str(tmp_path)) == "release"
    (tmp_path / resumable.TRACKER).write_text("42\n")
    assert resumable.read_tracker(str(tmp_path)) == 42
    (tmp_path / resumable.TRACKER).write_text("latest\n")
    with pytest.raises(ValueError, match="expected an iteration number"):
        resumable.read_tracker(str(tmp_path))
    assert resumable.iteration_dir("/c", 100) == "/c/iter_0000100"


def test_exit_duration_saves_and_stops_then_resume_continues(tmp_path):
    ckpt = tmp_path / "ckpt"
    save = ["--save", str(ckpt), "--save-interval", "4"]
    # 0.0001 min has passed by the end of the first step: the job stops there, off the interval.
    first_proc, first = _run(tmp_path, "timed", [*save, "--exit-duration-in-mins", "0.0001"])
    assert first_proc.returncode == 0, first_proc.stderr_text[-2000:]
    assert [s["iteration"] for s in first] == [1]
    assert "exiting after iteration 1 of 6" in first_proc.stdout_text
    assert resumable.read_tracker(str(ckpt)) == 1

    rest_proc, rest = _run(tmp_path, "rest", ["--load", str(ckpt), *save])
    assert rest_proc.returncode == 0, rest_proc.stderr_text[-2000:]
    assert "loaded iteration 1" in rest_proc.stdout_text
    assert [s["iteration"] for s in rest] == [2, 3, 4, 5, 6]
    assert resumable.read_tracker(str(ckpt)) == 6


def test_exit_duration_must_be_positive(tmp_path):
    proc, _ = _run(tmp_path, "zero", ["--exit-duration-in-mins", "0"])
    assert proc.returncode != 0
    assert proc.stderr_text.strip().splitlines() == [
        "error: --exit-duration-in-mins must be > 0, got 0.0 "
        "(see python -m pose_megatron.train --help)"]

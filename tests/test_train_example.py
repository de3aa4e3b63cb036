"""The CPU mode of examples/pose_llama7b.sh: same entry and flags as the 8xH100 recipe."""

import os
import subprocess

import pytest

from tests.distributed import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_example_script_tiny_cpu_mode(tmp_path):
    save = tmp_path / "ckpt"
    env = child_env(POSE_TINY_CPU="1", SAVE=str(save), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "examples/pose_llama7b.sh", "--log-json",
                           str(tmp_path / "log.jsonl")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (save / "iter_0000003" / "metadata.json").exists()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_example_script_refuses_missing_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("LOAD", "SAVE", "DATA_PATH")}
    env.pop("POSE_TINY_CPU", None)
    proc = subprocess.run(["bash", "examples/pose_llama7b.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "error: set LOAD" in proc.stderr

"""``python -m pose_megatron.launch``: torchrun's job, its failures as one line.

Real torchrun (torch.distributed.run) runs real worker processes here; each case checks what a
user sees on stderr and the exit status.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.distributed import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker that fails on one rank in the way asked (argv[1]); the other rank waits to be ended.
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from pose_megatron import errors

    def main(argv):
        rank, how = int(os.environ["RANK"]), argv[0]
        if rank != int(argv[1]):
            time.sleep(60)
            return 0
        if how == "error":
            raise errors.UsageError(f"--data-path /no/such: not found (rank {rank})")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "exit":
            os._exit(7)
        return 0

    errors.run(main)
""")


def _launch(tmp_path, *worker_args, launcher=("-m", "pose_megatron.launch")):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.run(
        [sys.executable, *launcher, "--nproc-per-node", "2", str(script), *worker_args],
        capture_output=True, text=True, cwd=ROOT, timeout=180,
        env=child_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))


def _error_lines(stderr):
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_rank_0_error_is_its_own_line_only(tmp_path):
    done = _launch(tmp_path, "error", "0")
    assert done.returncode == 2
    assert _error_lines(done.stderr) == ["error: --data-path /no/such: not found (rank 0)"]


def test_error_on_another_rank_is_printed_from_the_error_file(tmp_path):
    done = _launch(tmp_path, "error", "1")
    assert done.returncode == 2
    assert _error_lines(done.stderr) == [
        "error: rank 1: --data-path /no/such: not found (rank 1)"]


@pytest.mark.parametrize("how,words,status", [
    ("kill", "was killed by SIGKILL", 137), ("exit", "exited with status 7", 7)])
def test_crashed_rank_is_named_with_its_status(tmp_path, how, words, status):
    done = _launch(tmp_path, how, "1")
    assert done.returncode == status
    (line,) = _error_lines(done.stderr)
    assert "rank 1 (local rank 1" in line and words in line and "without an error line" in line


def test_plain_torchrun_report_names_the_error(tmp_path):
    # torchrun itself still prints its report, but the report now holds the rank's error line
    # (read from the error file) instead of a link to the docs.
    done = _launch(tmp_path, "error", "0", launcher=("-m", "torch.distributed.run"))
    assert done.returncode != 0
    assert "traceback : --data-path /no/such: not found (rank 0)" in done.stderr

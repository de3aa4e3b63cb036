"""GPU paths that cannot run on a CPU machine: the Transformer Engine spec, bf16, CP=2.

Skipped without CUDA (and without Transformer Engine / two GPUs where named).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()


def _has_te():
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


COMMON = ["--mock-data", "--device", "cuda", "--num-layers", "2", "--hidden-size", "128",
          "--num-attention-heads", "4", "--num-query-groups", "2", "--vocab-size", "1024",
          "--pose-train-len", "256", "--pose-target-len", "2048", "--rope-scaling-type",
          "linear", "--micro-batch-size", "1", "--global-batch-size", "2", "--train-iters", "5",
          "--lr", "1e-3", "--lr-warmup-iters", "1", "--seed", "5", "--bf16"]


def _torchrun(tmp_path, name, nproc, extra):
    log = tmp_path / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(29500 + nproc), "-m", "pose_megatron.train", *COMMON,
           "--log-json", str(log), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and _has_te()), reason="needs CUDA and Transformer Engine")
def test_te_spec_matches_local_spec(tmp_path):
    te = _torchrun(tmp_path, "te", 1, ["--transformer-impl", "transformer_engine"])
    local = _torchrun(tmp_path, "local", 1, ["--transformer-impl", "local"])
    # bf16 with different kernels (TE fused attention vs unfused): a few 1e-3 relative.
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(te, local)), (te, local)
    assert te[-1] < te[0]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and _has_te() and torch.cuda.device_count() >= 2),
                    reason="needs 2 GPUs and Transformer Engine")
def test_cp2_matches_cp1(tmp_path):
    cp1 = _torchrun(tmp_path, "cp1", 1, ["--transformer-impl", "transformer_engine"])
    cp2 = _torchrun(tmp_path, "cp2", 2, ["--transformer-impl", "transformer_engine",
                                         "--context-parallel-size", "2"])
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(cp2, cp1)), (cp2, cp1)


def test_cpu_refuses_context_parallel():
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.validation import check_device_support

    args = parse_args(["--mock-data", "--pose-train-len", "64", "--context-parallel-size", "2"])
    with pytest.raises(SystemExit, match="--context-parallel-size > 1 cannot run on the CPU"):
        check_device_support(args, "cpu")
    args = parse_args(["--mock-data", "--pose-train-len", "64", "--use-distributed-optimizer"])
    with pytest.raises(SystemExit, match="--use-distributed-optimizer cannot run on the CPU"):
        check_device_support(args, "cpu")

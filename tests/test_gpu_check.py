"""The GPU check's parity step: HF logits with PoSE ids vs our Megatron-Core model on CUDA, TP=1,
fp32 and bf16 (tools/gpu_check.sh runs it; skipped without CUDA). GPU_CHECK_DEVICE=cpu runs the
same comparison on the CPU, which is what the script's dry run does so the step never rots.

The oracle is HF's LlamaForCausalLM in fp32 on the CPU with the same weights, which reach the
Megatron model through the package's conversion (tests/rope_models.py, shared with
tests/test_model_rope.py).
"""

import os
import subprocess

import pytest
import torch

from tests.model_classes import MODEL_CLASSES
from tests.rope_models import (hf_logits, hf_model, load_hf_weights, megatron_logits, model_args,
                               pose_batch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.environ.get("GPU_CHECK_DEVICE") or ("cuda" if torch.cuda.is_available() else None)


@pytest.fixture(scope="module")
def mp_device():
    from pose_megatron import parallel

    parallel.initialize(1, 1, device=DEVICE)
    yield DEVICE
    parallel.destroy()


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE is None, reason="needs CUDA (or GPU_CHECK_DEVICE=cpu)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["llama3", "yarn"])
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_cuda_logits_match_hf_with_pose_ids(mp_device, name, dtype, model_class):
    from pose_megatron.model import build_model

    if mp_device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    params_dtype = getattr(torch, dtype)
    tokens, pos = pose_batch(name)
    expected = hf_logits(name, tokens, pos)
    model = build_model(model_args(name), spec="local", params_dtype=params_dtype,
                        bf16=dtype == "bfloat16", model_class=model_class)
    load_hf_weights(model, hf_model(name).state_dict(), model_args(name))
    model.to(mp_device)
    got = megatron_logits(model, tokens, pos)
    diff = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    # fp32 without TF32: rounding only. bf16 (8-bit mantissa) through 2 layers: ~1% of the range.
    tolerance = 1e-4 if dtype == "float32" else 3e-2 * max(1.0, scale)
    print(f"parity {model_class} {name} {dtype} on {mp_device}: max |logit diff| {diff:.3g} "
          f"(tolerance {tolerance:.3g}, logits up to {scale:.3g})")
    assert diff <= tolerance, f"{name} {dtype}: {diff}"
    if dtype == "float32":  # the skipped ids mattered: contiguous ids give other logits
        assert (megatron_logits(model, tokens, None) - got).abs().max().item() > 1e-3


def test_gpu_check_script_parses():
    out = subprocess.run(["bash", "-n", os.path.join(ROOT, "tools", "gpu_check.sh")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr

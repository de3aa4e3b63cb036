"""The package's shared tables (dtypes, LLaMA 3.1 RoPE constants, RoPE types, the scaled RoPE
window): each defined once, its users reading that one definition."""

import pytest
import torch

from pose_megatron import dtypes, rope
from pose_megatron.training.arguments import ROPE_SCALING_TYPES


def test_dtype_names_both_ways_and_one_line_errors():
    assert [dtypes.to_torch(n) for n in ("bf16", "float16", "fp32")] == [
        torch.bfloat16, torch.float16, torch.float32]
    assert [dtypes.name_of(t) for t in (torch.bfloat16, torch.float16)] == ["bfloat16", "float16"]
    assert dtypes.lookup("torch.bfloat16") == "bfloat16" and dtypes.lookup("fp16") == "float16"
    assert dtypes.lookup("auto", "float32") == "float32" and dtypes.lookup(None) is None
    with pytest.raises(ValueError, match=r"^--dtype 'int8': expected one of auto, bf16"):
        dtypes.to_torch("int8", also=("auto",))
    with pytest.raises(ValueError, match=r"^dtype torch\.float64: expected one of float32"):
        dtypes.name_of(torch.float64)


def test_rope_tables_and_scaled_window():
    assert ROPE_SCALING_TYPES == tuple("none" if t == "default" else t for t in rope.ROPE_TYPES)
    llama31 = {"rope_type": "llama3", "factor": 3.0, **rope.LLAMA31_ROPE}
    assert rope.is_megatron_llama31(llama31)
    assert not rope.is_megatron_llama31({**llama31, "high_freq_factor": 5.0})
    assert not rope.is_megatron_llama31({**llama31, "rope_type": "yarn"})
    # the scaling's own window, else the model's; factor 1 where it has none
    assert rope.scaled_window({"rope_type": "yarn", "factor": 2.5,
                               "original_max_position_embeddings": 300}, 700) == 750
    assert rope.scaled_window({"rope_type": "linear", "factor": 3.0}, 700) == 2100
    assert rope.scaled_window(None, 700) == 700

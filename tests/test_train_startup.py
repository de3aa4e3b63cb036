"""Training start-up (pose_megatron/training/validation.py, startup.py): flag-only refusals come before any
process group, the settings line says what runs, unactionable warnings are filtered."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from pose_megatron.config import ModelArgs
from pose_megatron.convert import hf_config
from pose_megatron.training import startup, validation
from pose_megatron.training.arguments import parse_args

# SmolLM2-135M's config.json (the real model of tests/test_real_model.py): 9 heads, 3 KV heads
SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
           "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
           "rope_theta": 100000.0, "hidden_act": "silu"}


@pytest.fixture
def smollm2_ckpt(tmp_path):
    """A converter-style checkpoint directory holding only SmolLM2's pose_model.json: all the
    start-up checks read."""
    args = hf_config.args_from_hf_config(SMOLLM2)
    args.save(str(tmp_path))
    os.makedirs(tmp_path / "release")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
    return str(tmp_path)


def _args(load, *extra):
    return parse_args(["--mock-data", "--load", load, "--pose-train-len", "2048", *extra])


def _refusal(args) -> str:
    with pytest.raises(SystemExit) as info:
        validation.check_flags(args)
    text = str(info.value.code)
    assert text.startswith("error: ") and "\n" not in text
    return text


def test_target_inside_the_window_says_what_to_pass(smollm2_ckpt):
    text = _refusal(_args(smollm2_ckpt, "--pose-target-len", "4096", "--rope-scaling-type", "yarn"))
    assert "--pose-target-len 4096 is inside the original window 8192" in text
    assert "--rope-scaling-type none" in text and "--rope-original-max-position" in text
    assert "--rope-scaling-factor" not in text  # never names a flag the user did not give


def test_target_inside_the_window_is_fine_without_scaling_or_from_a_smaller_window(smollm2_ckpt):
    validation.check_flags(_args(smollm2_ckpt, "--pose-target-len", "4096",
                                     "--rope-scaling-type", "none"))
    validation.check_flags(_args(smollm2_ckpt, "--pose-target-len", "4096",
                                     "--rope-scaling-type", "yarn",
                                     "--rope-original-max-position", "1024"))
    validation.check_flags(_args(smollm2_ckpt, "--pose-target-len", "32768",
                                     "--rope-scaling-type", "yarn"))


def test_tp_that_does_not_divide_the_kv_heads_is_refused(smollm2_ckpt):
    text = _refusal(_args(smollm2_ckpt, "--tensor-model-parallel-size", "2"))
    assert text.startswith("error: --tensor-model-parallel-size 2 does not divide")
    assert "num_attention_heads 9" in text and "num_key_value_heads) 3" in text
    validation.check_flags(_args(smollm2_ckpt, "--tensor-model-parallel-size", "3"))


def test_refusals_come_before_any_process_group(smollm2_ckpt, monkeypatch):
    from pose_megatron import parallel
    from pose_megatron.training import loop

    def no_start(*a, **k):
        raise AssertionError("parallel.initialize ran before the check")

    monkeypatch.setattr(parallel, "initialize", no_start)
    with pytest.raises(SystemExit, match="--tensor-model-parallel-size 2"):
        loop.setup(_args(smollm2_ckpt, "--tensor-model-parallel-size", "2", "--device", "cpu"))


def test_settings_line_names_the_effective_settings(smollm2_ckpt):
    args = _args(smollm2_ckpt, "--pose-target-len", "32768", "--rope-scaling-type", "yarn",
                 "--lr-warmup-iters", "10", "--train-iters", "100",
                 "--tensor-model-parallel-size", "3")
    model_args = ModelArgs.load(smollm2_ckpt)
    model_args.rope_scaling = {"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 8192}
    line = startup.settings_line(args, model_args, spec="local", device="cpu", dp=1)
    for part in ("scheme reference (2 chunks", "train window 2048", "target 32768",
                 "RoPE yarn x4 from original window 8192", "positions below 32768", "TP 3 PP 1",
                 "Megatron-Core local spec", "warm-up 10 steps", "step 1 at lr 0"):
        assert part in line, (part, line)


def test_only_the_listed_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        startup.filter_startup_warnings()
        warnings.warn("Transformer Engine and Apex are not installed. Falling back to Torch "
                      "optimizers.", UserWarning)
        warnings.warn("Apex is not installed. Falling back to Torch Norm", UserWarning)
        warnings.warn("full scope is deprecated. Use empty cuda_graph_scope", UserWarning)
        warnings.warn("Please use DTensor instead and we are deprecating ShardedTensor.",
                      FutureWarning)
        warnings.warn("something the user should see", UserWarning)
        warnings.warn("The pad token id in the tokenizer collides with another special token",
                      UserWarning)
    assert [str(w.message)[:20] for w in caught] == ["something the user s", "The pad token id in "]
    assert all(why for _, _, why in startup.UNACTIONABLE_WARNINGS)


def test_exported_yarn_config_loads_without_a_transformers_warning(tmp_path):
    """transformers 5 warns when max_position_embeddings / original is neither the YaRN factor
    nor 1; the export writes the window YaRN extends to, and transformers keeps the RoPE."""
    import logging

    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    args = hf_config.args_from_hf_config(SMOLLM2)
    for original in (8192, 1024):
        scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": original}
        args.rope_scaling = scaling
        out = tmp_path / str(original)
        out.mkdir()
        (out / "config.json").write_text(json.dumps(hf_config.hf_config_from_args(args)))
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        hf_logging.get_logger().addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                config = AutoConfig.from_pretrained(str(out))
        finally:
            hf_logging.get_logger().removeHandler(handler)
        assert not records and not caught, [r.getMessage() for r in records] + caught
        assert config.max_position_embeddings == original * 4
        assert {k: config.rope_parameters[k] for k in scaling} == scaling

"""Every --rope-scaling-type through the CLI: one training step, export to HF, same logits.

One spawned process trains a tiny model (CPU) for one step with each type through
``python -m pose_megatron.train``'s ``main`` (flags as a user gives them, with each type's own
parameters), converts the checkpoint to HF, and evaluates at a length beyond the original window
(so the scaling matters): the Megatron logits of the trained checkpoint against transformers'
logits of the export (transformers is the oracle, loading the exported config.json itself).
"""

import json
import os

import pytest
import torch

from tests.distributed import run_distributed
from tests.rope_type_flags import ROPE_FLAGS

ORIGINAL, TRAIN, TARGET, EVAL_LEN = 32, 16, 128, 96


def _train_export_compare(rank, world, root, kinds):
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM

    from pose_megatron import load_megatron_model, parallel
    from pose_megatron.convert import megatron_to_hf
    from pose_megatron.train import main

    out = {}
    for kind in kinds:
        # plain RoPE has no extended window: it trains and is compared within the original one
        target, length = (ORIGINAL, ORIGINAL) if kind == "none" else (TARGET, EVAL_LEN)
        ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(0))
        pos = torch.arange(length)[None]
        save, hf = os.path.join(root, kind), os.path.join(root, kind + "-hf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'dynamic' warns that it is meant for evaluation
            history = main([
                "--mock-data", "--device", "cpu", "--num-layers", "2", "--hidden-size", "64",
                "--num-attention-heads", "4", "--num-query-groups", "2", "--vocab-size", "256",
                "--max-position-embeddings", str(ORIGINAL), "--pose-train-len", str(TRAIN),
                "--pose-target-len", str(target), "--train-iters", "1", "--lr", "1e-3",
                "--save", save, "--rope-scaling-type", kind, *ROPE_FLAGS[kind]])
        megatron_to_hf(save, hf, progress=False)
        with torch.no_grad():
            ours = load_megatron_model(save)(ids, pos)
        parallel.destroy()
        config = AutoConfig.from_pretrained(hf)
        hf_model = AutoModelForCausalLM.from_pretrained(hf, config=config, dtype=torch.float32)
        hf_model.eval()
        with torch.no_grad():
            theirs = hf_model(input_ids=ids, position_ids=pos).logits
        out[kind] = {"loss": history[-1]["loss"], "diff": (ours - theirs).abs().max().item(),
                     "spread": ours.std().item(),
                     "pose_model": json.load(open(os.path.join(save, "pose_model.json")))
                     if os.path.exists(os.path.join(save, "pose_model.json")) else None,
                     "hf_rope": getattr(config, "rope_parameters", None)
                     or getattr(config, "rope_scaling", None)}
    return out


# The types whose flags were broken or missing run in the default suite (one process, ~30 s);
# the rest, already covered by test_convert_logits at the converter level, are slow-marked.
DEFAULT_KINDS = ("llama3", "longrope", "yarn")
SLOW_KINDS = tuple(k for k in ROPE_FLAGS if k not in DEFAULT_KINDS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rope_cli"))
    return run_distributed(_train_export_compare, 1, root, list(DEFAULT_KINDS))[0]


@pytest.fixture(scope="module")
def trained_slow(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rope_cli_slow"))
    return run_distributed(_train_export_compare, 1, root, list(SLOW_KINDS))[0]


def _check(got, kind):
    assert got["loss"] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.3)
    assert got["diff"] <= 1e-4, (kind, got["diff"])
    assert got["spread"] > 1e-3  # real logits, not a degenerate match


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_rope_type_trains_exports_and_reproduces_in_hf(trained, kind):
    print(kind, "max |Megatron - HF| logits", trained[kind]["diff"])
    _check(trained[kind], kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SLOW_KINDS)
def test_other_rope_types_train_export_and_reproduce_in_hf(trained_slow, kind):
    print(kind, "max |Megatron - HF| logits", trained_slow[kind]["diff"])
    _check(trained_slow[kind], kind)


def test_the_scaling_was_trained_and_exported_with_its_parameters(trained):
    # the parameters reached the HF config (under HF's names)
    hf = {kind: trained[kind]["hf_rope"] for kind in DEFAULT_KINDS}
    assert hf["yarn"]["beta_fast"] == 16.0 and hf["yarn"]["mscale_all_dim"] == 0.8
    assert hf["llama3"]["low_freq_factor"] == 2.0 and hf["llama3"]["high_freq_factor"] == 8.0
    assert hf["longrope"]["long_factor"][-1] == 4.0 and hf["longrope"]["factor"] == 4.0


@pytest.mark.slow
def test_other_types_export_their_hf_forms(trained_slow):
    hf = {kind: trained_slow[kind]["hf_rope"] for kind in SLOW_KINDS}
    assert hf["linear"]["rope_type"] == "linear" and hf["linear"]["factor"] == 4.0
    assert hf["yarn_pose"]["rope_type"] == "longrope"  # its exact HF form
    assert hf["ntk"]["rope_type"] == "default" and hf["ntk"]["rope_theta"] > 10000.0
    assert hf["none"]["rope_type"] == "default" and hf["none"]["rope_theta"] == 10000.0


@pytest.mark.parametrize("kind", list(ROPE_FLAGS))
def test_megatron_lm_helpers_ask_for_the_same_rope(kind):
    # The Megatron-LM helpers parse the same flag set (megatron_lm.add_pose_args) and must turn
    # it into the RoPE the training entry trains (and the test above exports). The parser holds
    # the Megatron-LM flags of the same names, with Megatron-LM's definitions and defaults.
    import argparse

    from pose_megatron import megatron_lm
    from pose_megatron.config import ModelArgs
    from pose_megatron.training.arguments import parse_args, rope_scaling_from_args

    target = ORIGINAL if kind == "none" else TARGET
    flags = ["--pose-target-len", str(target), "--rope-scaling-type", kind, *ROPE_FLAGS[kind]]
    trained = parse_args(["--mock-data", "--pose-train-len", str(TRAIN),
                          "--max-position-embeddings", str(ORIGINAL), *flags])
    base = ModelArgs(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_attention_heads=4, max_position_embeddings=ORIGINAL)
    megatron = argparse.ArgumentParser(allow_abbrev=False)
    megatron.add_argument("--seq-length", type=int, default=None)
    megatron.add_argument("--max-position-embeddings", type=int, default=None)
    megatron.add_argument("--rotary-base", type=int, default=10000)
    megatron.add_argument("--use-rope-scaling", action="store_true")
    megatron.add_argument("--rope-scaling-factor", type=float, default=8.0)
    megatron_lm.add_pose_args(megatron)
    args = megatron.parse_args(["--seq-length", str(TRAIN), "--max-position-embeddings",
                                str(ORIGINAL), *flags])
    rope = megatron_lm.rope_settings(args)
    assert rope["rope_scaling"] == rope_scaling_from_args(trained, base)
    assert rope["max_position"] >= target

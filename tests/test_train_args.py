"""Flags of python -m pose_megatron.train: help for every flag, clear refusals."""

import pytest

from pose_megatron.config import ModelArgs
from pose_megatron.training.arguments import build_parser, model_args_from, parse_args

BASE = ["--mock-data", "--pose-train-len", "64"]


def test_every_flag_has_help():
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_megatron_names_and_defaults():
    args = parse_args(BASE + ["--tensor-model-parallel-size", "2", "--global-batch-size", "8"])
    assert args.tensor_model_parallel_size == 2 and args.global_batch_size == 8
    assert args.pose_target_len == 64 and args.seq_length == 64
    assert args.lr_decay_iters == args.train_iters == 10


@pytest.mark.parametrize("argv, message", [
    (["--pose-train-len", "64"], "give --data-path"),
    (["--mock-data"], "give --pose-train-len"),
    (BASE + ["--pose-target-len", "32"], "--pose-target-len 32 is below --pose-train-len 64"),
    (BASE + ["--lr-warmup-iters", "10"], "--lr-warmup-iters 10 must be below"),
    (BASE + ["--load", "/no/such/dir"], "--load /no/such/dir: no such directory"),
    (BASE + ["--save-interval", "2"], "--save-interval needs --save"),
    (BASE + ["--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
])
def test_bad_flags_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_rope_scaling_flags_make_hf_style_dicts():
    args = parse_args(BASE + ["--pose-target-len", "512", "--rope-scaling-type", "yarn"])
    model = model_args_from(args)
    assert model.max_position_embeddings == 64
    assert model.rope_scaling == {"rope_type": "yarn", "factor": 8.0,
                                  "original_max_position_embeddings": 64}
    assert model.max_position == 512
    linear = model_args_from(parse_args(BASE + ["--pose-target-len", "256",
                                                "--rope-scaling-type", "linear"]))
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    # A checkpoint's own scaling is kept unless a flag asks otherwise.
    loaded = ModelArgs(hidden_size=64, intermediate_size=128, num_layers=2,
                       num_attention_heads=4, vocab_size=256, max_position_embeddings=64,
                       rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert model_args_from(parse_args(BASE), loaded).rope_scaling == loaded.rope_scaling


def _count(rank, world, tie):
    from pose_megatron import parallel
    from pose_megatron.model import build_model

    parallel.initialize(device="cpu")
    args = ModelArgs(hidden_size=64, intermediate_size=160, num_layers=3, num_attention_heads=4,
                     num_query_groups=2, vocab_size=300, tie_word_embeddings=tie)
    return sum(p.numel() for p in build_model(args).parameters()), args


def test_parameter_count_and_flops_match_the_built_model():
    from pose_megatron.training.logging_utils import flops_per_token, format_line, num_parameters
    from tests.distributed import run_distributed

    for tie in (False, True):
        built, args = run_distributed(_count, 1, tie)[0]
        assert num_parameters(args) == built
    # 6 FLOPs per non-embedding weight + causal attention 6 * seq * heads * head_dim per layer.
    weights = num_parameters(args) - 0  # tied: the embedding is the output layer's matmul
    assert flops_per_token(args, 128) == 6 * weights + 6 * 128 * 4 * 16 * 3
    line = format_line(3, 10, {"loss": 2.5, "lr": 1e-4, "grad_norm": None, "tokens_per_s": 100.0,
                               "step_time_s": 0.25, "memory_gib": 1.5, "mfu": 0.4})
    assert line == ("iter      3/10 | loss 2.500000 | lr 1.000e-04 | grad_norm n/a | "
                    "tokens/s 100 | step 250.0 ms | mem 1.50 GiB | mfu 40.0%")


@pytest.mark.parametrize("flag", ["ntk", "yarn_pose", "yarn", "linear"])
def test_rope_flag_keeps_its_type(flag):
    # "ntk" must stay the fixed NTK of the PoSE reference: HF's dynamic NTK never activates on
    # short PoSE windows, so mapping one to the other would silently train without scaling.
    from pose_megatron.config import ModelArgs
    from pose_megatron.rope import compute_inv_freq
    from pose_megatron.training.arguments import parse_args, rope_scaling_from_args

    args = parse_args(["--mock-data", "--pose-train-len", "64", "--pose-target-len", "512",
                       "--rope-scaling-type", flag])
    base = ModelArgs(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_attention_heads=4, max_position_embeddings=64)
    scaling = rope_scaling_from_args(args, base)
    assert scaling["rope_type"] == flag and scaling["factor"] == 8.0
    inv_freq, _ = compute_inv_freq(16, 10000.0, scaling, max_position_embeddings=64)
    plain, _ = compute_inv_freq(16, 10000.0, None)
    assert float(inv_freq[-1]) < float(plain[-1]) / 2  # the slowest frequency really is scaled

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


def _scaling(*flags, base=None):
    from pose_megatron.training.arguments import rope_scaling_from_args

    args = parse_args(BASE + ["--pose-target-len", "512", *flags])
    base = base or ModelArgs(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_attention_heads=4, max_position_embeddings=64)
    return rope_scaling_from_args(args, base)


def test_every_rope_type_is_selectable_with_its_parameters(tmp_path):
    import json

    from pose_megatron.rope import compute_inv_freq
    from pose_megatron.training.arguments import ROPE_SCALING_TYPES

    assert set(ROPE_SCALING_TYPES) >= {"none", "linear", "ntk", "dynamic", "yarn", "yarn_pose",
                                       "llama3", "longrope"}
    # llama3: LLaMA 3.1's frequency factors by default, or the flags'
    assert _scaling("--rope-scaling-type", "llama3") == {
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    got = _scaling("--rope-scaling-type", "llama3", "--rope-low-freq-factor", "2",
                   "--rope-high-freq-factor", "8", "--rope-original-max-position", "32")
    assert (got["low_freq_factor"], got["high_freq_factor"], got["factor"],
            got["original_max_position_embeddings"]) == (2.0, 8.0, 16.0, 32)
    # yarn: HF's names for the ramp and attention factor
    got = _scaling("--rope-scaling-type", "yarn", "--rope-beta-fast", "16", "--rope-beta-slow",
                   "2", "--rope-mscale", "0.707", "--rope-mscale-all-dim", "0.707")
    assert {k: got[k] for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim")} == {
        "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 0.707}
    # longrope: per-frequency lists as numbers or a JSON file
    path = tmp_path / "long.json"
    path.write_text(json.dumps([1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]))
    got = _scaling("--rope-scaling-type", "longrope", "--rope-short-factor", *["1"] * 8,
                   "--rope-long-factor", str(path))
    assert got["short_factor"] == [1.0] * 8 and got["long_factor"][:2] == [1.0, 2.0]
    inv, scale = compute_inv_freq(16, 10000.0, got, seq_len=512)
    plain, _ = compute_inv_freq(16, 10000.0, None)
    assert float(inv[-1]) == pytest.approx(float(plain[-1]) / 8) and scale > 1
    assert _scaling("--rope-scaling-type", "none") is None
    for kind in ("ntk", "dynamic", "yarn_pose", "linear"):
        assert _scaling("--rope-scaling-type", kind)["rope_type"] == kind


@pytest.mark.parametrize("argv, message", [
    (["--rope-scaling-type", "yarn", "--rope-low-freq-factor", "2"],
     "--rope-low-freq-factor applies to --rope-scaling-type llama3, not yarn"),
    (["--rope-beta-fast", "8"], "--rope-beta-fast applies to --rope-scaling-type yarn or "
                                "yarn_pose, not the checkpoint default"),
    (["--rope-scaling-type", "longrope", "--rope-long-factor", "1"],
     "--rope-scaling-type longrope needs --rope-short-factor"),
    (["--rope-scaling-type", "longrope", "--rope-short-factor", "/no/such.json",
      "--rope-long-factor", "1"], "--rope-short-factor /no/such.json: No such file"),
    (["--rope-scaling-type", "linear", "--rope-scaling-factor", "0.5"],
     "--rope-scaling-factor 0.5 is below 1"),
    (["--rope-scaling-type", "mystery"], "invalid choice: 'mystery'"),
    (["--rope-scaling-factor", "4"], "--rope-scaling-factor needs a --rope-scaling-type"),
])
def test_rope_flags_that_do_not_fit_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + argv)
    assert message in capsys.readouterr().err


def test_rope_values_are_checked_by_the_one_validation():
    with pytest.raises(ValueError, match="llama3 needs low_freq_factor < high_freq_factor"):
        _scaling("--rope-scaling-type", "llama3", "--rope-low-freq-factor", "4",
                 "--rope-high-freq-factor", "2")
    with pytest.raises(ValueError, match="yarn needs beta_slow < beta_fast"):
        _scaling("--rope-scaling-type", "yarn", "--rope-beta-fast", "1", "--rope-beta-slow", "4")


def test_one_flag_set_for_training_and_megatron_lm():
    # pose_megatron.megatron_lm.add_pose_args is this flag set: same flags, same defaults. A flag
    # Megatron-LM already defines (--rope-scaling-factor, default 8.0 for its LLaMA 3.x scaling)
    # keeps its definition but takes PoSE's default, so an unset factor means target/original
    # in both entry points.
    import argparse

    from pose_megatron import megatron_lm
    from pose_megatron.training.arguments import add_pose_arguments

    megatron = argparse.ArgumentParser()
    megatron.add_argument("--rope-scaling-factor", type=float, default=8.0)
    megatron.add_argument("--seq-length", type=int)
    megatron_lm.add_pose_args(megatron)
    ours = add_pose_arguments(argparse.ArgumentParser())
    flags = {f for a in ours._actions for f in a.option_strings} - {"-h", "--help"}
    assert flags <= set(megatron._option_string_actions)
    mine, theirs = vars(ours.parse_args([])), vars(megatron.parse_args([]))
    assert {k: theirs[k] for k in mine} == mine
    assert theirs["rope_scaling_factor"] is None and mine["rope_scaling_type"] is None
    assert megatron.parse_args(["--rope-scaling-factor", "4"]).rope_scaling_factor == 4.0

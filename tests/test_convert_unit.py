"""Config mapping, RoPE export, tensor layout and the converters' error messages."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pose_megatron.config import ModelArgs
from pose_megatron.convert import hf_config, hf_to_megatron, megatron_to_hf, weights

ARGS = ModelArgs(family="llama", vocab_size=256, hidden_size=64, intermediate_size=96,
                 num_layers=4, num_attention_heads=4, num_query_groups=2)


# ----------------------------------------------------------------------------- config


def test_reads_both_rope_styles_the_same():
    base = {"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048}
    v4 = {**base, "rope_theta": 500000.0,
          "rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048}}
    v5 = {**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0,
                                      "original_max_position_embeddings": 2048}}
    a, b = hf_config.args_from_hf_config(v4), hf_config.args_from_hf_config(v5)
    assert a == b
    assert a.rope_theta == 500000.0
    assert a.rope_scaling == {"rope_type": "yarn", "factor": 8.0,
                              "original_max_position_embeddings": 2048}
    assert hf_config.args_from_hf_config({**base, "rope_parameters": {
        "rope_type": "default", "rope_theta": 10000.0}}).rope_scaling is None


def test_qwen2_and_mistral_fields():
    qwen = hf_config.args_from_hf_config({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "sliding_window": 4096, "use_sliding_window": False,
        "tie_word_embeddings": True})
    assert (qwen.family, qwen.qkv_bias, qwen.sliding_window, qwen.tie_word_embeddings) == (
        "qwen2", True, None, True)
    mistral = hf_config.args_from_hf_config({
        "architectures": ["MistralForCausalLM"], "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 32, "sliding_window": 4096})
    assert (mistral.head_dim, mistral.num_query_groups, mistral.sliding_window) == (32, 1, 4096)


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match=r"cfg.json: unknown architecture \['GPT2LMHeadModel'\]; "
                                         r"supported: LlamaForCausalLM .*Qwen3ForCausalLM"):
        hf_config.args_from_hf_config({"architectures": ["GPT2LMHeadModel"]}, "cfg.json")


def test_family_registry_is_what_every_side_reads():
    """One entry per family: the docs list each, the Megatron-side fields find it back, its
    implied settings are refused when contradicted, and config.json round-trips its keys."""
    import os

    from pose_megatron import families

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "families.md")).read()
    for family in families.FAMILIES.values():
        assert f"| `{family.name}` | `{family.architecture}` |" in doc, family.name
        if family.name != "mistral":  # the same Megatron fields as llama: llama is read back
            assert families.family_from_megatron(family.megatron_config(), "x") is family
    with pytest.raises(ValueError, match="x: add_qkv_bias and qk_layernorm together describe no"):
        families.family_from_megatron({"add_qkv_bias": True, "qk_layernorm": True}, "x")
    with pytest.raises(ValueError, match="qk_layernorm=False does not fit model family 'qwen3'"):
        ModelArgs(**{**ARGS.to_dict(), "family": "qwen3", "qkv_bias": None, "qk_layernorm": False})
    qwen3 = hf_config.args_from_hf_config({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 24, "rms_norm_eps": 3e-6, "attention_bias": False,
        "sliding_window": 4096, "use_sliding_window": False, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})
    assert (qwen3.family, qwen3.qk_layernorm, qwen3.qkv_bias, qwen3.head_dim, qwen3.norm_eps,
            qwen3.sliding_window, qwen3.rope_theta) == ("qwen3", True, False, 24, 3e-6, None, 1e6)
    back = hf_config.hf_config_from_args(qwen3)
    assert (back["architectures"], back["model_type"], back["head_dim"], back["attention_bias"],
            back["use_sliding_window"]) == (["Qwen3ForCausalLM"], "qwen3", 24, False, False)
    shapes = weights.hf_shapes(qwen3)
    assert (shapes["model.layers.1.self_attn.q_norm.weight"],
            shapes["model.layers.1.self_attn.q_proj.weight"]) == ((24,), (96, 64))
    assert weights.hf_sources("decoder.layers.1.self_attention.k_layernorm.weight", qwen3) == (
        "model.layers.1.self_attn.k_norm.weight",)


def test_export_rope_native_ntk_and_unknown():
    args = ModelArgs(**{**ARGS.to_dict(), "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    assert hf_config.export_rope(args) == (10000.0, {"rope_type": "linear", "factor": 4.0})
    ntk = ModelArgs(**{**ARGS.to_dict(), "rope_scaling": {"rope_type": "ntk", "factor": 4.0}})
    theta, scaling = hf_config.export_rope(ntk)
    assert scaling is None and theta == pytest.approx(10000.0 * 4.0 ** (16 / 14), rel=1e-15)
    for scaling, message in (({"rope_type": "mystery", "factor": 2.0}, "unknown rope_type 'mystery'"),
                             ({"rope_type": "linear"}, r"missing parameter\(s\) \['factor'\]")):
        with pytest.raises(ValueError, match=message):
            ModelArgs(**{**ARGS.to_dict(), "rope_scaling": scaling})
        bad = ModelArgs(**ARGS.to_dict())
        bad.rope_scaling = scaling  # past ModelArgs' own check: the export refuses it too
        with pytest.raises(ValueError, match=message):
            hf_config.export_rope(bad)
        cfg = {**hf_config.hf_config_from_args(ARGS), "rope_scaling": scaling,
               "rope_parameters": None}
        with pytest.raises(ValueError, match="^cfg.json: rope_scaling: .*" + message):
            hf_config.args_from_hf_config(cfg, "cfg.json")


def test_ntk_export_is_bit_identical_in_hf():
    """HF's default RoPE with the exported theta gives exactly the plugin's NTK frequencies."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from pose_megatron.rope import compute_inv_freq

    ntk = ModelArgs(**{**ARGS.to_dict(), "rope_scaling": {"rope_type": "ntk", "factor": 4.0}})
    cfg = LlamaConfig(**{k: v for k, v in hf_config.hf_config_from_args(ntk).items()
                         if k not in ("architectures", "model_type")})
    rotary = LlamaRotaryEmbedding(cfg)
    hf_inv, hf_scale = rotary.inv_freq, rotary.attention_scaling
    ours, scale = compute_inv_freq(16, 10000.0, ntk.rope_scaling, dtype=torch.float32)
    assert torch.equal(hf_inv.float(), ours) and hf_scale == scale == 1.0


def test_yarn_pose_exports_as_longrope_with_per_dimension_factors():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pose_megatron.rope import compute_inv_freq

    scaling = {"rope_type": "yarn_pose", "factor": 8.0, "original_max_position_embeddings": 64}
    args = ModelArgs(**{**ARGS.to_dict(), "max_position_embeddings": 64, "rope_scaling": scaling})
    theta, hf = hf_config.export_rope(args)
    assert hf["rope_type"] == "longrope" and hf["short_factor"] == hf["long_factor"]
    # high frequencies kept (factor 1), low ones interpolated (factor s)
    assert hf["short_factor"][0] == pytest.approx(1.0) and hf["short_factor"][-1] == pytest.approx(8.0)
    assert hf["attention_factor"] == pytest.approx(0.1 * torch.log(torch.tensor(8.0)).item() + 1)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                      rope_parameters={"rope_theta": theta, **hf})
    want, want_scale = compute_inv_freq(16, theta, scaling, dtype=torch.float64)
    for seq_len in (None, 512):  # below and beyond the original window
        inv, attn = ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=seq_len)
        assert torch.allclose(inv.double(), want, rtol=1e-6, atol=0)
        assert attn == pytest.approx(want_scale, rel=1e-12)


# ----------------------------------------------------------------------------- layout


def test_qkv_fuse_puts_each_groups_heads_together_and_inverts():
    d, h = ARGS.head_dim, ARGS.hidden_size
    q = torch.arange(4 * d * h, dtype=torch.float32).reshape(4 * d, h)
    k = -torch.arange(2 * d * h, dtype=torch.float32).reshape(2 * d, h) - 1
    v = k - 10_000
    qkv = weights.fuse_qkv(q, k, v, ARGS)
    assert qkv.shape == (8 * d, h)
    # group 0: q heads 0,1 then k head 0 then v head 0; group 1 likewise with heads 2,3 / 1
    assert torch.equal(qkv[:2 * d], q[:2 * d]) and torch.equal(qkv[2 * d:3 * d], k[:d])
    assert torch.equal(qkv[3 * d:4 * d], v[:d]) and torch.equal(qkv[4 * d:6 * d], q[2 * d:])
    assert all(torch.equal(a, b) for a, b in zip(weights.split_qkv(qkv, ARGS), (q, k, v)))
    bias = weights.fuse_qkv(q[:, 0], k[:, 0], v[:, 0], ARGS)
    assert torch.equal(bias, qkv[:, 0])


def test_tp_shard_and_merge_invert_for_every_kind():
    fc1 = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(12, 3)  # gate rows 0-5, up 6-11
    shards = [weights.shard_tp("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2, r) for r in range(2)]
    assert torch.equal(shards[1], torch.cat([fc1[3:6], fc1[9:12]]))
    assert torch.equal(weights.merge_tp("decoder.layers.0.mlp.linear_fc1.weight", shards), fc1)
    proj = torch.randn(4, 6)
    name = "decoder.layers.1.self_attention.linear_proj.weight"
    parts = [weights.shard_tp(name, proj, 2, r) for r in range(2)]
    assert parts[0].shape == (4, 3) and torch.equal(weights.merge_tp(name, parts), proj)
    norm = torch.randn(6)
    assert weights.shard_tp("decoder.final_layernorm.weight", norm, 2, 1) is norm
    with pytest.raises(ValueError, match="different copy"):
        weights.merge_tp("decoder.final_layernorm.weight", [norm, norm + 1])


def test_stage_names_and_local_numbering():
    names = weights.stage_names(ARGS, 2, 1)
    assert names[0] == "decoder.layers.2.input_layernorm.weight"
    assert names[-2:] == ["decoder.final_layernorm.weight", "output_layer.weight"]
    assert weights.local_name(names[0], ARGS, 2, 1) == "decoder.layers.0.input_layernorm.weight"
    assert weights.local_name(names[0], ARGS, 2, 1, "te") == \
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"
    assert weights.global_name("decoder.layers.1.mlp.linear_fc1.layer_norm_weight", ARGS, 2, 1) == \
        "decoder.layers.3.pre_mlp_layernorm.weight"


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def hf_dir(hf_family_dir):
    return hf_family_dir("llama3_untied")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_parallel_sizes_must_divide(hf_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--tp 4 does not divide .*num_query_groups \(num_key_value_heads\) 2"):
        hf_to_megatron(hf_dir, str(tmp_path / "a"), tp=4, fmt="legacy", progress=False)
    with pytest.raises(ValueError, match="--pp 3 does not divide num_layers 4"):
        hf_to_megatron(hf_dir, str(tmp_path / "b"), pp=3, fmt="legacy", progress=False)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_unknown_architecture_in_dir(hf_dir, tmp_path):
    bad = _copy(hf_dir, tmp_path / "hf")
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["architectures"] = ["FalconForCausalLM"]
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"config.json: unknown architecture \['FalconForCausalLM'\]"):
        hf_to_megatron(bad, str(tmp_path / "out"), progress=False)


def test_shape_mismatch_names_the_tensor(hf_dir, tmp_path):
    bad = _copy(hf_dir, tmp_path / "hf")
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["intermediate_size"] = 128
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"shape mismatch for model.layers.0.mlp.gate_proj.weight: "
                                         r"the checkpoint has \(96, 64\), config.json implies \(128, 64\)"):
        hf_to_megatron(bad, str(tmp_path / "out"), progress=False)


def test_missing_shard_is_named(hf_dir, tmp_path):
    bad = _copy(hf_dir, tmp_path / "hf")
    os.remove(os.path.join(bad, "model-00002-of-" + sorted(os.listdir(bad))[-2][-17:]))
    with pytest.raises(FileNotFoundError, match=r"missing shard file\(s\) \['model-00002-of-"):
        hf_to_megatron(bad, str(tmp_path / "out"), progress=False)


def test_refuses_non_empty_output_without_force(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty; pass --force"):
        hf_to_megatron(hf_dir, str(out), fmt="legacy", progress=False)
    assert (out / "keep.txt").read_text() == "x"
    hf_to_megatron(hf_dir, str(out), fmt="legacy", force=True, progress=False)
    assert sorted(os.listdir(out)) == ["conversion.json", "latest_checkpointed_iteration.txt",
                                       "pose_model.json", "release", "tokenizer"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")]  # no temp left behind


def test_reverse_refuses_unexportable_rope(hf_dir, tmp_path):
    mg = tmp_path / "mg"
    hf_to_megatron(hf_dir, str(mg), fmt="legacy", progress=False)
    args = ModelArgs.load(str(mg))
    args.rope_scaling = {"rope_type": "mystery", "factor": 2.0}
    args.save(str(mg))
    args.save(str(mg / "release"))  # the copy saved with the weights is the one read
    with pytest.raises(ValueError, match="pose_model.json: .*unknown rope_type 'mystery'"):
        megatron_to_hf(str(mg), str(tmp_path / "back"), progress=False)
    assert not os.path.exists(tmp_path / "back")


def test_cli_reports_errors_and_help(hf_dir, tmp_path, capsys):
    from pose_megatron.commands import convert_hf_to_megatron as cli

    assert cli.main(["--hf-dir", hf_dir, "--out", str(tmp_path / "o"), "--tp", "3",
                     "--no-progress"]) == 2
    assert "--tp 3 does not divide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--format" in capsys.readouterr().out


def test_tokenizer_files_travel_both_ways(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "hf")
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 4096, "bos_token": "<s>"}, f)
    hf_to_megatron(src, str(tmp_path / "mg"), fmt="legacy", progress=False)
    assert sorted(os.listdir(tmp_path / "mg/tokenizer")) == ["generation_config.json",
                                                            "tokenizer_config.json"]
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"), progress=False)
    for name in ("generation_config.json", "tokenizer_config.json"):
        assert open(tmp_path / "back" / name).read() == open(os.path.join(src, name)).read()


@pytest.mark.parametrize("reserve", [1 << 20, 64])
def test_hf_writer_shards_are_read_back_by_safetensors(tmp_path, reserve):
    # The reverse converter streams tensors into shards from a background thread and writes each
    # header last (into a reserved space, or rewriting the shard when it outgrows a tiny one):
    # safetensors' own reader must see the same tensors, whatever their dtype, layout or size.
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pose_megatron.convert.hf_io import HFWriter

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "fp16": torch.randn(7).half(),
        "int64": torch.arange(5),
        "empty": torch.zeros(0, 4),
        "transposed": base.t(),           # not contiguous
        "rows": base[1:3],                # a view sharing storage with "transposed"
        "odd": torch.ones(1, dtype=torch.int8),
        "big": torch.randn(40, 10),
    }
    writer = HFWriter(str(tmp_path), max_shard_bytes=200, header_reserve=reserve,
                      max_queued_bytes=300)
    try:
        for name, t in tensors.items():
            writer.add(name, t)
        writer.finish()
    finally:
        writer.close()
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    loaded = {}
    for f in files:
        loaded.update(load_file(str(tmp_path / f)))
        assert safe_open(str(tmp_path / f), "pt").metadata() == {"format": "pt"}
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in tensors.values())


def test_views_of_parameters_are_taken_from_the_pieces():
    # write_dist points Megatron's sharded tensors (a parameter, or a view of it such as the
    # SwiGLU factory's fc1 halves) at the converted pieces: exact pieces are used uncopied, any
    # other view is cut from their concatenation the same way.
    from pose_megatron.checkpoint.store import _same_view

    param = torch.empty(6, 4)
    gate, up = torch.randn(3, 4), torch.randn(3, 4)
    full = torch.cat([gate, up])
    half = _same_view(param[3:], param, [gate, up])
    assert half.data_ptr() == up.data_ptr()  # no copy
    assert torch.equal(_same_view(param, param, [full]), full)
    assert torch.equal(_same_view(param[2:4], param, [gate, up]), full[2:4])
    assert torch.equal(_same_view(param.t()[1], param, [gate, up]), full.t()[1])


@pytest.mark.parametrize("mmap", [False, True])
def test_safetensors_reader_modes_agree_and_name_a_truncated_file(tmp_path, mmap):
    from safetensors.torch import save_file

    from pose_megatron.convert.hf_io import _SafetensorsFile

    tensors = {"a": torch.randn(4, 3).to(torch.bfloat16), "b": torch.arange(6), "e": torch.zeros(0)}
    path = str(tmp_path / "m.safetensors")
    save_file(tensors, path)
    reader = _SafetensorsFile(path, mmap=mmap)
    for name, t in tensors.items():
        assert torch.equal(reader.get_tensor(name), t)
    with open(path, "r+b") as f:
        f.truncate(reader._base + 1)  # header intact, data cut
    for name in ("a", "b"):
        with pytest.raises(OSError, match=rf"m\.safetensors: truncated while reading {name}"):
            _SafetensorsFile(path, mmap=mmap).get_tensor(name)

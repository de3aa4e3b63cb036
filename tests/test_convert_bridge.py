"""Megatron-Bridge interop (convert/bridge.py) against a checkpoint Bridge 0.6.2 really wrote.

tests/fixtures/bridge/ is Bridge's own output (its README says how it was made): the model
description we read from its run_config.yaml, its tensors converted to HF by our tools (logits
vs the HF model it came from, <= 1e-4), and the run_config.yaml we write with --layout bridge
checked field by field against Bridge's. The real round trip through Bridge's loader is
test_real_bridge_check (slow; needs .venv-bridge, tools/bridge/setup_bridge_env.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from pose_megatron import errors
from pose_megatron.commands import convert_hf_to_megatron as to_megatron
from pose_megatron.commands import convert_megatron_to_hf as to_hf
from pose_megatron.checkpoint import store
from pose_megatron.convert import bridge
from tests.distributed import run_distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "bridge")
BRIDGE_CKPT = os.path.join(FIXTURE, "bridge_ckpt")
BRIDGE_ITER = os.path.join(BRIDGE_CKPT, "iter_0000000")
HF = os.path.join(FIXTURE, "hf")


def _inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 96, (2, 20), generator=g)


def _hf_logits(hf_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=_inputs()).logits


def _run(tool_main, argv, capsys):
    capsys.readouterr()
    code = errors.run(tool_main, argv, exit=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err, err
    return code, (lines[0] if len(lines) == 1 else err)


def test_model_args_from_bridges_run_config():
    args = bridge.model_args_from_run_config(BRIDGE_ITER)
    assert (args.family, args.num_layers, args.hidden_size, args.intermediate_size) == (
        "llama", 2, 32, 128)
    assert (args.num_attention_heads, args.num_query_groups, args.head_dim) == (4, 2, 8)
    assert (args.vocab_size, args.tie_word_embeddings, args.qkv_bias) == (96, False, False)
    assert (args.norm_eps, args.rope_theta, args.rope_scaling) == (1e-5, 10000.0, None)
    assert (args.max_position_embeddings, args.torch_dtype) == (256, "float32")


def test_bridge_iteration_is_found_as_bridges_loader_finds_it(tmp_path):
    assert bridge.has_run_config(BRIDGE_ITER) and not bridge.has_run_config(BRIDGE_CKPT)
    assert bridge.tracker_iteration(BRIDGE_CKPT) == 0
    assert store.resolve_iteration_dir(BRIDGE_CKPT) == BRIDGE_ITER
    assert store.resolve_iteration_dir(BRIDGE_ITER) == BRIDGE_ITER  # an iter dir given
    # latest_train_state.pt names the iteration, as in Bridge's loader
    ckpt = tmp_path / "ckpt"
    shutil.copytree(BRIDGE_CKPT, ckpt)
    os.rename(ckpt / "iter_0000000", ckpt / "iter_0000007")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("7")
    state = torch.load(os.path.join(BRIDGE_CKPT, "latest_train_state.pt"), weights_only=True)
    state["step"] = torch.tensor(7)
    torch.save(state, ckpt / "latest_train_state.pt")
    assert store.resolve_iteration_dir(str(ckpt)) == str(ckpt / "iter_0000007")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("0")  # one tracker left behind
    with pytest.raises(ValueError, match="names iteration 7, latest_checkpointed_iteration.txt "
                                         "'0': pass --iteration"):
        store.resolve_iteration_dir(str(ckpt))
    assert store.resolve_iteration_dir(str(ckpt), 7) == str(ckpt / "iter_0000007")
    (ckpt / "latest_train_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="latest_train_state.pt: not a Megatron-Bridge train"):
        store.resolve_iteration_dir(str(ckpt))


def _edited_run_config(tmp_path, **model_fields):
    it = tmp_path / "iter"
    it.mkdir(exist_ok=True)
    config = yaml.safe_load(open(os.path.join(BRIDGE_ITER, bridge.RUN_CONFIG)))
    config["model"].update(model_fields)
    (it / bridge.RUN_CONFIG).write_text(yaml.safe_dump(config))
    return str(it)


@pytest.mark.parametrize("fields, message", [
    (dict(num_moe_experts=8), "model.num_moe_experts: 8: not convertible"),
    (dict(activation_func={"_target_": "torch.nn.functional.gelu", "_call_": False}),
     "model.activation_func: 'torch.nn.functional.gelu'; only SiLU"),
    (dict(normalization="LayerNorm"), "model.normalization: 'LayerNorm'; only 'RMSNorm'"),
    (dict(should_pad_vocab=True, make_vocab_size_divisible_by=128),
     "model.should_pad_vocab: true: the saved vocabulary is padded from 96 to 128"),
    (dict(hidden_size=None), "model.hidden_size: missing"),
    (dict(_target_="megatron.bridge.models.mamba.mamba_provider.MambaModelProvider"),
     "model._target_: 'megatron.bridge.models.mamba"),
    (dict(position_embedding_type="learned_absolute"),
     "model.position_embedding_type: 'learned_absolute'; only 'rope' and 'yarn'"),
    (dict(position_embedding_type="yarn"), "model.yarn_rotary_scaling_factor: missing"),
    (dict(yarn_rotary_scaling_factor=4.0), "model.yarn_rotary_scaling_factor: 4.0: not conv"),
    (dict(qk_layernorm=True, add_qkv_bias=True), "model: add_qkv_bias and qk_layernorm together"),
])
def test_unconvertible_run_config_is_refused_naming_file_and_field(tmp_path, fields, message):
    path = _edited_run_config(tmp_path, **fields)
    with pytest.raises(bridge.BridgeConfigError) as err:
        bridge.model_args_from_run_config(path)
    assert str(err.value).startswith(os.path.join(path, bridge.RUN_CONFIG) + ": " + message), \
        str(err.value)


@pytest.mark.parametrize("fields, want", [
    (dict(rope_scaling=True, rope_scaling_factor=8.0),
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}),
    (dict(seq_len_interpolation_factor=4.0), {"rope_type": "linear", "factor": 4.0}),
])
def test_rope_scaling_of_run_config(tmp_path, fields, want):
    args = bridge.model_args_from_run_config(_edited_run_config(tmp_path, **fields))
    assert args.rope_scaling == want


def _convert_body(rank, world, root):
    from pose_megatron import load_megatron_model, parallel
    from pose_megatron.convert import hf_to_megatron, megatron_to_hf

    out = {}
    # given the iteration directory (the top one is resolved to it, see above)
    megatron_to_hf(BRIDGE_ITER, os.path.join(root, "from_bridge_iter"), progress=False)
    # ours, written in Bridge's layout, read back by ours
    hf_to_megatron(HF, os.path.join(root, "ours_bridge"), layout="bridge", progress=False)
    megatron_to_hf(os.path.join(root, "ours_bridge"), os.path.join(root, "ours_back"),
                   progress=False)
    tokens = _inputs()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    for tag, ckpt in (("load_bridge", BRIDGE_CKPT), ("load_ours", os.path.join(root, "ours_bridge"))):
        with torch.no_grad():
            out[tag] = load_megatron_model(ckpt)(tokens, positions)
    parallel.destroy()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    (got,) = run_distributed(_convert_body, 1, str(root))
    return root, got


def test_bridge_checkpoint_converts_to_hf_with_its_logits(converted):
    root, got = converted
    want = _hf_logits(HF)
    for name in ("from_bridge_iter", "ours_back"):
        diff = (_hf_logits(str(root / name)) - want).abs().max().item()
        assert diff <= 1e-4, (name, diff)
    for tag in ("load_bridge", "load_ours"):  # load_megatron_model reads both layouts too
        diff = (got[tag] - want).abs().max().item()
        assert diff <= 1e-4, (tag, diff)
    # Bridge keeps the tokenizer in its iteration directory: it comes along
    assert (root / "from_bridge_iter" / "tokenizer.json").is_file()


def test_layout_bridge_writes_what_bridge_wrote(converted):
    root, _ = converted
    ours = root / "ours_bridge"
    assert (ours / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert not (ours / "release").exists()
    for name in ("run_config.yaml", "train_state.pt", "metadata.json", "pose_model.json"):
        assert (ours / "iter_0000000" / name).is_file(), name
    for name in ("latest_train_state.pt", "iter_0000000/train_state.pt"):
        mine = torch.load(ours / name, weights_only=True)
        theirs = torch.load(os.path.join(BRIDGE_CKPT, name), weights_only=True)
        assert mine.keys() == theirs.keys() and all(
            torch.equal(mine[k], theirs[k]) for k in mine), name
    written = yaml.safe_load((ours / "iter_0000000" / "run_config.yaml").read_text())
    real = yaml.safe_load(open(os.path.join(BRIDGE_ITER, "run_config.yaml")))
    assert written["_target_"] == real["_target_"]
    # every model field we write has the value Bridge's own import wrote for this model (the
    # vocabulary multiple is moot: neither pads the vocabulary)
    differ = {k: (v, real["model"].get(k)) for k, v in written["model"].items()
              if k != "make_vocab_size_divisible_by" and real["model"].get(k) != v}
    assert not differ, differ
    assert written["tokenizer"]["tokenizer_model"] == str(ours / "tokenizer")
    assert (bridge.model_args_from_run_config(str(ours / "iter_0000000")).to_dict()
            == dict(bridge.model_args_from_run_config(BRIDGE_ITER).to_dict()))


def test_layout_bridge_refusals(tmp_path, capsys):
    from tests.hf_families import make_hf_model, save_hf_model

    # YaRN whose attention factor Megatron's YaRN cannot take: refused naming the parameter
    yarn = save_hf_model(make_hf_model("llama2", rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "attention_factor": 1.5}), str(tmp_path / "yarn"), shard=False)
    code, err = _run(to_megatron.main, ["--hf-dir", yarn, "--out", str(tmp_path / "o1"),
                                        "--layout", "bridge", "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: --layout bridge: YaRN attention_factor 1.5: "), err
    assert not (tmp_path / "o1").exists()
    code, err = _run(to_megatron.main, ["--hf-dir", HF, "--out", str(tmp_path / "o2"),
                                        "--layout", "bridge", "--format", "legacy",
                                        "--no-progress"], capsys)
    assert code == 2 and "torch_dist checkpoints only" in err, err
    # a Bridge checkpoint whose run_config.yaml cannot be converted: one line, file and field
    ckpt = tmp_path / "moe"
    shutil.copytree(BRIDGE_CKPT, ckpt)
    _edited_run_config(tmp_path, num_moe_experts=4)
    shutil.copy(tmp_path / "iter" / bridge.RUN_CONFIG, ckpt / "iter_0000000" / bridge.RUN_CONFIG)
    code, err = _run(to_hf.main, ["--megatron-dir", str(ckpt), "--out", str(tmp_path / "o3"),
                                  "--no-progress"], capsys)
    assert code == 2 and err == (f"error: {ckpt / 'iter_0000000' / 'run_config.yaml'}: "
                                 "model.num_moe_experts: 4: not convertible (dense LLaMA-family "
                                 "models only)"), err


@pytest.mark.slow
def test_real_bridge_check(tmp_path):
    """tools/check_bridge.sh: Bridge's import -> ours -> HF, ours -> Bridge's loader and export."""
    venv = os.environ.get("BRIDGE_VENV", os.path.join(ROOT, ".venv-bridge"))
    if not os.path.isfile(os.path.join(venv, ".bridge_installed")):
        pytest.skip(f"no Megatron-Bridge environment at {venv} (build it with "
                    "bash tools/bridge/setup_bridge_env.sh, ~3 min, ~3 GB)")
    env = dict(os.environ, WORK=str(tmp_path), BRIDGE_VENV=venv,
               VENV=os.path.relpath(sys.prefix, ROOT))
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "check_bridge.sh")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[bridge-check] OK" in proc.stdout


@pytest.mark.parametrize("family, extra", [
    ("llama3_untied", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}, max_position_embeddings=131072)),
    ("llama2", dict(rope_scaling={"rope_type": "linear", "factor": 4.0})),
    ("qwen2", {}),
    ("llama3_tied", dict(rope_scaling=None)),
    ("qwen3_untied", {}),  # qk_layernorm, kv_channels, YaRN
    ("qwen3_tied", dict(rope_scaling={
        "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
        "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 0.8, "mscale_all_dim": 0.5,
        "truncate": False})),
])
def test_run_config_we_write_reads_back_as_the_same_model(tmp_path, family, extra):
    from pose_megatron.convert import hf_config
    from pose_megatron.convert.megatron_lm_args import disagreements
    from tests.hf_families import make_hf_model

    args = hf_config.args_from_hf_config(make_hf_model(family, **extra).config.to_dict(),
                                         "config.json")
    bridge.write_metadata(str(tmp_path), str(tmp_path), args, 0)
    back = bridge.model_args_from_run_config(str(tmp_path))
    assert not disagreements(args, back)
    assert (back.qkv_bias, back.qk_layernorm, back.head_dim) == (
        args.qkv_bias, args.qk_layernorm, args.head_dim)
    assert (back.family, back.tie_word_embeddings) == (args.family, args.tie_word_embeddings)


def test_yarn_written_for_bridge_is_megatrons_yarn_field_by_field():
    """HF YaRN -> the provider fields Megatron-Core's YarnRotaryEmbedding is built from; HF's
    defaults (betas 32/1, truncate) written out, since Megatron fills none of them; explicit
    defaults read back as the same RoPE."""
    from pose_megatron.config import ModelArgs

    args = ModelArgs(family="qwen3", vocab_size=96, hidden_size=64, intermediate_size=96,
                     num_layers=2, num_attention_heads=4, num_query_groups=2, head_dim=24,
                     max_position_embeddings=128, rope_theta=1e6, rope_scaling={
                         "rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                         "original_max_position_embeddings": 32, "mscale": 2.0})
    fields = bridge.provider_fields(args)
    assert {k: v for k, v in fields.items() if k.startswith(("yarn_", "position_emb", "qk_"))} \
        == {"position_embedding_type": "yarn", "yarn_rotary_scaling_factor": 4.0,
            "yarn_original_max_position_embeddings": 32, "yarn_beta_fast": 32.0,
            "yarn_beta_slow": 1.0, "yarn_mscale": None, "yarn_mscale_all_dim": None,
            "yarn_correction_range_round_to_int": True, "qk_layernorm": True}
    assert (fields["kv_channels"], fields["add_qkv_bias"]) == (24, False)
    back = bridge.as_read_back(args)
    assert back.rope_scaling == {"rope_type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 32}
    from pose_megatron.rope import compute_inv_freq

    for a, b in zip(compute_inv_freq(24, 1e6, args.rope_scaling, dtype=torch.float32),
                    compute_inv_freq(24, 1e6, back.rope_scaling, dtype=torch.float32)):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))

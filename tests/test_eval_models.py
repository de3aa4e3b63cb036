"""Model and tokenizer loading for evaluation: RoPE overrides, greedy decoding, Megatron path."""

import io
import json
import os

import numpy as np
import pytest
import torch

from pose_megatron.eval.models import (
    greedy_without_cache, is_megatron_checkpoint, load_model, load_tokenizer, parse_rope_scaling,
    resolve_dtype, resolve_device,
)
from pose_megatron.eval.perplexity import perplexity
from tests.distributed import run_distributed
from tests.eval_data import BOS, EOS, VOCAB


def test_parse_rope_scaling():
    assert parse_rope_scaling(None) is None
    assert parse_rope_scaling("none") is None
    assert parse_rope_scaling('{"rope_type": "linear", "factor": 8}') == {
        "rope_type": "linear", "factor": 8}
    # The legacy HF key is accepted and renamed.
    assert parse_rope_scaling('{"type": "yarn", "factor": 4, "original_max_position_embeddings": 2048}'
                              ) == {"rope_type": "yarn", "factor": 4,
                                    "original_max_position_embeddings": 2048}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_rope_scaling("{rope_type: linear}")
    with pytest.raises(ValueError, match="JSON object"):
        parse_rope_scaling("[1, 2]")
    with pytest.raises(ValueError, match="rope_type"):
        parse_rope_scaling('{"factor": 8}')
    with pytest.raises(ValueError, match="positive"):
        parse_rope_scaling('{"rope_type": "linear", "factor": -2}')
    # the package's one RoPE check: unknown types and missing parameters, named by flag
    with pytest.raises(ValueError, match="--rope-scaling: unknown rope_type 'mystery'"):
        parse_rope_scaling('{"rope_type": "mystery", "factor": 2}')
    with pytest.raises(ValueError, match=r"--rope-scaling: .*missing parameter\(s\) \['factor'\]"):
        parse_rope_scaling('{"rope_type": "linear"}')
    with pytest.raises(ValueError, match="high_freq_factor"):
        parse_rope_scaling('{"rope_type": "llama3", "factor": 8}')
    # the model's window fills original_max_position_embeddings later
    assert parse_rope_scaling('{"rope_type": "yarn", "factor": 4}') == {"rope_type": "yarn",
                                                                        "factor": 4}


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_linear_override_equals_interpolated_positions(tiny_hf_dir):
    # Linear PI with factor 4 is the unscaled model fed positions m / 4 (HF accepts float
    # positions in its rotary embedding), so the override must give exactly those logits.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, local_files_only=True).eval()
    scaled = load_model(tiny_hf_dir, rope_scaling={"rope_type": "linear", "factor": 4.0},
                        device="cpu")
    ids = torch.randint(3, 100, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(input_ids=ids, position_ids=torch.arange(50)[None] / 4.0).logits
        plain = base(input_ids=ids).logits
    got = scaled.logits(ids)
    assert torch.equal(got, expected)
    assert (got - plain).abs().max() > 1e-3
    # Only the last positions reach the LM head when asked. A [7, h] matmul rounds differently
    # from the [50, h] one on some BLAS builds, so equal to float32 rounding, not bit for bit.
    torch.testing.assert_close(scaled.logits(ids, 7), expected[:, -7:], rtol=0, atol=1e-6)
    assert scaled.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_yarn_override_takes_original_window_from_the_model(tiny_hf_dir):
    model = load_model(tiny_hf_dir, rope_scaling={"rope_type": "yarn", "factor": 4.0},
                       device="cpu")
    params = model.module.config.rope_parameters
    assert params["rope_type"] == "yarn"
    assert params["original_max_position_embeddings"] == 256  # the tiny model's window
    assert params["rope_theta"] == 10000.0
    assert model.module.config.max_position_embeddings == 1024  # 256 * 4, the extended window
    # HF yarn scales cos/sin by 0.1 ln(s) + 1.
    assert model.module.model.rotary_emb.attention_scaling == pytest.approx(
        0.1 * np.log(4.0) + 1.0)


def test_unknown_rope_type_is_refused(tiny_hf_dir):
    with pytest.raises(ValueError, match="rope_type 'ntk' is not one transformers knows: .*yarn"):
        load_model(tiny_hf_dir, rope_scaling={"rope_type": "ntk", "factor": 2.0}, device="cpu")


def test_greedy_without_cache_equals_hf_generate(tiny_hf_dir):
    model = load_model(tiny_hf_dir, device="cpu")
    prompt = [BOS] + model.tokenizer.encode("What is the pass key? The pass key is")
    hf_out = model.greedy(prompt, 10)
    with torch.no_grad():
        ours = greedy_without_cache(lambda ids: model.module(input_ids=ids).logits[:, -1],
                                    prompt, 10, eos_id=None, device=torch.device("cpu"))
    assert len(hf_out) == 10
    assert ours == hf_out


def test_greedy_without_cache_stops_at_eos():
    # A "model" whose next token is always the previous one + 1, on a vocabulary of 6 (5 = EOS).
    def forward_last(ids):
        return torch.nn.functional.one_hot(ids[:, -1] + 1, 6).float()

    out = greedy_without_cache(forward_last, [1, 2], 10, eos_id=5, device=torch.device("cpu"))
    assert out == [3, 4, 5]


def test_char_tokenizer_is_one_token_per_character(tiny_hf_dir):
    # the evaluation tests' own tokenizer (tests/eval_data.py): one token per character
    tok = load_tokenizer(tiny_hf_dir)
    text = "The pass key is 12345.\nRemember it."
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert ids[:3] == [VOCAB["T"], VOCAB["h"], VOCAB["e"]]
    assert tok.decode(ids) == text
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (BOS, EOS, len(VOCAB))


def test_sentencepiece_tokenizer_file(tmp_path):
    import sentencepiece as spm

    text = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
            "again. The pass key is 12345. Remember it. What is the pass key?\n") * 40
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=60,
        model_type="bpe", hard_vocab_limit=False, bos_id=1, eos_id=2, unk_id=0,
        split_digits=True,
    )
    path = tmp_path / "tok.model"
    path.write_bytes(model.getvalue())
    tok = load_tokenizer(str(path))
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("The pass key is 12345.")
    assert tok.decode(ids) == "The pass key is 12345."
    assert 1 not in ids  # no BOS from encode: the protocols add it
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        bad = tmp_path / "bad.model"
        bad.write_text("nope")
        load_tokenizer(str(bad))
    # A checkpoint's tokenizer/ directory holding only tokenizer.model (the eval tools' default)
    # is read as that sentencepiece file (transformers asked for tiktoken here).
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.model").write_bytes(model.getvalue())
    tok = load_tokenizer(str(tmp_path / "tokenizer"))
    assert tok.encode("The pass key is 12345.") == ids and tok.bos_id == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no tokenizer: expected tokenizer.json"):
        load_tokenizer(str(tmp_path / "empty"))


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="neither a HF model directory"):
        load_model(str(tmp_path))
    (tmp_path / "pose_model.json").write_text(json.dumps({"family": "llama"}))
    assert is_megatron_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="pass --tokenizer"):
        load_model(str(tmp_path))


def _megatron_vs_hf(rank, world_size, hf_dir, out):
    """In a fresh process: convert the tiny HF model to a Megatron checkpoint, load it for
    evaluation (pose_megatron.load_megatron_model underneath) and evaluate both sides."""
    from pose_megatron.convert import hf_to_megatron

    hf_to_megatron(hf_dir, out, progress=False)
    mc = load_model(out, device="cpu")  # tokenizer from the checkpoint's tokenizer/ directory
    hf = load_model(hf_dir, device="cpu")
    # 300 tokens: beyond the tiny model's 256-token window, which evaluation must allow.
    doc = np.array(hf.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 7)[:300])
    prompt = [BOS] + hf.tokenizer.encode("The pass key is")
    scaling = {"rope_type": "linear", "factor": 4.0}
    mc4 = load_model(out, device="cpu", rope_scaling=scaling)
    hf4 = load_model(hf_dir, device="cpu", rope_scaling=scaling)
    ids = torch.tensor([[BOS] + doc[:40].tolist()])
    return {
        "kind": mc.kind,
        "ppl": (perplexity(hf.logits, [doc], 64, 20, BOS).ppl,
                perplexity(mc.logits, [doc], 64, 20, BOS).ppl),
        "ppl_long": (perplexity(hf.logits, [doc], 300, 100, BOS).ppl,
                     perplexity(mc.logits, [doc], 300, 100, BOS).ppl),
        "greedy": (hf.greedy(prompt, 5), mc.greedy(prompt, 5)),
        "pi4_max_diff": float((mc4.logits(ids) - hf4.logits(ids)).abs().max()),
        "pi4_vs_plain": float((mc4.logits(ids) - mc.logits(ids)).abs().max()),
        "tokenizer": mc.tokenizer.source,
    }


def test_megatron_checkpoint_matches_hf(tiny_hf_dir, tmp_path):
    # The Megatron-Core side of the evaluation (positions, padded-vocab slicing, greedy without
    # a cache, RoPE override, no position limit) against the HF model it was converted from.
    out = str(tmp_path / "mcore")
    (r,) = run_distributed(_megatron_vs_hf, 1, tiny_hf_dir, out)
    assert r["kind"] == "megatron"
    assert r["tokenizer"] == os.path.join(out, "tokenizer")
    assert r["ppl"][1] == pytest.approx(r["ppl"][0], rel=1e-5)
    assert r["ppl_long"][1] == pytest.approx(r["ppl_long"][0], rel=1e-5)
    assert r["greedy"][1] == r["greedy"][0]
    assert r["pi4_max_diff"] < 1e-4 < r["pi4_vs_plain"]

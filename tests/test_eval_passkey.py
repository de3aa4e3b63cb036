"""Passkey protocol: prompt structure, exact length fit, key placement, parsing and scoring."""

import inspect
import re

import numpy as np
import pytest

from pose_megatron.eval.passkey import (
    FILLER, KEY_RANGE, NEEDLE, QUESTION, TASK_LINE, build_trial, evaluate_length, is_correct,
    parse_answer, prompt_text, shared_opening,
)
from tests.eval_data import BOS, VOCAB


def char_encode(text):
    return [VOCAB[c] for c in text]


def char_decode(ids):
    inv = {i: t for t, i in VOCAB.items()}
    return "".join(inv[i] for i in ids if i >= 3)


def test_prompt_text_structure():
    text = prompt_text(54321, 2, 1)
    assert text == "\n".join([
        TASK_LINE,
        FILLER + " " + FILLER,
        "The pass key is 54321. Remember it. 54321 is the pass key.",
        FILLER,
        "What is the pass key? The pass key is",
    ])
    assert prompt_text(11111, 0, 0, task_line=False) == (
        "\n" + NEEDLE.format(key=11111) + "\n\n" + QUESTION)
    with pytest.raises(ValueError, match="filler counts"):
        prompt_text(1, -1, 0)


@pytest.mark.parametrize("length", [300, 1000, 1234])
def test_trial_fills_length_exactly_with_char_tokens(length):
    # One token per character: tokens = 1 (BOS) + len(text), and one more filler (len + 1 space)
    # would not fit, so the prompt is within len(FILLER) of the requested length.
    for i in range(5):
        t = build_trial(char_encode, BOS, length, i, seed=7)
        assert t.input_ids[0] == BOS
        assert t.input_ids[1:] == char_encode(t.text)
        assert len(t.input_ids) <= length
        assert len(t.input_ids) + len(FILLER) + 2 > length
        assert t.text == prompt_text(t.key, t.n_prefix, t.n_total - t.n_prefix)
        # The needle sits after exactly n_prefix fillers.
        before = t.text.split("\n")[1]
        assert before.count(FILLER) == t.n_prefix
        assert t.text.count(FILLER) == t.n_total


def test_trial_filler_count_by_hand():
    # Without filler: BOS + task line + 4 newlines + needle (5-digit key) + question.
    base = 1 + len(TASK_LINE) + 4 + len(NEEDLE.format(key=12345)) + len(QUESTION)
    assert base == 1 + 148 + 4 + 58 + 37 == 248
    # Each filler costs 89 characters plus a joining space: n fillers cost 90*n - 1 (one run) or
    # 90*n - 2 (split in two non-empty runs). At base + 269 exactly three fit, whatever the split.
    for trial in range(8):
        t = build_trial(char_encode, BOS, base + 90 * 3 - 1, trial=trial, seed=0)
        assert t.n_total == 3
        split = 0 < t.n_prefix < t.n_total
        assert len(t.input_ids) == base + 90 * 3 - (2 if split else 1)
    with pytest.raises(ValueError, match="too short"):
        build_trial(char_encode, BOS, base - 1, trial=0)


def test_trials_are_seeded_and_independent():
    a = [build_trial(char_encode, BOS, 2000, i, seed=3) for i in range(40)]
    b = [build_trial(char_encode, BOS, 2000, i, seed=3) for i in range(40)]
    assert [(t.key, t.n_prefix) for t in a] == [(t.key, t.n_prefix) for t in b]
    # A trial does not depend on the other trials that ran.
    assert build_trial(char_encode, BOS, 2000, 17, seed=3).key == a[17].key
    c = [build_trial(char_encode, BOS, 2000, i, seed=4) for i in range(40)]
    assert [t.key for t in a] != [t.key for t in c]
    keys = np.array([t.key for t in a])
    assert keys.min() >= KEY_RANGE[0] and keys.max() <= KEY_RANGE[1]
    assert all(len(str(k)) == 5 for k in keys)
    depths = np.array([t.depth for t in a])
    # (2000 - 248 + 1) // 90 = 19 fillers fit at 2000 tokens; 40 uniform draws over 20 slots
    # spread over the range.
    assert {t.n_total for t in a} == {19}
    assert depths.min() < 0.2 and depths.max() > 0.8
    assert len({t.n_prefix for t in a}) >= 12


def test_parse_answer_takes_first_integer():
    assert parse_answer(" 12345. Remember") == 12345
    assert parse_answer("is 0042 and 7") == 42
    assert parse_answer("key-98765x") == 98765
    assert parse_answer("The pass key is") is None
    assert parse_answer("") is None
    assert is_correct(12345, 12345)
    assert not is_correct(1234, 12345)
    assert not is_correct(None, 12345)


def test_scoring_counts_exact_matches():
    # A responder that reads the key from the prompt and answers it on even trials and key+1 on
    # odd ones: accuracy must be exactly one half, and each record must say which.
    def responder(ids, max_new_tokens):
        text = char_decode(ids)
        key = int(re.search(r"The pass key is (\d+)\.", text).group(1))
        trial = responder.calls
        responder.calls += 1
        answer = f" {key if trial % 2 == 0 else key + 1}. The"
        return char_encode(answer)[:max_new_tokens]

    responder.calls = 0
    res = evaluate_length(responder, char_decode, char_encode, BOS, 600, trials=6, seed=1)
    assert (res.correct, res.trials, res.accuracy) == (3, 6, 0.5)
    assert [r["correct"] for r in res.records] == [True, False] * 3
    for r in res.records:
        assert r["output"] == f" {r['prediction']}. The"[:10]
        assert r["prediction"] == (r["key"] if r["correct"] else r["key"] + 1)
        assert r["n_tokens"] <= 600
    # 10 new tokens cut " 12345. The" to " 12345. Th"; a 3-token budget leaves " 12", wrong.
    responder.calls = 0
    short = evaluate_length(responder, char_decode, char_encode, BOS, 600, trials=2, seed=1,
                            max_new_tokens=3)
    assert short.correct == 0
    assert [r["prediction"] for r in short.records] == [
        int(str(r["key"])[:2]) for r in short.records]


def test_random_model_end_to_end(tiny_hf_dir):
    from pose_megatron.eval.models import load_model

    model = load_model(tiny_hf_dir, device="cpu")
    tok = model.tokenizer
    res = evaluate_length(model.greedy, tok.decode, tok.encode, model.bos_id, 320, trials=3,
                          seed=0, max_new_tokens=10)
    assert res.trials == 3
    for r, i in zip(res.records, range(3)):
        t = build_trial(tok.encode, model.bos_id, 320, i, seed=0)
        assert (r["key"], r["n_tokens"]) == (t.key, len(t.input_ids))
        expected = tok.decode(model.greedy(t.input_ids, 10))
        assert r["output"] == expected
        assert len(tok.encode(r["output"])) <= 10
        assert r["prediction"] == parse_answer(expected)
        assert r["correct"] == (r["prediction"] == r["key"])
    assert res.correct == sum(r["correct"] for r in res.records)


def test_shared_opening_is_what_every_trial_starts_with():
    # char tokens: the opening of a trial with n fillers before its needle is exactly its first
    # 1 + len(task line + "\n" + fillers) ids; one more filler would not be
    for i in range(5):
        t = build_trial(char_encode, BOS, 900, i, seed=3)
        opening = shared_opening(char_encode, BOS, t.n_prefix)
        assert t.input_ids[:len(opening)] == opening
        longer = shared_opening(char_encode, BOS, t.n_prefix + 1)
        assert t.input_ids[:len(longer)] != longer


@pytest.mark.parametrize("rope", [None, {"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 96}])
def test_prefix_cache_gives_the_plain_paths_answers(tiny_hf_dir, rope, monkeypatch):
    """The cached opening (HF DynamicCache, cropped per trial) against the plain path, which runs
    each whole prompt: every trial's output ids are the same, and each trial reused the part of
    the opening it shares (all but its needle and what follows). The rest of each prompt runs in
    pieces of 37 tokens here (512 by default), so several pieces extend the cache."""
    import pose_megatron.eval.models as models
    from pose_megatron.eval.models import load_model

    monkeypatch.setattr(models, "_CONTINUE_ROWS", 37)

    model = load_model(tiny_hf_dir, device="cpu", rope_scaling=rope)
    tok = model.tokenizer
    plain = evaluate_length(model.greedy, tok.decode, tok.encode, model.bos_id, 384, trials=6,
                            seed=5, max_new_tokens=8)
    cached = evaluate_length(model.greedy, tok.decode, tok.encode, model.bos_id, 384, trials=6,
                             seed=5, max_new_tokens=8, greedy_sharing=model.greedy_sharing)
    assert [r["output"] for r in cached.records] == [r["output"] for r in plain.records]
    assert [r["key"] for r in cached.records] == [r["key"] for r in plain.records]
    for r in cached.records:
        t = build_trial(tok.encode, model.bos_id, 384, r["trial"], seed=5)
        shared = len(shared_opening(tok.encode, model.bos_id, t.n_prefix))
        assert r["cached_tokens"] == shared, (r["cached_tokens"], shared)
    assert all(r["cached_tokens"] == 0 for r in plain.records)
    # ids, not just decoded text: greedy from a cache equals greedy over the whole prompt
    share = model.greedy_sharing(shared_opening(tok.encode, model.bos_id, 40))
    for i in range(3):
        t = build_trial(tok.encode, model.bos_id, 384, i, seed=7)
        assert share(t.input_ids, 12) == model.greedy(t.input_ids, 12)


def test_extended_cache_holds_the_keys_and_values_of_one_pass(tiny_hf_dir, monkeypatch):
    """extend_cache in pieces of 37 after a 50-token prefix: every layer's keys and values equal
    those of one causal pass over the same 300 tokens (a dropped or misplaced token in any piece
    changes them)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    import pose_megatron.eval.models as models

    monkeypatch.setattr(models, "_CONTINUE_ROWS", 37)
    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, local_files_only=True).eval()
    ids = torch.randint(3, 90, (1, 300), generator=torch.Generator().manual_seed(0))
    arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def layers(cache):
        if hasattr(cache, "layers"):
            return [(layer.keys, layer.values) for layer in cache.layers]
        return list(zip(cache.key_cache, cache.value_cache))

    with torch.no_grad():
        whole = hf(input_ids=ids, use_cache=True, **{arg: DynamicCache()})
        whole = getattr(whole, "cache", None) or whole.past_key_values
        pieces = DynamicCache()
        hf(input_ids=ids[:, :50], use_cache=True, **{arg: pieces})
    models.extend_cache(hf, ids, pieces, arg, keeps_logits=True)
    assert pieces.get_seq_length() == 300
    for (k1, v1), (k2, v2) in zip(layers(whole), layers(pieces)):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)

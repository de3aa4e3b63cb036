"""Sliding-window perplexity: window math by hand, a bigram oracle, and a real model vs HF loss."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pose_megatron.eval.perplexity import Window, perplexity, sliding_windows, window_nll
from tests.eval_data import BOS


def test_windows_by_hand():
    # n=10 tokens, ctx=5 (4 document tokens per window), stride=2.
    assert sliding_windows(10, 5, 2) == [
        Window(0, 4, 4), Window(2, 6, 2), Window(4, 8, 2), Window(6, 10, 2)]
    # n=9: the last window is clipped at the end and scores one token.
    assert sliding_windows(9, 5, 2) == [
        Window(0, 4, 4), Window(2, 6, 2), Window(4, 8, 2), Window(6, 9, 1)]
    # Non-overlapping windows (stride = ctx - 1).
    assert sliding_windows(10, 5, 4) == [Window(0, 4, 4), Window(4, 8, 4), Window(8, 10, 2)]
    # A document shorter than the window: one window, all tokens.
    assert sliding_windows(3, 5, 2) == [Window(0, 3, 3)]
    assert sliding_windows(4, 5, 2) == [Window(0, 4, 4)]
    assert Window(2, 6, 2).n_input == 5


def test_windows_reject_bad_settings():
    with pytest.raises(ValueError, match="stride 5 must be in \\[1, 4\\]"):
        sliding_windows(10, 5, 5)
    with pytest.raises(ValueError, match="stride 0"):
        sliding_windows(10, 5, 0)
    with pytest.raises(ValueError, match="too short"):
        sliding_windows(10, 1, 1)
    with pytest.raises(ValueError, match="at least 1 token"):
        sliding_windows(0, 5, 2)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), ctx=st.integers(2, 64), data=st.data())
def test_every_token_scored_once_with_bounded_context(n, ctx, data):
    stride = data.draw(st.integers(1, ctx - 1))
    windows = sliding_windows(n, ctx, stride)
    scored = []
    for w in windows:
        assert w.n_input <= ctx
        assert 1 <= w.n_scored <= w.end - w.begin
        scored.extend(range(w.end - w.n_scored, w.end))
    assert scored == list(range(n))
    assert windows[-1].end == n
    assert [w.begin for w in windows] == [k * stride for k in range(len(windows))]


def bigram_logits_fn(table):
    """Logits at each position depend only on the token there: a bigram model with known
    probabilities, so the NLL of any window is computable by hand."""

    def fn(ids, keep=None):
        out = table[ids]
        return out if keep is None else out[:, -keep:]

    return fn


def test_bigram_oracle_shows_window_boundaries():
    torch.manual_seed(0)
    vocab = 7
    table = torch.randn(vocab, vocab, dtype=torch.float64)
    logp = torch.log_softmax(table, dim=-1)
    bos = 0
    doc = np.array([3, 1, 4, 1, 5, 2, 6, 5, 3, 5])
    fn = bigram_logits_fn(table)

    def expected(preds):
        # preds[j] is the token t[j] is predicted from.
        return -sum(float(logp[p, t]) for p, t in zip(preds, doc))

    prev = [bos] + list(doc[:-1])
    # Overlapping windows: every token keeps its true predecessor.
    r = perplexity(fn, [doc], ctx=5, stride=2, bos_id=bos)
    assert (r.n_tokens, r.n_windows, r.n_documents) == (10, 4, 1)
    assert r.nll_sum == pytest.approx(expected(prev), abs=1e-9)
    assert r.ppl == pytest.approx(math.exp(expected(prev) / 10), rel=1e-12)
    # Non-overlapping windows: tokens 4 and 8 open a window and are predicted from BOS.
    r = perplexity(fn, [doc], ctx=5, stride=4, bos_id=bos)
    cut = list(prev)
    cut[4] = cut[8] = bos
    assert r.n_windows == 3
    assert r.nll_sum == pytest.approx(expected(cut), abs=1e-9)
    # One window's NLL, token by token: input [BOS, 4, 1, 5, 2] scores t[4]=5 after 1 and
    # t[5]=2 after 5.
    nll = window_nll(fn, doc, Window(2, 6, 2), bos)
    assert nll.tolist() == pytest.approx([-float(logp[1, 5]), -float(logp[5, 2])], abs=1e-12)


def test_token_weighted_across_documents():
    table = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fn = bigram_logits_fn(table)
    a, b = np.array([1, 2, 3]), np.array([4, 3, 2, 1, 1, 2, 3, 4, 4])
    ra = perplexity(fn, [a], 4, 2, 0)
    rb = perplexity(fn, [b], 4, 2, 0)
    both = perplexity(fn, [a, b], 4, 2, 0)
    assert both.n_tokens == 12 and both.n_documents == 2
    assert both.nll_sum == pytest.approx(ra.nll_sum + rb.nll_sum, abs=1e-12)
    assert both.ppl == pytest.approx(math.exp((ra.nll_sum + rb.nll_sum) / 12), rel=1e-12)
    assert both.ppl != pytest.approx((ra.ppl + rb.ppl) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="no documents"):
        perplexity(fn, [], 4, 2, 0)


def test_block_sums_follow_scoring_order_across_windows_and_documents(monkeypatch):
    # 3-token blocks over two documents scored in overlapping windows: each block is the sum of
    # the bigram NLL of the next 3 scored tokens, in document order, whatever window scored them
    import pose_megatron.eval.perplexity as ppl_mod

    monkeypatch.setattr(ppl_mod, "BLOCK_TOKENS", 3)
    table = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    logp = torch.log_softmax(table, dim=-1)
    a, b = np.array([1, 2, 3, 4, 5]), np.array([5, 4, 3, 2])
    r = perplexity(bigram_logits_fn(table), [a, b], ctx=4, stride=2, bos_id=0)
    per_token = []
    for doc in (a, b):
        prev = [0] + list(doc[:-1])  # ctx 4, stride 2: every token keeps its predecessor
        per_token += [-float(logp[p, t]) for p, t in zip(prev, doc)]
    expected = [sum(per_token[i:i + 3]) for i in range(0, 9, 3)]
    assert r.block_nll == pytest.approx(expected, abs=1e-12)
    assert sum(r.block_nll) == pytest.approx(r.nll_sum, abs=1e-12)
    assert r.to_dict()["block_tokens"] == 3


TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."


def test_real_model_single_window_equals_direct_forward(tiny_hf_dir):
    from transformers import AutoModelForCausalLM

    from pose_megatron.eval.models import load_model

    model = load_model(tiny_hf_dir, device="cpu")
    tokens = model.tokenizer.encode(TEXT)
    assert len(tokens) == len(TEXT) == 85
    r = perplexity(model.logits, [np.array(tokens)], ctx=128, stride=64, bos_id=BOS)
    assert (r.n_windows, r.n_tokens) == (1, 85)

    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, local_files_only=True).eval()
    ids = torch.tensor([[BOS] + tokens])
    with torch.no_grad():
        loss = hf(input_ids=ids, labels=ids).loss  # mean NLL of the 85 tokens after BOS
        logits = hf(input_ids=ids).logits[0, :-1].double()
    direct = -torch.log_softmax(logits, -1)[torch.arange(85), ids[0, 1:]].mean()
    assert r.nll == pytest.approx(float(loss), rel=1e-5)
    assert r.nll == pytest.approx(float(direct), rel=1e-6)
    assert r.ppl == pytest.approx(math.exp(float(direct)), rel=1e-6)
    # A random model over ~100 tokens is near uniform.
    assert 50 < r.ppl < 200


def test_real_model_sliding_windows_equal_masked_hf_loss(tiny_hf_dir):
    from transformers import AutoModelForCausalLM

    from pose_megatron.eval.models import load_model

    model = load_model(tiny_hf_dir, device="cpu")
    tokens = model.tokenizer.encode(TEXT * 2)  # 170 tokens
    ctx, stride = 64, 24
    r = perplexity(model.logits, [np.array(tokens)], ctx=ctx, stride=stride, bos_id=BOS)

    # Independently: HF's own shifted loss with the unscored labels masked by -100.
    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, local_files_only=True).eval()
    total, count, prev_end, begin = 0.0, 0, 0, 0
    while True:
        end = min(begin + ctx - 1, len(tokens))
        ids = torch.tensor([[BOS] + tokens[begin:end]])
        labels = ids.clone()
        labels[:, : ids.shape[1] - (end - prev_end)] = -100
        with torch.no_grad():
            total += float(hf(input_ids=ids, labels=labels).loss) * (end - prev_end)
        count += end - prev_end
        prev_end = end
        if end == len(tokens):
            break
        begin += stride
    assert count == r.n_tokens == 170
    assert r.n_windows == 6  # begins 0, 24, 48, 72, 96, 120 (120 + 63 >= 170)
    assert r.nll_sum == pytest.approx(total, rel=1e-5)

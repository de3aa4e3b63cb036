"""scheme="reference" against an independent re-statement of the PoSE authors' draws.

The oracle below restates ``train_preprocess_function_pose`` of the authors' ``src/train_pose.py``
(dwzhu-pku/PoSE) over ``ids = range(len)``: every branch of it comes from the same four lines
(``len_chunk = min(len, L)``, ``rt1 ~ randint(1, (len_chunk+1)//2)``, ``rt2 ~ randint(len_chunk,
len)``, ``rt ~ randint(0, T - len_chunk)``), after truncating the document. It enumerates every
(rt1, rt2, rt) triple, each with probability 1 / (number of triples), and maps it to the sample
(token indices, position ids) the reference code would build. The generator's samples are then
compared by exact support and a chi-square goodness-of-fit test.
"""

import math
from collections import Counter

import numpy as np
import pytest

from pose_megatron.positions import pose_position_ids, pose_position_ids_batch


def reference_outcomes(doc_len, train_len, target_len, max_len):
    """{(token indices, position ids): probability} of the reference's sample for one document."""
    ids = list(range(doc_len))[:max_len]  # tokenizer(..., truncation=True, max_length=max_len)
    len_input = len(ids)
    len_chunk = min(len_input, train_len)
    triples = [(rt1, rt2, rt)
               for rt1 in range(1, (len_chunk + 1) // 2 + 1)
               for rt2 in range(len_chunk, len_input + 1)
               for rt in range(0, target_len - len_chunk + 1)]
    out = Counter()
    for rt1, rt2, rt in triples:
        lt2 = rt2 - (len_chunk - rt1)
        chunked = ids[0:rt1] + ids[lt2:rt2]
        pos = list(range(len(chunked)))
        pos = pos[:rt1] + [p + rt for p in pos[rt1:]]  # pos_ids[:rt1] += 0; pos_ids[rt1:] += rt
        out[(tuple(chunked), tuple(pos))] += 1.0 / len(triples)
    return out


def _chi_square_p(observed, expected):
    """Upper-tail p of Pearson's statistic (Wilson-Hilferty; scipy is not a dependency)."""
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    k = len(expected) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _check_against_reference(samples, doc_len, train_len, target_len, max_len):
    expected = reference_outcomes(doc_len, train_len, target_len, max_len)
    seen = Counter(samples)
    assert set(seen) == set(expected), "the generator's support is exactly the reference's"
    keys = sorted(expected)
    if len(keys) == 1:
        return
    n = len(samples)
    p = _chi_square_p([seen[k] for k in keys], [expected[k] * n for k in keys])
    assert p > 1e-4, f"frequencies differ from the reference's (chi-square p = {p:.2e})"


def _single_samples(doc_len, train, target, count, **kw):
    out = []
    for k in range(count):
        s = pose_position_ids(train, target, doc_len=doc_len, index=k, seed=11, **kw)
        out.append((tuple(s.token_index.tolist()), tuple(s.position_ids.tolist())))
    return out


def _batch_samples(doc_len, train, target, count, **kw):
    b = pose_position_ids_batch(train, target, np.arange(count), doc_lens=np.full(count, doc_len),
                                seed=11, **kw)
    return [(tuple(t), tuple(p)) for t, p in zip(b.token_index.tolist(), b.position_ids.tolist())]


@pytest.mark.parametrize("doc_len,train,target", [
    (5, 8, 14),   # shorter than L_train: chunk 0 keeps positions from 0, the rest is shifted
    (1, 8, 14),   # one token: chunk 1 is empty, position 0
    (6, 6, 12),   # exactly L_train: contiguous content, two position chunks
])
def test_short_and_exact_documents_follow_the_reference(doc_len, train, target):
    support = len(reference_outcomes(doc_len, train, target, target))
    samples = _single_samples(doc_len, train, target, 150 * support)
    _check_against_reference(samples, doc_len, train, target, target)
    for tokens, pos in samples:
        assert tokens == tuple(range(doc_len)) and pos[0] == 0


def test_long_document_within_the_target_follows_the_reference():
    doc_len, train, target = 10, 6, 14
    support = len(reference_outcomes(doc_len, train, target, target))
    samples = _batch_samples(doc_len, train, target, 150 * support)
    _check_against_reference(samples, doc_len, train, target, target)
    # the single-sample path draws the same samples
    assert _single_samples(doc_len, train, target, 50) == samples[:50]


def test_long_document_is_cut_at_five_windows_as_the_authors_code():
    # train_pose.py tokenizes with max_length=model_max_position_embeddings*5 (the default here).
    doc_len, train, target = 40, 4, 8
    support = len(reference_outcomes(doc_len, train, target, 5 * train))
    samples = _batch_samples(doc_len, train, target, 150 * support)
    _check_against_reference(samples, doc_len, train, target, 5 * train)
    assert max(max(tokens) for tokens, _ in samples) == 5 * train - 1


def test_target_length_cut_on_request():
    # The target-length cut (the unmerged pull request #13 of the authors' repository).
    doc_len, train, target = 40, 5, 9
    support = len(reference_outcomes(doc_len, train, target, target))
    samples = _batch_samples(doc_len, train, target, 150 * support, max_doc_len=target)
    _check_against_reference(samples, doc_len, train, target, target)
    assert max(max(tokens) for tokens, _ in samples) == target - 1


def test_oracle_detects_the_old_short_document_shift():
    # The earlier generator shifted a whole short document by one bias (BOS off 0): the oracle's
    # support has no such sample, so the tests above would fail on it.
    doc_len, train, target = 5, 8, 14
    expected = reference_outcomes(doc_len, train, target, target)
    whole_shift = (tuple(range(5)), tuple(range(3, 8)))
    assert whole_shift not in expected
    assert all(pos[0] == 0 for _, pos in expected)

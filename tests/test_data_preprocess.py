"""tools/preprocess_data.py and the bundled stdlib corpus, read back with Megatron's own reader."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset

from pose_megatron.data.corpus import build_corpus, stdlib_files
from pose_megatron.data.preprocess import length_histogram, preprocess
from pose_megatron.data.tokenizers import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "def f(x):\n    return x + 1\n",
    "",
    "class A:\n\t'''doc'''\n    pass\n" * 20,
    "import os\nprint(os.getcwd())  # ünïcödé ✓\n",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("hf")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(d))
    return str(d)


def write_jsonl_texts(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "meta": 1}) + "\n")
            f.write("\n")  # blank lines are skipped


def read_back(prefix):
    """Per document, its list of sequences, read by Megatron-Core's own reader."""
    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    return [[ds[i].astype(np.int64).tolist() for i in range(bounds[d], bounds[d + 1])]
            for d in range(len(bounds) - 1)]


def megatron_lm_documents(sp_path, texts, *, append_eod, bos=None, eod_for_empty=False):
    """The oracle: each text through sentencepiece itself, with Megatron-LM's rule (EOD closes a
    non-empty document; an empty one has no sequence)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sp_path)
    docs = []
    for text in texts:
        ids = sp.encode_as_ids(text)
        if ids:
            ids = ([bos] if bos is not None else []) + ids + ([sp.eos_id()] if append_eod else [])
        elif eod_for_empty:
            ids = [sp.eos_id()]
        docs.append([ids] if ids else [])
    return docs


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_sentencepiece_round_trip(sp_model, tmp_path, compression):
    path = str(tmp_path / f"in.jsonl{compression}")
    if compression == ".zst":
        import zstandard

        raw = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode()
        with open(path, "wb") as f:  # two frames: a reader that stops at the first loses data
            f.write(zstandard.ZstdCompressor().compress(raw[:40]))
            f.write(zstandard.ZstdCompressor().compress(raw[40:]))
    else:
        write_jsonl_texts(path, TEXTS, gzip.open if compression else open)
    summary = preprocess(path, str(tmp_path / "out"), sp_model, append_eod=True,
                         prepend_bos=True, quiet=True)["text"]
    tok = load_tokenizer(sp_model)
    expected = megatron_lm_documents(sp_model, TEXTS, append_eod=True, bos=tok.bos)
    assert read_back(str(tmp_path / "out_text_document")) == expected
    assert expected[1] == []  # the empty document: kept, with no sequence
    assert summary["documents"] == 4 and summary["empty_documents"] == 1
    assert summary["tokens"] == sum(len(seq) for doc in expected for seq in doc)
    assert summary["dtype"] == "uint16"
    # The tokenizer round-trips source text exactly (identity normalisation, byte fallback).
    assert tok.detokenize(expected[3][0][1:-1]) == TEXTS[3]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_eod_for_empty_docs_flag(sp_model, tmp_path):
    path = str(tmp_path / "in.jsonl")
    write_jsonl_texts(path, TEXTS)
    preprocess(path, str(tmp_path / "out"), sp_model, append_eod=True, eod_for_empty_docs=True,
               quiet=True)
    expected = megatron_lm_documents(sp_model, TEXTS, append_eod=True, eod_for_empty=True)
    assert read_back(str(tmp_path / "out_text_document")) == expected
    assert expected[1] == [[load_tokenizer(sp_model).eod]]
    with pytest.raises(ValueError, match="--eod-for-empty-docs needs --append-eod"):
        preprocess(path, str(tmp_path / "o"), sp_model, eod_for_empty_docs=True, quiet=True)


def write_like_megatron_lm(prefix, docs, dtype):
    """Megatron-LM's writer: one ``add_document(ids, sequence lengths)`` per document."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        ids = [t for seq in doc for t in seq]
        builder.add_document(np.asarray(ids, dtype=np.int64), [len(seq) for seq in doc])
    builder.finalize(prefix + ".idx")


def test_workers_and_blocks_give_megatron_lm_files(sp_model, tmp_path):
    texts = (TEXTS + ["", "x"]) * 30
    path = str(tmp_path / "in.jsonl")
    write_jsonl_texts(path, texts)
    write_like_megatron_lm(str(tmp_path / "oracle"),
                           megatron_lm_documents(sp_model, texts, append_eod=True), np.uint16)
    preprocess(path, str(tmp_path / "one"), sp_model, append_eod=True, quiet=True)
    # Tiny blocks: many of them, some a single line longer than the block size.
    preprocess(path, str(tmp_path / "two"), sp_model, append_eod=True, workers=2,
               block_bytes=300, quiet=True)
    for ext in (".bin", ".idx"):
        oracle = open(str(tmp_path / f"oracle{ext}"), "rb").read()
        assert open(str(tmp_path / f"one_text_document{ext}"), "rb").read() == oracle
        assert open(str(tmp_path / f"two_text_document{ext}"), "rb").read() == oracle


def _children(pid):
    return {int(p) for p in os.listdir("/proc") if p.isdigit()
            and int(_stat_fields(p)[1] or -1) == pid}


def _stat_fields(pid):
    """Fields after the parenthesised command name: state, ppid, pgrp, ... ([None] * 3 if gone)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return [None] * 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_cleanly(sp_model, tmp_path):
    """No worker outlives a run: after a good run, none is a child of this process; after a
    failed CLI run, no process is left in its process group."""
    good, bad = str(tmp_path / "good.jsonl"), str(tmp_path / "bad.jsonl")
    write_jsonl_texts(good, TEXTS * 20)
    before = _children(os.getpid())
    preprocess(good, str(tmp_path / "g"), sp_model, append_eod=True, workers=2, block_bytes=500,
               quiet=True)
    assert _children(os.getpid()) - before == set()
    with open(bad, "w") as f:
        f.write((json.dumps({"text": "a = 1"}) + "\n") * 500 + "{broken\n")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", bad,
         "--output-prefix", str(tmp_path / "b"), "--tokenizer", sp_model, "--append-eod",
         "--workers", "2", "--block-size", "500"],
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "bad.jsonl:501" in err
    left = [p for p in os.listdir("/proc") if p.isdigit() and _stat_fields(p)[2] == str(proc.pid)]
    assert left == []
    assert not [f for f in os.listdir(tmp_path) if f.startswith("b_")]


@pytest.mark.skipif(not os.environ.get("MEGATRON_LM"),
                    reason="set MEGATRON_LM to a Megatron-LM checkout (core_v0.16.1) to compare")
def test_same_files_as_megatron_lm_script(sp_model, tmp_path):
    """Megatron-LM's own tools/preprocess_data.py on the same input: byte-identical files.

    Its tools import megatron.training, which needs triton; MEGATRON_LM_PYTHON names the
    interpreter to run it with (default: this one)."""
    checkout = os.environ["MEGATRON_LM"]
    texts = (TEXTS + [""]) * 10
    path = str(tmp_path / "in.jsonl")
    with open(path, "w") as f:  # Megatron-LM reads every line as JSON: no blank lines
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    env = {**os.environ, "PYTHONPATH": checkout, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([os.environ.get("MEGATRON_LM_PYTHON", sys.executable),
                    os.path.join(checkout, "tools", "preprocess_data.py"), "--input", path,
                    "--output-prefix", str(tmp_path / "mlm"), "--tokenizer-type",
                    "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--append-eod",
                    "--workers", "2"], check=True, env=env, capture_output=True)
    preprocess(path, str(tmp_path / "ours"), sp_model, append_eod=True, workers=2, quiet=True)
    for ext in (".bin", ".idx"):
        assert (open(str(tmp_path / f"ours_text_document{ext}"), "rb").read()
                == open(str(tmp_path / f"mlm_text_document{ext}"), "rb").read())


def test_hf_tokenizer_directory(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    path = str(tmp_path / "in.jsonl")
    write_jsonl_texts(path, TEXTS)
    preprocess(path, str(tmp_path / "hf"), hf_dir, append_eod=True, quiet=True)
    ref = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    expected = [[ref.encode(t, add_special_tokens=False) + [ref.eos_token_id]] if t else []
                for t in TEXTS]
    assert read_back(str(tmp_path / "hf_text_document")) == expected


def test_several_keys(sp_model, tmp_path):
    path = str(tmp_path / "in.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"text": "a = 1", "title": "x"}) + "\n")
    out = preprocess(path, str(tmp_path / "k"), sp_model, json_keys=["text", "title"],
                     quiet=True)
    assert set(out) == {"text", "title"}
    assert os.path.exists(str(tmp_path / "k_title_document.idx"))


def test_bad_input_names_file_and_line(sp_model, tmp_path):
    bad = str(tmp_path / "bad.jsonl")
    with open(bad, "w") as f:
        f.write(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        preprocess(bad, str(tmp_path / "o"), sp_model, quiet=True)
    nokey = str(tmp_path / "nokey.jsonl")
    with open(nokey, "w") as f:
        f.write(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"nokey\.jsonl:1: no 'text' field \(has \['body'\]; see --json-keys\)"):
        preprocess(nokey, str(tmp_path / "o"), sp_model, quiet=True)
    empty = str(tmp_path / "empty.jsonl")
    open(empty, "w").close()
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty corpus"):
        preprocess(empty, str(tmp_path / "o"), sp_model, quiet=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("o_")]  # nothing half-written
    with pytest.raises(ValueError, match=r"notamodel: not a sentencepiece model"):
        open(str(tmp_path / "notamodel"), "w").write("junk")
        preprocess(empty, str(tmp_path / "o"), str(tmp_path / "notamodel"), quiet=True)


def test_length_histogram():
    rows = dict(length_histogram(np.array([0, 1, 2, 3, 4, 7, 8, 100])))
    assert rows == {"0": 1, "1-1": 1, "2-3": 2, "4-7": 2, "8-15": 1, "16-31": 0, "32-63": 0,
                    "64-127": 1}


def test_cli_help_and_error(tmp_path):
    script = os.path.join(ROOT, "tools", "preprocess_data.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--input", "--output-prefix", "--tokenizer", "--json-keys", "--append-eod",
                 "--prepend-bos", "--workers"):
        assert flag in out.stdout
    missing = subprocess.run([sys.executable, script, "--input", str(tmp_path / "nope.jsonl"),
                              "--output-prefix", str(tmp_path / "o"), "--tokenizer", "x"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_stdlib_corpus_is_deterministic(tmp_path):
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 300
    assert not [f for f in files if f.startswith(("test/", "idlelib/"))]
    a = build_corpus(str(tmp_path / "a"), vocab_size=400, max_docs=25, quiet=True)
    b = build_corpus(str(tmp_path / "b"), vocab_size=400, max_docs=25, quiet=True)
    for key, suffix in (("tokenizer", ""), ("prefix", ".bin"), ("prefix", ".idx")):
        assert open(a[key] + suffix, "rb").read() == open(b[key] + suffix, "rb").read()
    docs = [json.loads(line) for line in open(a["jsonl"])]
    assert [d["path"] for d in docs] == files[:25]
    tok = load_tokenizer(a["tokenizer"])
    ds = IndexedDataset(a["prefix"])
    assert len(ds) == 25
    first = ds[0].astype(np.int64)  # the first file is not empty: document 0 is sequence 0
    assert first[0] == tok.bos and first[-1] == tok.eod
    assert tok.detokenize(first[1:-1]) == docs[0]["text"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkilled_run_keeps_the_old_output_and_the_next_run_cleans_up(sp_model, tmp_path):
    """A real SIGKILL of tools/preprocess_data.py (and its workers) while it writes: the earlier
    output under the same prefix is untouched, the dead run's temporaries are removed by the
    next run, and that run's files equal a clean run's."""
    import signal
    import time

    small, big = str(tmp_path / "small.jsonl"), str(tmp_path / "big.jsonl")
    write_jsonl_texts(small, TEXTS)
    write_jsonl_texts(big, TEXTS * 1500)
    prefix = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--output-prefix",
           prefix, "--tokenizer", sp_model, "--append-eod", "--workers", "2", "--block-size",
           "20000", "--no-progress"]
    subprocess.run(cmd + ["--input", small], check=True, capture_output=True)
    earlier = {ext: open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")}

    proc = subprocess.Popen(cmd + ["--input", big], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    temps = []
    while time.time() < deadline and proc.poll() is None:
        temps = [f for f in os.listdir(tmp_path) if ".tmp-" in f and f.endswith(".bin")
                 and os.path.getsize(tmp_path / f) > 0]
        if temps:
            break
        time.sleep(0.05)
    assert temps and proc.poll() is None, "the run ended before it could be killed mid-write"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)  # the workers die with the group (zombies until init reaps them)
    assert [p for p in os.listdir("/proc") if p.isdigit() and _stat_fields(p)[2] == str(proc.pid)
            and _stat_fields(p)[0] not in ("Z", "X", None)] == []
    for ext, data in earlier.items():
        assert open(f"{prefix}_text_document{ext}", "rb").read() == data
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # the dead run's leftovers

    subprocess.run(cmd + ["--input", big], check=True, capture_output=True)
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f] == []
    clean = str(tmp_path / "clean")
    preprocess(big, clean, sp_model, append_eod=True, workers=1, quiet=True)
    assert read_back(f"{prefix}_text_document") == read_back(f"{clean}_text_document")

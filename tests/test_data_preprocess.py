"""tools/preprocess_data.py and the bundled stdlib corpus, read back with Megatron's own reader."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset

from pose_megatron.data.corpus import build_corpus, stdlib_files, train_tokenizer, write_jsonl
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
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    write_jsonl(str(d / "c.jsonl"), max_docs=15)
    train_tokenizer(str(d / "c.jsonl"), str(d / "t.model"), vocab_size=400, max_lines=3000)
    return str(d / "t.model")


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
    ds = IndexedDataset(prefix)
    return [ds[i].astype(np.int64).tolist() for i in range(len(ds))]


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_sentencepiece_round_trip(sp_model, tmp_path, compression):
    path = str(tmp_path / f"in.jsonl{compression}")
    if compression == ".zst":
        import zstandard

        raw = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode()
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(raw))
    else:
        write_jsonl_texts(path, TEXTS, gzip.open if compression else open)
    summary = preprocess(path, str(tmp_path / "out"), sp_model, append_eod=True,
                         prepend_bos=True, quiet=True)["text"]
    tok = load_tokenizer(sp_model)
    expected = [[tok.bos] + tok.tokenize(t) + [tok.eod] for t in TEXTS]
    assert read_back(str(tmp_path / "out_text_document")) == expected
    assert summary["documents"] == 4
    assert summary["tokens"] == sum(map(len, expected))
    assert summary["dtype"] == "uint16"
    # The tokenizer round-trips source text exactly (identity normalisation, byte fallback).
    assert tok.detokenize(expected[3][1:-1]) == TEXTS[3]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_workers_give_identical_files(sp_model, tmp_path):
    path = str(tmp_path / "in.jsonl")
    write_jsonl_texts(path, TEXTS * 30)
    preprocess(path, str(tmp_path / "one"), sp_model, append_eod=True, quiet=True)
    preprocess(path, str(tmp_path / "two"), sp_model, append_eod=True, workers=2, chunk_size=7,
               quiet=True)
    for ext in (".bin", ".idx"):
        a = open(str(tmp_path / f"one_text_document{ext}"), "rb").read()
        b = open(str(tmp_path / f"two_text_document{ext}"), "rb").read()
        assert a == b


def test_hf_tokenizer_directory(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    path = str(tmp_path / "in.jsonl")
    write_jsonl_texts(path, TEXTS)
    preprocess(path, str(tmp_path / "hf"), hf_dir, append_eod=True, quiet=True)
    ref = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    expected = [ref.encode(t, add_special_tokens=False) + [ref.eos_token_id] for t in TEXTS]
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
    first = ds[0].astype(np.int64)
    assert first[0] == tok.bos and first[-1] == tok.eod
    assert tok.detokenize(first[1:-1]) == docs[0]["text"]

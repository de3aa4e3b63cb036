"""The package's shared tables (dtypes, LLaMA 3.1 RoPE constants, RoPE types, the scaled RoPE
window): each defined once, its users reading that one definition."""

import pytest
import torch

from pose_megatron import dtypes, rope
from pose_megatron.training.arguments import ROPE_SCALING_TYPES


def test_dtype_names_both_ways_and_one_line_errors():
    assert [dtypes.to_torch(n) for n in ("bf16", "float16", "fp32")] == [
        torch.bfloat16, torch.float16, torch.float32]
    assert [dtypes.name_of(t) for t in (torch.bfloat16, torch.float16)] == ["bfloat16", "float16"]
    assert dtypes.lookup("torch.bfloat16") == "bfloat16" and dtypes.lookup("fp16") == "float16"
    assert dtypes.lookup("auto", "float32") == "float32" and dtypes.lookup(None) is None
    with pytest.raises(ValueError, match=r"^--dtype 'int8': expected one of auto, bf16"):
        dtypes.to_torch("int8", also=("auto",))
    with pytest.raises(ValueError, match=r"^dtype torch\.float64: expected one of float32"):
        dtypes.name_of(torch.float64)


def test_rope_tables_and_scaled_window():
    assert ROPE_SCALING_TYPES == tuple("none" if t == "default" else t for t in rope.ROPE_TYPES)
    llama31 = {"rope_type": "llama3", "factor": 3.0, **rope.LLAMA31_ROPE}
    assert rope.is_megatron_llama31(llama31)
    assert not rope.is_megatron_llama31({**llama31, "high_freq_factor": 5.0})
    assert not rope.is_megatron_llama31({**llama31, "rope_type": "yarn"})
    # the scaling's own window, else the model's; factor 1 where it has none
    assert rope.scaled_window({"rope_type": "yarn", "factor": 2.5,
                               "original_max_position_embeddings": 300}, 700) == 750
    assert rope.scaled_window({"rope_type": "linear", "factor": 3.0}, 700) == 2100
    assert rope.scaled_window(None, 700) == 700
    assert (rope.original_window({"rope_type": "yarn", "original_max_position_embeddings": 300},
                                 700), rope.original_window(None, 700)) == (300, 700)


def test_one_tokenizer_loader_for_data_and_evaluation(tmp_path):
    import io

    import sentencepiece as spm

    from pose_megatron.data.tokenizers import load_tokenizer as data_tokenizer
    from pose_megatron.eval.models import load_tokenizer as eval_tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["The pass key is 12345. Remember it."] * 30), model_writer=model,
        vocab_size=40, model_type="bpe", hard_vocab_limit=False, bos_id=3, eos_id=5, unk_id=0,
        pad_id=-1)
    # a checkpoint's tokenizer/ holding only tokenizer.model: both read it as that file
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.model").write_bytes(model.getvalue())
    data, evaluation = data_tokenizer(str(tmp_path / "tokenizer")), eval_tokenizer(
        str(tmp_path / "tokenizer"))
    text = "Remember the pass key 12345."
    assert data.tokenize(text) == evaluation.encode(text) and evaluation.decode(
        evaluation.encode(text)) == text
    assert (data.eod, data.bos, data.pad) == (5, 3, -1)
    assert (evaluation.eos_id, evaluation.bos_id, evaluation.render_chat) == (5, 3, None)
    assert data.local.path == evaluation.source == str(tmp_path / "tokenizer" / "tokenizer.model")


def test_one_idx_reader_names_the_flag_and_the_file(tmp_path):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from pose_megatron.data.indexed import check_indexed, read_header

    prefix = str(tmp_path / "corpus")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for n in (7, 11, 5):
        builder.add_document(np.arange(n, dtype=np.int32), [n])
    builder.finalize(prefix + ".idx")
    header = read_header(prefix + ".idx")
    assert (header.dtype, header.sequences, header.documents) == (np.int32, 3, 4)
    assert check_indexed(prefix, 70_000) == {"sequences": 3, "dtype_size": 4, "tokens": 23}
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=rf"^--data-path {prefix}: {prefix}\.bin: 40 bytes, but "
                                         r".*corpus\.idx describes 92 bytes of int32 tokens"):
        check_indexed(prefix, flag="--data-path")
    with pytest.raises(FileNotFoundError, match=r"^\S*nothing\.idx: missing"):
        check_indexed(str(tmp_path / "nothing"))

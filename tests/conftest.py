"""Fixtures shared by several test modules, built once per session and only read by the tests
(a test that changes one works on a copy). Plain helpers live in modules not named ``test_*``:
tests/hf_families.py, tests/eval_data.py, tests/rope_models.py, tests/model_classes.py,
tests/distributed.py, tests/real_model.py, tests/rope_type_flags.py."""

import pytest

from tests.eval_data import save_tiny_llama
from tests.hf_families import make_hf_model, save_hf_model


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """The evaluation tests' tiny real LLaMA with its character tokenizer (tests/eval_data.py)."""
    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A real sentencepiece BPE (vocabulary 400) trained on the bundled corpus: its path."""
    from pose_megatron.data.corpus import train_tokenizer, write_jsonl

    d = tmp_path_factory.mktemp("sp")
    write_jsonl(str(d / "c.jsonl"), max_docs=15)
    train_tokenizer(str(d / "c.jsonl"), str(d / "t.model"), vocab_size=400, max_lines=3000)
    return str(d / "t.model")


@pytest.fixture(scope="session")
def hf_family_dir(tmp_path_factory):
    """``hf_family_dir(family)``: the directory of that family's tiny random HF model (seed 0,
    tests/hf_families.py), saved on first use; sharded, llama2 as pytorch_model-*.bin shards
    (read with weights_only), the others as safetensors."""
    root = tmp_path_factory.mktemp("hf_families")
    saved = {}

    def get(family: str) -> str:
        if family not in saved:
            saved[family] = save_hf_model(make_hf_model(family), str(root / family),
                                          safetensors=family != "llama2")
        return saved[family]

    return get

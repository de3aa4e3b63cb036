"""A GGUF file (llama.cpp's format, often quantised) -> a plain HF model directory.

transformers reads GGUF itself: the architecture and hyper-parameters from the metadata, the
tensor names (and LLaMA's Q/K row permutation) mapped back to HF's, the tokenizer rebuilt from
the embedded vocabulary, the chat template from ``tokenizer.chat_template``. What it does not do
is hand back a directory that loads like any other: a model loaded from GGUF keeps a GGUF
quantizer and a ``quantization_config`` that make ``save_pretrained`` refuse or write a config
claiming the weights are still packed. This module asks for the weights unpacked
(``dequantize=True``) in the dtype wanted, drops the quantizer state, and publishes the model,
tokenizer, chat template and generation config atomically, so the rest of pose_megatron (the
HF -> Megatron converter, the eval tools) sees an ordinary checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

from pose_megatron import dtypes, publish

GGUF_MAGIC = b"GGUF"
#: Keys of config.json that only describe how the GGUF file was read, never the model.
_LOADER_ONLY_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")
#: Keys of tokenizer_config.json that record where it was loaded from, not what it is.
_LOADER_ONLY_TOKENIZER_KEYS = ("is_local", "local_files_only", "name_or_path")


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[import_gguf] {message}", file=sys.stderr, flush=True)


def check_gguf_file(path: str) -> str:
    """The absolute path of ``path`` if it is a readable GGUF file, else a one-line error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--gguf {path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"--gguf {path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    return os.path.abspath(path)


def gguf_architecture(path: str) -> str:
    """``general.architecture`` of a GGUF file (e.g. 'llama'), read without loading tensors."""
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ValueError(f"--gguf {path}: no general.architecture in its metadata")
    return str(field.contents())


def _dequantising_config(path: str):
    """The quantization_config that makes transformers unpack every weight at load time.

    transformers >= 5 keeps GGUF weights packed by default (GgufConfig(dequantize=False)); 4.x
    always unpacked and has no such config, so ``None`` is the same request there.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(gguf_file=path, dequantize=True)


def _clean_json(path: str, keys) -> None:
    if not os.path.isfile(path):
        return
    with open(path) as f:
        data = json.load(f)
    for key in keys:
        data.pop(key, None)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def gguf_to_hf(gguf_path: str, out: str, *, dtype: str = "fp32", force: bool = False,
               progress: bool = True) -> dict:
    """Write ``out``: a HF model directory holding the GGUF file's model, unpacked to ``dtype``.

    Returns a summary (architecture, layers, dtype, parameter count, files written).
    """
    name = dtypes.canonical(dtype)  # before anything is read
    path = check_gguf_file(gguf_path)
    try:
        arch = gguf_architecture(path)
    except ImportError:
        raise ImportError("reading GGUF needs the 'gguf' package: pip install gguf") from None
    torch_dtype = dtypes.to_torch(name)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, filename = os.path.split(path)
    transformers.logging.set_verbosity_error()  # its GGUF notes are about the packed path we skip
    with publish.publish_dir(out, force=force) as tmp:
        _say(f"reading the tokenizer and chat template of {filename}", progress)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        _say(f"unpacking the {arch} weights of {filename} to {name}", progress)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=filename, dtype=torch_dtype,
                quantization_config=_dequantising_config(path))
        except ValueError as err:  # transformers' own message names the unsupported architecture
            raise ValueError(f"--gguf {path}: transformers cannot load it: "
                             f"{str(err).splitlines()[0]}") from None
        # Nothing stays packed, so the quantizer and its config only misdescribe the weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch_dtype})
        if wrong:
            raise ValueError(f"--gguf {path}: weights came back as {wrong}, not {torch_dtype}")
        n_params = sum(p.numel() for p in model.parameters())
        _say(f"writing {n_params / 1e6:.1f}M parameters to {out}", progress)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _clean_json(os.path.join(tmp, "config.json"), _LOADER_ONLY_CONFIG_KEYS)
        _clean_json(os.path.join(tmp, "tokenizer_config.json"), _LOADER_ONLY_TOKENIZER_KEYS)
        files = sorted(os.listdir(tmp))
        config = model.config
    return {"architecture": arch, "model_type": config.model_type,
            "layers": config.num_hidden_layers, "dtype": name,
            "parameters": n_params, "files": files,
            "chat_template": "chat_template.jinja" in files}

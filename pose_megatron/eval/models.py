"""Load a model and its tokenizer for evaluation, behind one small interface.

Two sources are supported:
- a HF directory (``config.json`` + weights + tokenizer files), loaded with
  ``AutoModelForCausalLM`` from local files only and never with ``trust_remote_code``;
- a pose_megatron checkpoint (recognised by its ``pose_model.json``), loaded with
  ``pose_megatron.load_megatron_model`` as a Megatron-Core ``GPTModel`` on one process.

Both are wrapped in ``EvalModel``, whose ``logits`` and ``greedy`` are all the protocols use, so
the passkey and perplexity code never branches on where the model came from.

``--rope-scaling`` overrides (HF dictionary form, e.g. ``{"rope_type": "yarn", "factor": 8,
"original_max_position_embeddings": 2048}``) are applied to the configuration before the weights
are loaded: evaluating an unmodified model with position interpolation is a configuration change,
not a different checkpoint. On a Megatron model the override (or the checkpoint's own scaling)
is installed with ``pose_megatron.model.enable_pose_rope`` without the position limit that
training enforces, since evaluation probes lengths beyond the window on purpose.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from pose_megatron import dtypes
from pose_megatron.config import CONFIG_FILENAME
from pose_megatron.eval.prompting import common_prefix_len

# Prompt tokens run per forward when a prompt continues from a cached prefix (PrefixGreedy).
_CONTINUE_ROWS = 512

# RoPE types whose HF implementation needs the pretraining window, which we take from the model's
# own max_position_embeddings when the override does not name it.
_NEEDS_ORIGINAL_WINDOW = ("yarn", "llama3", "longrope")


# ----------------------------------------------------------------------------------------------
# Options parsing


def parse_rope_scaling(text: Optional[str]) -> Optional[dict]:
    """Parse a ``--rope-scaling`` value: a JSON object with "rope_type" (or legacy "type").

    Checked by ``pose_megatron.rope.validate_rope_scaling`` (the package's one RoPE check); a
    missing ``original_max_position_embeddings`` is filled from the model when it is loaded.
    """
    if text is None or text.strip().lower() in ("", "none", "null"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--rope-scaling is not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--rope-scaling must be a JSON object, got {text!r}")
    value = dict(value)
    if "rope_type" not in value and "type" in value:
        value["rope_type"] = value.pop("type")
    if "rope_type" not in value:
        raise ValueError(f"--rope-scaling needs a \"rope_type\" key (e.g. linear, yarn): {text!r}")
    from pose_megatron.rope import validate_rope_scaling

    # max_position_embeddings=1 only stands in for the model's window in this check.
    validate_rope_scaling(value, max_position_embeddings=1, source="--rope-scaling")
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on the CPU (bfloat16 matmuls are slow there) and bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtypes.to_torch(name, source="--dtype", also=("auto",))


# ----------------------------------------------------------------------------------------------
# Tokenizers


@dataclass
class TextTokenizer:
    """Text <-> ids without special tokens; the protocols add BOS themselves."""

    encode: Callable[[str], List[int]]
    decode: Callable[[Sequence[int]], str]
    bos_id: Optional[int]
    eos_id: Optional[int]
    vocab_size: int
    source: str
    # One user message -> the chat-formatted prompt text with the assistant turn opened; None
    # when the tokenizer has no chat template (sentencepiece files, base models).
    render_chat: Optional[Callable[[str], str]] = None


def load_tokenizer(path: str) -> TextTokenizer:
    """A sentencepiece ``.model`` file (or a directory holding only ``tokenizer.model``) or a HF
    tokenizer directory, read by the package's one loader (``LocalTokenizer``)."""
    from pose_megatron.data.text_tokenizer import LocalTokenizer

    local = LocalTokenizer(path)

    def _id_or_none(i: int) -> Optional[int]:
        return None if i < 0 else int(i)

    return TextTokenizer(
        encode=lambda text: list(local.tokenize(text)),
        decode=lambda ids: local.detokenize(ids, skip_special_tokens=True),
        bos_id=_id_or_none(local.bos),
        eos_id=_id_or_none(local.eod),
        vocab_size=local.vocab_size,
        source=local.path,
        render_chat=local.chat_renderer(),
    )


# ----------------------------------------------------------------------------------------------
# Models


@dataclass
class EvalModel:
    """What the protocols need from a model.

    ``logits(ids, keep)``: ids [b, s] -> float logits [b, keep, vocab] of the last ``keep``
    positions (all when ``keep`` is None); positions are 0..s-1.
    ``greedy(ids, max_new_tokens)``: the greedily generated continuation of one prompt (list of
    ids), stopping early at EOS.
    ``greedy_sharing(prefix)``: a ``greedy`` that computes the key/value cache of ``prefix`` once
    and starts every prompt from the part of it that the prompt begins with (the same answers,
    for the cost of the rest of each prompt); None for models without a KV cache interface.
    """

    name: str
    path: str
    kind: str  # "hf" or "megatron"
    tokenizer: TextTokenizer
    device: torch.device
    logits: Callable[[torch.Tensor, Optional[int]], torch.Tensor]
    greedy: Callable[[List[int], int], List[int]]
    rope_scaling: Optional[dict] = None
    info: dict = field(default_factory=dict)
    module: Optional[torch.nn.Module] = None  # the underlying model, for inspection
    greedy_sharing: Optional[Callable[[List[int]], "PrefixGreedy"]] = None  # HF models only

    @property
    def bos_id(self) -> int:
        bos = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.info.get("bos")
        if bos is None:
            raise ValueError(
                f"{self.path}: neither the tokenizer ({self.tokenizer.source}) nor the model "
                "config names a BOS token, which the evaluation windows start with"
            )
        return int(bos)


class PrefixGreedy:
    """Greedy decoding that starts each prompt from a cached prefix.

    ``prefill(prefix_ids)`` returns the model's key/value cache of the prefix; ``generate(prompt,
    cache, max_new_tokens)`` decodes greedily from ``cache``, which holds the keys and values of
    the prompt's first ``cache length`` tokens, or from nothing when ``cache`` is None. Causal
    attention makes a token's keys and values depend only on the tokens before it, so a prompt
    that shares its first k ids with the prefix reuses the prefix's first k entries and computes
    only the rest. ``cached_tokens`` counts what each call reused.
    """

    def __init__(self, prefix: Sequence[int], prefill, generate, crop):
        self.prefix = [int(t) for t in prefix]
        self._cache = prefill(self.prefix) if self.prefix else None
        self._generate = generate
        self._crop = crop
        self.cached_tokens = 0  # of the last call

    def __call__(self, prompt: List[int], max_new_tokens: int) -> List[int]:
        # at least the prompt's last token is run, so its logits exist to pick the first answer
        k = min(common_prefix_len(self.prefix, prompt), len(prompt) - 1)
        cache = self._crop(self._cache, k) if k > 0 else None
        self.cached_tokens = k
        return self._generate(prompt, cache, max_new_tokens)


@torch.no_grad()
def extend_cache(model, ids: torch.Tensor, cache, cache_arg: str, keeps_logits: bool) -> None:
    """Run the tokens of ``ids`` [1, s] after the ``cache``'s length through the HF ``model``, in
    pieces of ``_CONTINUE_ROWS``, so that ``cache`` holds the keys and values of all s tokens."""
    keep = {"logits_to_keep": 1} if keeps_logits else {}
    for start in range(cache.get_seq_length(), ids.shape[1], _CONTINUE_ROWS):
        piece = ids[:, start:start + _CONTINUE_ROWS]
        model(input_ids=piece, use_cache=True, **{cache_arg: cache}, **keep)


def is_megatron_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILENAME))


def greedy_without_cache(
    forward_last: Callable[[torch.Tensor], torch.Tensor],
    prompt: List[int],
    max_new_tokens: int,
    eos_id: Optional[int],
    device: torch.device,
) -> List[int]:
    """Greedy decoding by re-running the whole sequence for each new token.

    Used for models without a KV cache interface (Megatron-Core GPTModel here); 10 new tokens
    cost 10 full forward passes, which is fine for evaluation on modest lengths.
    ``forward_last(ids [1, s]) -> logits [1, vocab]`` of the last position.
    """
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out: List[int] = []
    for _ in range(max_new_tokens):
        nxt = int(forward_last(ids).argmax(dim=-1).item())
        out.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
    return out


def _apply_rope_override(config, rope_scaling: dict) -> None:
    """Put an HF-form RoPE override into a transformers config (v4 ``rope_scaling`` or v5
    ``rope_parameters``), keeping the model's own rope_theta."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    override = dict(rope_scaling)
    kind = override["rope_type"]
    known = sorted(set(ROPE_INIT_FUNCTIONS) | {"default"})
    if kind not in known:
        raise ValueError(f"--rope-scaling rope_type {kind!r} is not one transformers knows: "
                         f"{', '.join(known)}")
    if kind in _NEEDS_ORIGINAL_WINDOW:
        override.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    if kind in ("linear", "yarn", "llama3") and override.get("factor"):
        # The extended window, as PI/YaRN checkpoints record it; these types read their
        # scaling from the override alone, so this only informs generate's length checks.
        from pose_megatron.rope import scaled_window

        config.max_position_embeddings = max(
            config.max_position_embeddings,
            scaled_window(override, config.max_position_embeddings))
    if hasattr(config, "rope_parameters"):
        current = dict(getattr(config, "rope_parameters", None) or {})
        theta = current.get("rope_theta", getattr(config, "rope_theta", None))
        if theta is not None:
            override.setdefault("rope_theta", theta)
        config.rope_parameters = override
        if hasattr(config, "validate_rope"):
            config.validate_rope()
    else:
        config.rope_scaling = override


def _stop_token(tokenizer, config_eos) -> Optional[int]:
    """The token that ends greedy generation: the tokenizer's EOS, else the model config's (HF
    configs may list several; the first is the one generation stops on)."""
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else config_eos
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


def load_hf_model(
    path: str,
    *,
    rope_scaling: Optional[dict] = None,
    tokenizer_path: Optional[str] = None,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    name: Optional[str] = None,
) -> EvalModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} is neither a HF model directory (no config.json) nor a pose_megatron "
            f"checkpoint (no {CONFIG_FILENAME})"
        )
    from pose_megatron.convert.hf_io import HFCheckpoint

    weights = HFCheckpoint(path)  # config.json and weight files readable, else one line naming it
    weights.check_files()
    weights.close()
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if rope_scaling is not None:
        _apply_rope_override(config, rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(
        path, config=config, local_files_only=True, trust_remote_code=False, dtype=dtype
    )
    model.to(device).eval()
    tokenizer = load_tokenizer(tokenizer_path or path)
    forward_args = inspect.signature(model.forward).parameters
    keeps_logits = "logits_to_keep" in forward_args
    # transformers 5.2x renamed past_key_values to cache (the old name still works, with a warning)
    cache_arg = "cache" if "cache" in forward_args else "past_key_values"
    eos = _stop_token(tokenizer, config.eos_token_id)

    @torch.no_grad()
    def logits(ids: torch.Tensor, keep: Optional[int] = None) -> torch.Tensor:
        ids = ids.to(device)
        if keep is not None and keeps_logits:
            # Only the scored positions reach the LM head: for long windows on real vocabularies
            # the full [s, vocab] logits would dominate memory.
            return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        out = model(input_ids=ids, use_cache=False).logits
        return out if keep is None else out[:, -keep:]

    @torch.no_grad()
    def generate(prompt: List[int], cache, max_new_tokens: int) -> List[int]:
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        extra = {}
        if cache is not None:
            # The prompt's tokens after the cached ones, all but the last, go in pieces of
            # _CONTINUE_ROWS: a query block shorter than its keys needs an explicit mask, and on
            # the CPU SDPA runs that mask unfused, [rows x keys] at once (measured: 6000 new
            # tokens after 2192 cached took 1.6x a whole 8192-token causal pass in one piece,
            # 1.0x in pieces of 512: SDPA alone, one layer). generate then runs the last token.
            extend_cache(model, ids[:, :-1], cache, cache_arg, keeps_logits)
            extra = {cache_arg: cache}
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos if eos is not None else 0,
            **extra,
        )
        return [int(t) for t in out[0, ids.shape[1]:]]

    def greedy(prompt: List[int], max_new_tokens: int) -> List[int]:
        return generate(prompt, None, max_new_tokens)

    @torch.no_grad()
    def prefill(prefix: List[int]):
        ids = torch.tensor([prefix], dtype=torch.long, device=device)
        extra = {"logits_to_keep": 1} if keeps_logits else {}  # not [s, vocab] logits at 32k
        out = model(input_ids=ids, use_cache=True, **extra)
        return getattr(out, "cache", None) or out.past_key_values

    def crop(cache, k: int):
        # generate extends the cache it is given: each prompt gets its own copy of the first k
        import copy

        mine = copy.deepcopy(cache)
        extra = mine.get_seq_length() - k
        if extra:
            mine.crop(-extra)  # a count to remove: what transformers 4.x and 5.x both read so
        return mine

    def greedy_sharing(prefix: List[int]) -> PrefixGreedy:
        return PrefixGreedy(prefix, prefill, generate, crop)

    return EvalModel(
        name=name or os.path.basename(os.path.normpath(path)),
        path=path,
        kind="hf",
        tokenizer=tokenizer,
        device=device,
        logits=logits,
        greedy=greedy,
        rope_scaling=rope_scaling,
        info={"bos": config.bos_token_id, "model_type": config.model_type,
              "vocab_size": config.vocab_size},
        module=model,
        greedy_sharing=greedy_sharing,
    )


def load_megatron(
    path: str,
    *,
    tokenizer_path: Optional[str],
    rope_scaling: Optional[dict] = None,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    name: Optional[str] = None,
) -> EvalModel:
    import pose_megatron
    from pose_megatron.checkpoint import store

    if tokenizer_path is None:
        # The HF -> Megatron converter copies the HF tokenizer into the checkpoint.
        tokenizer_path = os.path.join(path, store.TOKENIZER_SUBDIR)
        if not os.path.isdir(tokenizer_path):
            raise ValueError(
                f"{path} is a Megatron checkpoint without a {store.TOKENIZER_SUBDIR}/ "
                "directory: pass --tokenizer (a sentencepiece .model file or a HF tokenizer "
                "directory)"
            )

    # the settings saved with the weights the tracker names (older checkpoints: the root's)
    args = store.model_args_of(path, store.resolve_iteration_dir(path))
    tokenizer = load_tokenizer(tokenizer_path)
    model = pose_megatron.load_megatron_model(path, device=str(device), dtype=dtype)
    set_eval_rope(model, args, rope_scaling)
    return wrap_megatron(model, args, tokenizer, device=device, dtype=dtype, path=path,
                         name=name, rope_scaling=rope_scaling)


def set_eval_rope(model: torch.nn.Module, args, rope_scaling: Optional[dict] = None) -> None:
    """Give a loaded Megatron model the RoPE of ``rope_scaling`` (or its own) without the
    position limit training keeps: evaluation probes lengths beyond the window on purpose."""
    import dataclasses

    from pose_megatron.model import enable_pose_rope
    from pose_megatron.rotary import RopeSettings

    if rope_scaling is not None:
        args = dataclasses.replace(args, rope_scaling=dict(rope_scaling))
    settings = dataclasses.replace(RopeSettings.from_model_args(args), max_position=None)
    enable_pose_rope(model, settings)


def wrap_megatron(
    model: torch.nn.Module,
    args,
    tokenizer: TextTokenizer,
    *,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    path: str = "",
    name: Optional[str] = None,
    rope_scaling: Optional[dict] = None,
) -> EvalModel:
    """An ``EvalModel`` over a Megatron-Core GPTModel (one process, all layers) described by the
    ``ModelArgs`` ``args``; its forward is ``model(input_ids, position_ids, attention_mask=None)``
    and returns logits [b, s, vocab]."""
    model.to(device=device, dtype=dtype).eval()
    eos = _stop_token(tokenizer, args.eos_token_id)

    @torch.no_grad()
    def logits(ids: torch.Tensor, keep: Optional[int] = None) -> torch.Tensor:
        ids = ids.to(device)
        positions = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
        out = model(ids, positions, attention_mask=None)
        # Megatron pads the vocabulary for tensor-parallel divisibility; padded entries are
        # not tokens and must not take probability mass.
        out = out[..., : args.vocab_size]
        return out if keep is None else out[:, -keep:]

    def greedy(prompt: List[int], max_new_tokens: int) -> List[int]:
        return greedy_without_cache(lambda ids: logits(ids, 1)[:, -1], prompt, max_new_tokens,
                                    eos, device)

    return EvalModel(
        name=name or os.path.basename(os.path.normpath(path)) or "megatron",
        path=path,
        kind="megatron",
        tokenizer=tokenizer,
        device=device,
        logits=logits,
        greedy=greedy,
        rope_scaling=rope_scaling if rope_scaling is not None else args.rope_scaling,
        info={"bos": args.bos_token_id, "model_type": args.family, "vocab_size": args.vocab_size},
        module=model,
    )


def load_model(
    path: str,
    *,
    rope_scaling: Optional[dict] = None,
    tokenizer_path: Optional[str] = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    name: Optional[str] = None,
) -> EvalModel:
    """Load ``path`` (HF directory or pose_megatron checkpoint) for evaluation."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path}: no such directory")
    if not isinstance(device, torch.device):
        device = resolve_device(device)
    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, device)
    loader = load_megatron if is_megatron_checkpoint(path) else load_hf_model
    return loader(path, rope_scaling=rope_scaling, tokenizer_path=tokenizer_path, device=device,
                  dtype=dtype, name=name)

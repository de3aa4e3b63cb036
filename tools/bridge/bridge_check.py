#!/usr/bin/env python
"""Driver of tools/check_bridge.sh: the Megatron-Bridge side of the interop check.

Runs in the Bridge environment (.venv-bridge, see tools/bridge/setup_bridge_env.sh), which has
this tree installed (for pose_megatron.cpu_shims, the project's CPU redirects of Megatron-Core's
CUDA-only calls). Every step is Bridge's own code, on the CPU:

  make-hf       a tiny random LLaMA (or Qwen3 with YaRN) in HF format, with a tiny tokenizer
  import        HF -> Megatron with Bridge: AutoBridge.import_ckpt's steps, CPU settings
  load          Bridge's loader (AutoBridge.load_megatron_model) on a Megatron checkpoint; the
                loaded model's logits against the HF model's
  export        Megatron -> HF with Bridge (AutoBridge.export_ckpt's calls, CPU settings)
  logits        max |logits difference| of two HF directories (transformers)
  versions      Bridge and pose_megatron import here; prints the versions (setup_bridge_env.sh)

Each step prints one ``RESULT {json}`` line that tools/check_bridge.sh collects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Settings of Bridge's LLaMA provider that need Transformer Engine or CUDA kernels; on the CPU
# they are switched off (numerically the same model: fusions only).
CPU_OFF = ("apply_rope_fusion", "bias_activation_fusion", "masked_softmax_fusion",
           "persist_layer_norm", "bias_dropout_fusion", "gradient_accumulation_fusion")


def cpu_overrides() -> dict:
    """What Bridge's loader is told on the CPU: Megatron-Core's local layer spec (its default is
    the Transformer Engine spec) and no fused kernels. ``load_megatron_model`` applies every key
    of ``mp_overrides`` to the provider it instantiated from run_config.yaml."""
    from megatron.bridge.models.gpt_provider import local_layer_spec

    return {"transformer_layer_spec": local_layer_spec, **{name: False for name in CPU_OFF}}


def _result(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


def _import_bridge():
    import cpu_shim

    cpu_shim.install()
    from megatron.bridge import AutoBridge  # noqa: F401
    import megatron.bridge.training.model_load_save  # noqa: F401  (imports the peft chain too)

    cpu_shim.uninstall_te_standin()
    return AutoBridge


def _inputs(vocab: int):
    import torch

    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab, (2, 24), generator=g)


def hf_logits(hf_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(_inputs(model.config.vocab_size)).logits.float()


def cmd_make_hf(opts) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(opts.vocab_size - 3)}
    vocab.update({"<unk>": opts.vocab_size - 3, "<s>": opts.vocab_size - 2,
                  "</s>": opts.vocab_size - 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    shape = dict(
        vocab_size=opts.vocab_size, hidden_size=opts.hidden_size,
        intermediate_size=4 * opts.hidden_size, num_hidden_layers=opts.layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, bos_token_id=opts.vocab_size - 2, eos_token_id=opts.vocab_size - 1)
    if opts.family == "qwen3":  # QK norm, head_dim != hidden/heads, tied, YaRN as its configs
        from transformers import Qwen3Config as Config, Qwen3ForCausalLM as Model

        config = Config(**shape, head_dim=opts.hidden_size // 4 + 8, tie_word_embeddings=True,
                        # HF's YaRN defaults spelled out: Bridge's own import copies only
                        # the keys present, and Megatron fills none of them
                        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0,
                                         "factor": 4.0, "original_max_position_embeddings": 64,
                                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True})
    else:
        Config, Model = LlamaConfig, LlamaForCausalLM
        config = Config(**shape, rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Model(config)
    with torch.no_grad():  # norms away from 1 so a dropped or swapped norm shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(opts.out)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(opts.out)
    _result(step="make-hf", out=opts.out, params=sum(p.numel() for p in model.parameters()))


def cmd_import(opts) -> None:
    t0 = time.perf_counter()
    AutoBridge = _import_bridge()
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training.model_load_save import temporary_distributed_context

    from pose_megatron import cpu_shims

    t1 = time.perf_counter()
    # AutoBridge.import_ckpt(hf, out) is from_hf_pretrained -> to_megatron_model ->
    # save_megatron_model(hf_tokenizer_path=hf, low_memory_save=True); the same calls here, with
    # the provider told to build Megatron-Core's local spec and no fused kernels (no TE on CPU).
    with cpu_shims.redirected(), temporary_distributed_context(backend="gloo"):
        bridge = AutoBridge.from_hf_pretrained(opts.hf)
        provider = bridge.to_megatron_provider(load_weights=True)
        provider.transformer_layer_spec = local_layer_spec
        for name in CPU_OFF:
            setattr(provider, name, False)
        provider.finalize()
        model = provider.provide_distributed_model(wrap_with_ddp=False,
                                                   use_cpu_initialization=True)
        bridge.save_megatron_model(model, opts.out, hf_tokenizer_path=opts.hf,
                                   low_memory_save=True)
    t2 = time.perf_counter()
    _result(step="import", out=opts.out, import_s=round(t1 - t0, 2), convert_s=round(t2 - t1, 2))


def _bridge_logits(AutoBridge, hf_dir: str, ckpt: str):
    import torch
    from megatron.bridge.training.model_load_save import temporary_distributed_context

    from pose_megatron import cpu_shims

    with cpu_shims.redirected(), temporary_distributed_context(backend="gloo"):
        bridge = AutoBridge.from_hf_pretrained(hf_dir)
        model = bridge.load_megatron_model(ckpt, mp_overrides=cpu_overrides(),
                                           wrap_with_ddp=False)[0].eval()
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(0)  # attention forks Megatron's RNG tracker (redirected)
        tokens = _inputs(bridge.hf_pretrained.config.vocab_size)
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        mask = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)
        with torch.no_grad():
            return model(tokens, positions, mask[None, None]).float()


def cmd_load(opts) -> None:
    AutoBridge = _import_bridge()
    t0 = time.perf_counter()
    logits = _bridge_logits(AutoBridge, opts.hf, opts.ckpt)
    t1 = time.perf_counter()
    ref = hf_logits(opts.hf)
    _result(step="load", ckpt=opts.ckpt, load_s=round(t1 - t0, 2),
            max_abs_diff=float((logits - ref).abs().max()))


def cmd_export(opts) -> None:
    AutoBridge = _import_bridge()
    from pose_megatron import cpu_shims

    from megatron.bridge.training.model_load_save import temporary_distributed_context

    t0 = time.perf_counter()
    # AutoBridge.export_ckpt(ckpt, out) is these two calls in a gloo context; the loader is told
    # the CPU settings (cpu_overrides), which export_ckpt has no argument for
    with cpu_shims.redirected(), temporary_distributed_context(backend="gloo"):
        bridge = AutoBridge.from_hf_pretrained(opts.hf)
        model = bridge.load_megatron_model(opts.ckpt, mp_overrides=cpu_overrides(),
                                           wrap_with_ddp=False)
        bridge.save_hf_pretrained(model, opts.out, show_progress=False)
    _result(step="export", ckpt=opts.ckpt, out=opts.out,
            export_s=round(time.perf_counter() - t0, 2))


def cmd_logits(opts) -> None:
    diff = float((hf_logits(opts.a) - hf_logits(opts.b)).abs().max())
    _result(step="logits", a=opts.a, b=opts.b, max_abs_diff=diff)


def cmd_versions(opts) -> None:
    import torch
    import transformers
    from importlib.metadata import version

    _import_bridge()
    import pose_megatron.cpu_shims  # noqa: F401  (this tree, installed by setup_bridge_env.sh)

    print(f"[bridge-env] torch {torch.__version__} (cuda={torch.cuda.is_available()}), "
          f"megatron-core {version('megatron-core')}, megatron-bridge "
          f"{version('megatron-bridge')}, transformers {transformers.__version__}, "
          f"pose_megatron {version('pose_megatron')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make-hf")
    s.add_argument("--out", required=True)
    s.add_argument("--family", choices=("llama", "qwen3"), default="llama",
                   help="llama (plain RoPE, untied) or qwen3 (QK norm, head_dim 24, tied, YaRN x4)")
    s.add_argument("--vocab-size", type=int, default=512)
    s.add_argument("--hidden-size", type=int, default=64)
    s.add_argument("--layers", type=int, default=2)
    s.set_defaults(fn=cmd_make_hf)
    s = sub.add_parser("import")
    s.add_argument("--hf", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_import)
    s = sub.add_parser("load")
    s.add_argument("--hf", required=True, help="the HF model (Bridge's config; reference logits)")
    s.add_argument("--ckpt", required=True)
    s.set_defaults(fn=cmd_load)
    s = sub.add_parser("export")
    s.add_argument("--hf", required=True, help="the HF model (Bridge's config)")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("logits")
    s.add_argument("--a", required=True)
    s.add_argument("--b", required=True)
    s.set_defaults(fn=cmd_logits)
    sub.add_parser("versions").set_defaults(fn=cmd_versions)
    opts = p.parse_args(argv)
    opts.fn(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

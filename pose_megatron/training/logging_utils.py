"""Per-interval training metrics: throughput, memory, an MFU estimate, TensorBoard."""

from __future__ import annotations

import resource
import sys

import torch

from pose_megatron.config import ModelArgs

# Dense bf16 peaks (TFLOP/s) for the MFU estimate; other devices need --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "B200": 2250.0}


def num_parameters(args: ModelArgs) -> int:
    """Parameters of the whole model (all stages, all TP shards)."""
    h, f, v = args.hidden_size, args.intermediate_size, args.vocab_size
    q = args.num_attention_heads * args.head_dim
    kv = 2 * args.num_query_groups * args.head_dim
    attn = h * (q + kv) + q * h + (q + kv if args.qkv_bias else 0)
    mlp = 3 * h * f
    per_layer = attn + mlp + 2 * h
    embed = v * h * (1 if args.tie_word_embeddings else 2)
    return args.num_layers * per_layer + embed + h


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight (fwd + bwd) plus causal attention scores.

    Attention: QK^T and AV cost 2 * 2 * seq * q_dim FLOPs per token forward, halved by the causal
    mask, times 3 for forward + backward: 6 * seq * q_dim per layer. Embedding lookups are not
    matmuls and are left out of the weight term.
    """
    weights = num_parameters(args) - args.vocab_size * args.hidden_size * (
        0 if args.tie_word_embeddings else 1)
    attention = 6 * seq_len * args.num_attention_heads * args.head_dim * args.num_layers
    return 6.0 * weights + attention


def peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


def peak_memory_gib(device: str) -> float:
    """Peak memory of this process: CUDA allocator peak, or the CPU process's peak RSS."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 * (1 if sys.platform == "darwin" else 1024)


def format_line(iteration: int, train_iters: int, m: dict) -> str:
    parts = [f"iter {iteration:>6}/{train_iters}", f"loss {m['loss']:.6f}", f"lr {m['lr']:.3e}",
             f"grad_norm {m['grad_norm']:.4f}" if m.get("grad_norm") is not None else "grad_norm n/a",
             f"tokens/s {m['tokens_per_s']:.0f}", f"step {m['step_time_s'] * 1000:.1f} ms",
             f"mem {m['memory_gib']:.2f} GiB",
             f"mfu {m['mfu'] * 100:.1f}%" if m.get("mfu") is not None else "mfu n/a"]
    return " | ".join(parts)


class TensorBoard:
    """SummaryWriter when tensorboard is importable and a directory is given; else a no-op."""

    def __init__(self, directory: str | None):
        self.writer = None
        if directory:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(f"tensorboard is not installed; --tensorboard-dir {directory} ignored",
                      file=sys.stderr)
                return
            self.writer = SummaryWriter(directory)

    def log(self, iteration: int, metrics: dict) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, iteration)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

"""PoSE (Positional Skip-wise training) context-window extension for NVIDIA Megatron-Core."""

__version__ = "0.1.0"


def load_megatron_model(ckpt_dir, **kwargs):
    """Load a pose_megatron / converted checkpoint as a Megatron-Core GPTModel on one process."""
    from pose_megatron.checkpoint.loader import load_megatron_model as _load

    return _load(ckpt_dir, **kwargs)

"""HF <-> Megatron-Core checkpoint conversion for LLaMA-family models (LLaMA, Mistral, Qwen2).

``hf_config``: config.json <-> ModelArgs and RoPE export; ``weights``: tensor layout (pure);
``hf_io`` (HF) and ``pose_megatron.checkpoint.store`` (Megatron): the two on-disk formats; ``api``: the conversions end to end.
"""

from pose_megatron.convert.api import hf_to_megatron, megatron_to_hf

__all__ = ["hf_to_megatron", "megatron_to_hf"]

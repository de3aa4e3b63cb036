"""A HybridStack spec of Megatron-Core's local (torch) layers, for Megatron-LM's
``pretrain_hybrid.py`` where Transformer Engine is absent (a CPU, or a cluster without TE)::

    pretrain_hybrid.py ... --hybrid-layer-pattern '*-*-...' --transformer-impl local \\
        --spec pose_megatron.hybrid_local_spec hybrid_stack_spec

Megatron-Core's own ``hybrid_layer_specs.hybrid_stack_spec`` (what ``--spec
megatron.core.models.hybrid.hybrid_layer_specs hybrid_stack_spec`` names) is Transformer Engine
only. This one serves the ``*-`` layers of a LLaMA-family model (RMSNorm) with the GPT local
spec's modules and checkpoint names (``pose_megatron.model.hybrid_stack_spec``). Megatron-LM's
``--spec`` reads a module attribute, hence this module; it needs megatron-core 0.19+. Qwen3
(``--qk-layernorm``) takes ``hybrid_stack_spec_qk_layernorm``, the same layers with QK norm.
"""

from pose_megatron.model import hybrid_stack_spec as _hybrid_stack_spec

hybrid_stack_spec = _hybrid_stack_spec("local", "RMSNorm")
hybrid_stack_spec_qk_layernorm = _hybrid_stack_spec("local", "RMSNorm", qk_layernorm=True)

"""The start-up warnings a user cannot act on, silenced in one place for every tool.

``UNACTIONABLE_WARNINGS`` says which and why; ``errors.run`` (every tool) and the training entry
apply the filter before Megatron-Core's first import emits them. The implementation path they
would announce is named once instead: in training's settings line, and in the GPU check.
"""

from __future__ import annotations

import warnings

#: (message regex, category, why the user cannot act on it). Filtered by message, so a warning
#: of the same module that says something else still shows.
UNACTIONABLE_WARNINGS = (
    (r"Transformer Engine and Apex are not installed", UserWarning,
     "Megatron-Core's optimizer, grad clipping and FSDP modules fall back to their torch "
     "implementations on a machine without TE/apex (every CPU machine); the settings line says "
     "which layer implementation runs"),
    (r"Apex is not installed\. Falling back to Torch Norm", UserWarning,
     "the same fallback for RMSNorm, announced by two modules"),
    (r"full scope is deprecated", UserWarning,
     "raised by Megatron-Core 0.16's own TransformerConfig default (cuda_graph_scope='full'); "
     "no flag of this tool sets it, and CUDA graphs are not used"),
    (r"`load_state_dict` is deprecated and will be removed", FutureWarning,
     "torch.distributed.checkpoint's deprecation of the call Megatron-Core's checkpoint loader "
     "makes (--load); only a Megatron-Core release can change it"),
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning,
     "torch's deprecation of ShardedTensor, which Megatron-Core's torch_dist format is built "
     "on (--load); the same"),
)
# Kept on purpose: Megatron's "pad token id ... collides with another special token id" (it is
# about the user's tokenizer, and says what changes), and every warning not listed.


def filter_startup_warnings() -> None:
    for message, category, _why in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)

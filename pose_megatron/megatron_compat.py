"""The private Megatron-Core names pose_megatron still uses, each behind a version check.

Everything else in the package goes through Megatron-Core's public API (``GPTModel``,
``RotaryEmbedding``, ``TransformerConfig`` fields such as ``softmax_scale``, ``dist_checkpointing``,
``parallel_state``). What stays private, and why nothing public does the job:

``megatron.core.tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state``
    Used by ``cpu_shims`` (CPU runs and tests only). Megatron's CUDA RNG tracker, which every
    attention forward forks, reads and writes the CUDA generator through these module functions.
    On a CPU-only torch ``_set_cuda_rng_state`` hands its write to ``torch.cuda._lazy_call``, which
    queues it for a CUDA initialisation that never comes: one leaked closure per fork, and seeding
    never reaches a generator. Megatron-Core has no public switch for a CPU tracker, so the CPU
    redirects point these two at the CPU generator (``redirect_cuda_rng_to_cpu``, undone by the
    callable it returns).

``megatron.core.datasets.megatron_dataset.MegatronDataset._key_config_attributes``
    Overridden by ``pose_megatron.data.pose_dataset.PoseGPTDataset`` (as Megatron's own GPT and
    multimodal datasets do) so the PoSE settings enter the dataset cache's hash: a changed PoSE
    setting must not reuse another run's cached index. It is the base class's designated override
    point; there is no public hook. ``dataset_key_config_attributes`` reads the base list.

Not private by name, but marked ``@internal_api`` by Megatron-Core:

``RotaryEmbedding.forward(max_seq_len, offset=0, packed_seq=False, cp_group=None)``
    Overridden by ``pose_megatron.rotary.PoseRotaryEmbedding``; ``GPTModel`` calls it with the
    sequence length only, which is why position ids are bound beforehand (Megatron-LM issue #453,
    docs/upstream_rope_position_ids.md). Its signature is checked by the tests below.

Public, but used for a difference between releases:

``megatron.core.dist_checkpointing.strategies.common.TorchCommonLoadStrategy``
    Subclassed by ``checkpoint.store.load_sharded`` on 0.16 only, to read tensors of a
    checkpoint saved by 0.19 (Megatron-Bridge saves with it): 0.19 keeps the common state inside
    the .distcp files and writes no common.pt, which 0.16's ``load`` reads first. The subclass
    reads no common state; ``load``'s ``common_strategy`` argument is the documented way in.

A logger name:

``megatron.core.dist_checkpointing.strategies.filesystem_async`` (``CHECKPOINT_WRITER_LOGGER``)
    Its writer logs a failed write ("Local process 0 encountered an error: ...") and then raises
    the same error, which ``errors.run`` turns into the one ``error:`` line (a full disk names the
    output and the disk); ``errors.run`` quiets this logger unless ``--debug``. A renamed module
    only brings the extra line back, so no version check guards it.

Hybrid models (megatron-core 0.19+; ``pose_megatron.model`` builds them with ``model_class="hybrid"``):

``megatron.core.models.hybrid.hybrid_block.HybridStack``: its final norm
    ``HybridStack.__init__`` builds ``final_norm`` with a hard-coded ``TENorm`` (0.19.x), which
    raises without Transformer Engine even when every layer of the stack spec is a local one.
    ``local_hybrid_stack`` returns a subclass that builds the stack without it
    (``post_layer_norm=False``) and then adds the local spec's own norm under the same name, so
    the state-dict key (``decoder.final_norm.weight``) and the forward are the stock ones.

``megatron.core.dist_checkpointing.gpt_checkpoint_interop``
    Megatron-LM's own loader (``megatron/training/checkpointing.py``, not in the megatron-core
    wheel) uses it to load a GPT checkpoint into a hybrid run ("translate at load time");
    ``retarget_to_gpt_checkpoint`` does the same for pose_megatron's loaders, so the converters'
    GPT-layout checkpoints and GPT training runs feed hybrid runs without an offline conversion.

The version range below is the one these names were checked in (0.16.1 and 0.19.2 are tested:
``tests/test_megatron_compat.py``). Outside it, each helper fails with one clear error instead of
patching something that may have changed meaning.
"""

from __future__ import annotations

import re
from typing import Callable, List

SUPPORTED = ((0, 16), (0, 19))  # inclusive (major, minor) range checked against the source
CHECKPOINT_WRITER_LOGGER = "megatron.core.dist_checkpointing.strategies.filesystem_async"


def megatron_core_version() -> tuple[int, int]:
    import megatron.core

    return parse_version(megatron.core.__version__)


def parse_version(text: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", text)
    if not m:
        raise RuntimeError(f"cannot read the megatron-core version {text!r}")
    return int(m.group(1)), int(m.group(2))


def check_version(what: str, version: tuple[int, int] | None = None) -> None:
    """Raise a clear error when Megatron-Core is outside the range ``what`` was checked in."""
    version = version or megatron_core_version()
    low, high = SUPPORTED
    if not low <= version <= high:
        raise RuntimeError(
            f"megatron-core {version[0]}.{version[1]} is not supported by pose_megatron's {what} "
            f"(it uses private Megatron-Core names checked in {low[0]}.{low[1]}-{high[0]}."
            f"{high[1]}; see pose_megatron/megatron_compat.py); install megatron-core>="
            f"{low[0]}.{low[1]},<{high[0]}.{high[1] + 1}"
        )


def redirect_cuda_rng_to_cpu(get_state: Callable, set_state: Callable) -> Callable[[], None]:
    """Point Megatron's CUDA RNG state accessors at the given functions; return the undo."""
    check_version("CPU redirects (cpu_shims)")
    from megatron.core.tensor_parallel import random as mcore_random

    names = ("_get_cuda_rng_state", "_set_cuda_rng_state")
    missing = [n for n in names if not callable(getattr(mcore_random, n, None))]
    if missing:
        raise RuntimeError(f"megatron.core.tensor_parallel.random has no {missing}; this "
                           "megatron-core is not one pose_megatron's CPU redirects support")
    saved = {n: getattr(mcore_random, n) for n in names}
    mcore_random._get_cuda_rng_state = lambda *a, **k: get_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: set_state(state)

    def undo() -> None:
        for name, value in saved.items():
            setattr(mcore_random, name, value)

    return undo


def dataset_key_config_attributes() -> List[str]:
    """``MegatronDataset``'s own list of config attributes that identify a dataset's cache."""
    check_version("dataset cache key")
    from megatron.core.datasets.megatron_dataset import MegatronDataset

    return list(MegatronDataset._key_config_attributes())


# ----------------------------------------------------------------------------- hybrid models

HYBRID_MIN = (0, 19)  # the first megatron-core release with models/hybrid (HybridModel)


def hybrid_model_class(version: tuple[int, int] | None = None):
    """Megatron-Core's ``HybridModel``, or None where this megatron-core has none (0.16)."""
    version = version or megatron_core_version()
    if version < HYBRID_MIN:
        return None
    from megatron.core.models.hybrid.hybrid_model import HybridModel

    return HybridModel


def require_hybrid(what: str, version: tuple[int, int] | None = None) -> None:
    """One-line refusal where this megatron-core has no HybridModel."""
    version = version or megatron_core_version()
    if version < HYBRID_MIN:
        raise RuntimeError(
            f"{what} needs megatron-core >= {HYBRID_MIN[0]}.{HYBRID_MIN[1]} (HybridModel); this "
            f"is megatron-core {version[0]}.{version[1]}: install megatron-core>="
            f"{HYBRID_MIN[0]}.{HYBRID_MIN[1]} or use the GPTModel path (--model-class gpt)")
    check_version(what, version)


_LOCAL_STACKS: dict = {}


def local_hybrid_stack(final_norm):
    """``HybridStack`` whose final norm is ``final_norm`` (a local norm class) instead of TENorm."""
    require_hybrid("a hybrid stack with local layers")
    if final_norm in _LOCAL_STACKS:
        return _LOCAL_STACKS[final_norm]
    from megatron.core.models.hybrid.hybrid_block import HybridStack

    class LocalNormHybridStack(HybridStack):
        def __init__(self, config, submodules, *args, post_layer_norm: bool = True, **kwargs):
            super().__init__(config, submodules, *args, post_layer_norm=False, **kwargs)
            self.post_layer_norm = post_layer_norm
            if self.post_process and post_layer_norm:
                self.final_norm = final_norm(config=config, hidden_size=config.hidden_size,
                                             eps=config.layernorm_epsilon)

    LocalNormHybridStack.__qualname__ = LocalNormHybridStack.__name__ = (
        f"HybridStack[{getattr(final_norm, '__name__', final_norm)}]")
    _LOCAL_STACKS[final_norm] = LocalNormHybridStack
    return LocalNormHybridStack


def retarget_to_gpt_checkpoint(sharded_state_dict, hybrid_layer_pattern: str) -> None:
    """Point a hybrid model's (or its optimizer's) sharded state dict at a GPT checkpoint's keys,
    in place: Megatron-Core's load-time translation (``gpt_checkpoint_interop``)."""
    require_hybrid("loading a GPT checkpoint into a hybrid model")
    from megatron.core.dist_checkpointing.gpt_checkpoint_interop import (
        gpt_compatible_layer_maps, retarget_sharded_state_dict_to_gpt_checkpoint)

    retarget_sharded_state_dict_to_gpt_checkpoint(
        sharded_state_dict, gpt_compatible_layer_maps(hybrid_layer_pattern))

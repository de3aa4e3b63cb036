"""The private Megatron-Core names behind a version check, and the CPU redirects' undo."""

import pytest
import torch

from pose_megatron import cpu_shims, megatron_compat


def test_installed_megatron_core_is_supported_and_others_refused():
    version = megatron_compat.megatron_core_version()
    assert version in ((0, 16), (0, 19))  # the two tested environments
    megatron_compat.check_version("test")
    assert megatron_compat.parse_version("0.19.2+3a6e990") == (0, 19)
    for bad in ((0, 15), (0, 20), (1, 0)):
        with pytest.raises(RuntimeError, match=r"megatron-core \d+\.\d+ is not supported by "
                                               r"pose_megatron's test .*megatron_compat\.py"):
            megatron_compat.check_version("test", bad)


def test_rotary_forward_signature_is_the_one_pose_rotary_overrides():
    import inspect

    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    params = list(inspect.signature(RotaryEmbedding.forward).parameters)
    assert params == ["self", "max_seq_len", "offset", "packed_seq", "cp_group"]


def test_private_names_exist_in_this_megatron_core():
    from megatron.core.tensor_parallel import random as mcore_random

    assert "random_seed" in megatron_compat.dataset_key_config_attributes()
    was = cpu_shims.installed()
    cpu_shims.uninstall()
    try:
        real_get = mcore_random._get_cuda_rng_state
        real_set = mcore_random._set_cuda_rng_state
        calls = []
        undo = megatron_compat.redirect_cuda_rng_to_cpu(lambda: "state", calls.append)
        assert mcore_random._get_cuda_rng_state(graph_safe=False) == "state"
        mcore_random._set_cuda_rng_state("s", graph_safe=False)
        assert calls == ["s"]
        undo()
        assert (mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state) == \
            (real_get, real_set)
    finally:
        if was:
            cpu_shims.install()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU redirects refuse a CUDA machine")
def test_cpu_shims_uninstall_restores_torch_cuda_and_leaves_the_mode():
    from megatron.core.tensor_parallel import random as mcore_random

    names = ("current_device", "synchronize", "current_stream", "get_rng_state", "set_rng_state",
             "manual_seed", "manual_seed_all")
    was = cpu_shims.installed()
    cpu_shims.uninstall()  # other tests in this process may have installed them
    try:
        originals = {n: getattr(torch.cuda, n) for n in names}
        rng = (mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state)
        with pytest.raises((RuntimeError, AssertionError)):
            torch.empty(1, device="cuda")  # CPU-only torch: no CUDA, nothing rewrites it
        with cpu_shims.redirected():
            assert cpu_shims.installed()
            assert torch.cuda.current_device() == torch.device("cpu")
            assert torch.empty(1, device="cuda").device.type == "cpu"
            torch.cuda.manual_seed(3)
            assert torch.equal(torch.cuda.get_rng_state(), torch.get_rng_state())
        assert not cpu_shims.installed()
        assert {n: getattr(torch.cuda, n) for n in names} == originals
        assert (mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state) == rng
        with pytest.raises((RuntimeError, AssertionError)):
            torch.empty(1, device="cuda")  # the device-rewriting mode is gone
        with pytest.raises((RuntimeError, AssertionError)):
            torch.cuda.current_device()
    finally:
        if was:
            cpu_shims.install()


def test_checkpoint_writer_logger_is_the_writers_own():
    """errors.run quiets this logger; it must be the one the torch_dist writer logs its errors to."""
    import importlib
    import logging

    module = importlib.import_module(megatron_compat.CHECKPOINT_WRITER_LOGGER)
    assert module.logger is logging.getLogger(megatron_compat.CHECKPOINT_WRITER_LOGGER)


def test_hybrid_model_is_refused_in_one_line_before_0_19():
    with pytest.raises(RuntimeError, match=r"^--model-class hybrid needs megatron-core >= 0\.19 "
                                           r"\(HybridModel\); this is megatron-core 0\.16: "):
        megatron_compat.require_hybrid("--model-class hybrid", (0, 16))
    have = megatron_compat.hybrid_model_class()
    assert (have is None) == (megatron_compat.megatron_core_version() < (0, 19))


@pytest.mark.skipif(megatron_compat.hybrid_model_class() is None,
                    reason="megatron-core 0.16 has no HybridModel")
def test_hybrid_names_are_the_ones_the_adapters_use():
    import inspect

    from megatron.core.dist_checkpointing import gpt_checkpoint_interop as interop
    from megatron.core.models.hybrid.hybrid_block import HybridStack

    # local_hybrid_stack builds the stack without its TENorm final norm, then adds its own
    assert "post_layer_norm" in inspect.signature(HybridStack.__init__).parameters
    assert "final_norm" in inspect.getsource(HybridStack.__init__)
    maps = interop.gpt_compatible_layer_maps("*-*-|*-*-")
    assert maps.num_gpt_layers == 4 and dict(maps.attention_to_gpt) == {0: 0, 2: 1, 4: 2, 6: 3}
    assert list(inspect.signature(interop.retarget_sharded_state_dict_to_gpt_checkpoint)
                .parameters) == ["sharded_state_dict", "layer_maps"]

"""The Megatron-Core model classes the plugin builds, as test parameters: GPTModel everywhere,
HybridModel only where the installed megatron-core has it (0.19+)."""

import pytest


def have_hybrid() -> bool:
    from pose_megatron import megatron_compat

    return megatron_compat.hybrid_model_class() is not None


needs_hybrid = pytest.mark.skipif(
    not have_hybrid(),
    reason="HybridModel needs megatron-core >= 0.19 (this one has GPTModel only)")
HYBRID = pytest.param("hybrid", marks=needs_hybrid)
MODEL_CLASSES = ["gpt", HYBRID]
# For a test whose subject does not depend on the model class (a kill during a checkpoint save,
# say): GPTModel on a release without HybridModel, HybridModel where it exists, so the path is
# proven once per release instead of twice on 0.19.
ONE_PER_RELEASE = [
    pytest.param("gpt", marks=pytest.mark.skipif(
        have_hybrid(), reason="this release has HybridModel: the hybrid run proves the same path")),
    HYBRID,
]

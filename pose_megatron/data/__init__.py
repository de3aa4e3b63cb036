"""PoSE data pipeline on Megatron-Core's indexed datasets.

- ``preprocess``: JSONL (plain/.gz/.zst) -> ``.bin/.idx`` (``tools/preprocess_data.py``);
- ``tokenizers``: sentencepiece model files and Hugging Face tokenizer directories;
- ``sample_index``: which document(s) each sample uses (NumPy reference + C++ builder);
- ``pose_dataset``: ``PoseDatasetConfig`` / ``PoseGPTDataset`` for
  ``BlendedMegatronDatasetBuilder`` and ``build_datasets`` for a ``--data-path`` list;
- ``synthetic``: ``SyntheticPoseDataset``, the same items on random tokens (``--mock-data``);
- ``corpus``: the bundled corpus built from the Python standard library's sources.

Nothing is imported here: Megatron-Core takes seconds to import and the tools need only parts.
"""

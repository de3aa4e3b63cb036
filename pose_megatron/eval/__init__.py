"""Evaluation of extended context windows: passkey retrieval and sliding-window perplexity.

``passkey`` and ``perplexity`` hold the protocols as plain functions over token ids and a
``logits``/``greedy`` callable; ``models`` adapts a HF directory or a pose_megatron checkpoint to
that interface; ``documents`` reads evaluation text; ``plots`` and ``report`` write the outputs.
The command-line entries are ``tools/eval_passkey.py`` and ``tools/eval_ppl.py``.
"""

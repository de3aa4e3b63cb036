"""Evaluation of extended context windows: passkey retrieval, sliding-window perplexity and a
RULER-style synthetic suite.

``passkey``, ``perplexity`` and ``ruler`` (generation) / ``ruler_scoring`` hold the protocols as
plain functions over token ids and a ``logits``/``greedy`` callable; ``prompting`` has the
prompt-sizing pieces they share; ``models`` adapts a HF directory or a pose_megatron checkpoint
to that interface; ``documents`` reads evaluation text; ``plots`` and ``report`` write the
outputs. The command-line entries are ``tools/eval_passkey.py``, ``tools/eval_ppl.py`` and
``tools/eval_ruler.py``.
"""

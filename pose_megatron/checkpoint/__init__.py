"""Megatron checkpoints on disk: the one place that knows their layout.

``store``: trackers (``latest_checkpointed_iteration.txt``), ``iter_*``/``release`` directories,
the settings file beside the weights (``pose_model.json``, or Megatron-LM's saved ``args``),
torch_dist and legacy (``mp_rank_*``) reading and writing; the converters, evaluation and the
loader read and write through it. ``resumable``: a training run's checkpoints (optimizer, LR
schedule, RNG and data position; atomic, locked, resumable). ``loader``: a checkpoint as a
ready Megatron-Core model (``pose_megatron.load_megatron_model``).
"""

"""PoSE training on Megatron-Core: flags, batch routing, loop, checkpoints, logging."""

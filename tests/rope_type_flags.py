"""Each --rope-scaling-type with its own parameters, away from their defaults where it has any.

One table for the two places that train every type: tests/test_rope_types_cli.py (through
``python -m pose_megatron.train``) and tools/check_megatron_lm.sh (through Megatron-LM's patched
``pretrain_gpt.py``). The LongRoPE lists have head dim / 2 entries: 8 for head dim 16 (hidden 64,
4 heads, the default), ramps of the same range for another head dim.

  python -m tests.rope_type_flags TYPE [HEAD_DIM]   prints TYPE's flags, one per line
"""

import sys

_LONGROPE = ["--rope-short-factor", *map(str, [1, 1, 1.5, 2, 2.5, 3, 3.5, 4]),
             "--rope-long-factor", *map(str, [1, 1.2, 1.6, 2, 2.6, 3.2, 3.6, 4])]
ROPE_FLAGS = {
    "none": [],
    "linear": [],
    "ntk": [],
    "dynamic": [],
    "yarn": ["--rope-beta-fast", "16", "--rope-beta-slow", "2", "--rope-mscale", "0.9",
             "--rope-mscale-all-dim", "0.8"],
    "yarn_pose": ["--rope-beta-fast", "24"],
    "llama3": ["--rope-low-freq-factor", "2", "--rope-high-freq-factor", "8"],
    "longrope": _LONGROPE,
}



def rope_flags(kind: str, head_dim: int = 16) -> list:
    """``kind``'s flags for a model of ``head_dim`` (only LongRoPE's lists depend on it)."""
    if kind != "longrope" or head_dim == 16:
        return ROPE_FLAGS[kind]
    n = head_dim // 2
    ramp = [round(1 + 3 * i / (n - 1), 3) for i in range(n)]  # 1 .. 4, as the 16-dim lists
    return ["--rope-short-factor", *map(str, ramp),
            "--rope-long-factor", *map(str, [round(1 + 0.15 * i / (n - 1) + 0.85 * r - 0.85, 3)
                                             for i, r in enumerate(ramp)])]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ROPE_FLAGS:
        sys.exit(f"usage: python -m tests.rope_type_flags {{{','.join(ROPE_FLAGS)}}} [HEAD_DIM]")
    head_dim = int(sys.argv[2]) if len(sys.argv) == 3 else 16
    sys.stdout.write("".join(flag + "\n" for flag in rope_flags(sys.argv[1], head_dim)))

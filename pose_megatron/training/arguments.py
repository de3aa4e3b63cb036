"""Command-line flags of ``python -m pose_megatron.train``.

Flags keep Megatron-LM's names where Megatron-LM has one, so a Megatron-LM launch script carries
over; the ``--pose-*`` and ``--rope-scaling-*`` flags are PoSE's own.
"""

from __future__ import annotations

import argparse
import os

from pose_megatron import rope
from pose_megatron.config import ModelArgs

# --rope-scaling-type choices: the plugin's RoPE types ("default" spelled "none").
ROPE_SCALING_TYPES = tuple("none" if t == "default" else t for t in rope.ROPE_TYPES)

# Flag dest -> (rope_scaling key, the types it applies to). The one list of RoPE parameters a
# command line can set; `rope_scaling_from_args` turns them into an HF-style dict.
_ROPE_PARAMETER_FLAGS = {
    "rope_low_freq_factor": ("low_freq_factor", ("llama3",)),
    "rope_high_freq_factor": ("high_freq_factor", ("llama3",)),
    "rope_beta_fast": ("beta_fast", ("yarn", "yarn_pose")),
    "rope_beta_slow": ("beta_slow", ("yarn", "yarn_pose")),
    "rope_mscale": ("mscale", ("yarn",)),
    "rope_mscale_all_dim": ("mscale_all_dim", ("yarn",)),
    "rope_attention_factor": ("attention_factor", ("yarn", "yarn_pose", "longrope")),
    "rope_short_factor": ("short_factor", ("longrope",)),
    "rope_long_factor": ("long_factor", ("longrope",)),
}
ROPE_FLAG_DESTS = ("rope_scaling_type", "rope_scaling_factor", "rope_original_max_position",
                   *_ROPE_PARAMETER_FLAGS)
# The PoSE flags' dests: what PoseSettings.from_flags reads (with --seed).
POSE_FLAG_DESTS = ("pose_train_len", "pose_target_len", "pose_num_chunks", "pose_scheme",
                   "pose_content_offset", "pose_short_docs", "pose_max_doc_len")


def add_pose_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the PoSE and RoPE-scaling flags to ``parser``: the one definition of these flags.

    Used by ``python -m pose_megatron.train`` and, as Megatron-LM's ``extra_args_provider``, by
    ``pose_megatron.megatron_lm.add_pose_args``. Flags the parser already defines keep their
    definition (Megatron-LM has ``--rope-scaling-factor`` for its LLaMA-3.x scaling, default 8.0);
    such a flag's default is set to this function's, so an unset flag means the same in both
    entry points ("derive it from --pose-target-len").
    """
    from pose_megatron.positions import CONTENT_OFFSETS, SCHEMES, SHORT_DOCS

    existing = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public query
    g = parser.add_argument_group("PoSE", "Positional Skip-wise training (arXiv 2309.10400)")

    def add(flag, **kwargs):
        if flag in existing:
            dest = parser._option_string_actions[flag].dest  # noqa: SLF001
            parser.set_defaults(**{dest: kwargs.get("default")})
        else:
            g.add_argument(flag, **kwargs)

    add("--pose-train-len", type=int, default=None,
        help="tokens per training sample (the paper's L_c, e.g. 2048); default --seq-length")
    add("--pose-target-len", type=int, default=None,
        help="context length to extend to (L_t, e.g. 16384); position ids stay below it; "
             "default --pose-train-len (plain training)")
    add("--pose-num-chunks", type=int, default=2,
        help="chunks per sample (N; the paper and the reference scheme use 2)")
    add("--pose-scheme", choices=SCHEMES, default="reference",
        help="how positions are drawn: reference (the authors' code), uniform (the paper's "
             "N-chunk form), full (0..L-1), randpos (the RandPos baseline)")
    add("--pose-content-offset", choices=CONTENT_OFFSETS, default="random",
        help="where each chunk's tokens come from in the document: random (reference), zero "
             "(contiguous), equal_u (content skips like the positions)")
    add("--pose-short-docs", choices=SHORT_DOCS, default="skip",
        help="documents shorter than --pose-train-len: skip them (the paper's data has none), "
             "or pack consecutive ones into one sample")
    add("--pose-max-doc-len", type=int, default=None,
        help="cut each document to this many tokens before a sample is drawn from it (bounds "
             "where chunk content may come from; positions are unaffected); default 5 x "
             "--pose-train-len for --pose-scheme reference (the authors' code), "
             "--pose-target-len otherwise")
    g = parser.add_argument_group(
        "RoPE scaling", "the RoPE of the extended model; parameters use HF's rope_scaling names")
    add("--rope-scaling-type", choices=ROPE_SCALING_TYPES, default=None,
        help="linear (position interpolation), ntk (fixed NTK-aware base, the PoSE reference's), "
             "dynamic (dynamic NTK: for evaluation, inactive on short PoSE windows), yarn (HF's), "
             "yarn_pose (the PoSE reference's revised YaRN), llama3 (LLaMA 3.1 band scaling), "
             "longrope (per-frequency factors, needs --rope-short-factor/--rope-long-factor), "
             "none (plain RoPE); default: keep the checkpoint's own")
    add("--rope-scaling-factor", type=float, default=None,
        help="RoPE scaling factor s; default --pose-target-len / original window")
    add("--rope-original-max-position", type=int, default=None,
        help="the model's original window for RoPE scaling; default the checkpoint's "
             "(original_)max_position_embeddings")
    add("--rope-low-freq-factor", type=float, default=None,
        help="llama3: low_freq_factor (default 1.0, LLaMA 3.1's)")
    add("--rope-high-freq-factor", type=float, default=None,
        help="llama3: high_freq_factor (default 4.0, LLaMA 3.1's)")
    add("--rope-beta-fast", type=float, default=None,
        help="yarn, yarn_pose: beta_fast, rotations where the ramp starts (default 32)")
    add("--rope-beta-slow", type=float, default=None,
        help="yarn, yarn_pose: beta_slow, rotations where the ramp ends (default 1)")
    add("--rope-mscale", type=float, default=None,
        help="yarn: mscale of the attention factor (DeepSeek style, with --rope-mscale-all-dim)")
    add("--rope-mscale-all-dim", type=float, default=None,
        help="yarn: mscale_all_dim of the attention factor")
    add("--rope-attention-factor", type=float, default=None,
        help="yarn, yarn_pose, longrope: attention factor multiplying cos and sin (default "
             "0.1*ln(s)+1 for YaRN, sqrt(1+ln(s)/ln(original)) for longrope)")
    add("--rope-short-factor", nargs="+", default=None, metavar="F",
        help="longrope: rotary_dim/2 per-frequency divisors within the original window, as "
             "numbers or one JSON file holding a list")
    add("--rope-long-factor", nargs="+", default=None, metavar="F",
        help="longrope: rotary_dim/2 per-frequency divisors beyond the original window, as "
             "numbers or one JSON file holding a list")
    return parser


def _float_list(flag: str, values) -> list:
    """A --rope-*-factor list: numbers, or one JSON file holding a list of numbers."""
    import json

    if len(values) == 1 and not _looks_numeric(values[0]):
        try:
            with open(values[0]) as f:
                values = json.load(f)
        except OSError as err:
            raise ValueError(f"{flag} {values[0]}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag} {values[0]}: not JSON ({err.msg})") from None
        if not isinstance(values, list):
            raise ValueError(f"{flag}: the JSON file must hold a list of numbers")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: expected numbers, got {values!r}") from None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_rope_flags(args) -> None:
    """Refuse RoPE flags that do not fit --rope-scaling-type (ValueError naming the flag)."""
    rope_type = getattr(args, "rope_scaling_type", None)
    for dest, (_, types) in _ROPE_PARAMETER_FLAGS.items():
        if getattr(args, dest, None) is not None and rope_type not in types:
            raise ValueError(f"{_flag(dest)} applies to --rope-scaling-type {' or '.join(types)}, "
                             f"not {rope_type or 'the checkpoint default (unset)'}")
    if rope_type == "longrope":
        for dest in ("rope_short_factor", "rope_long_factor"):
            if getattr(args, dest, None) is None:
                raise ValueError(f"--rope-scaling-type longrope needs {_flag(dest)}")
    factor = getattr(args, "rope_scaling_factor", None)
    if factor is not None and not factor >= 1:
        raise ValueError(f"--rope-scaling-factor {factor} is below 1")


def rope_scaling_from_flags(args, *, original: int, target_len: int) -> dict | None:
    """The validated HF-style rope_scaling dict that the --rope-* flags of ``args`` ask for.

    ``args`` has the flags' names as attributes (an argparse Namespace) or keys (a dict, e.g.
    read out of Megatron-LM 0.19's config container: ``ROPE_FLAG_DESTS``); ``original``
    is the model's original window and ``target_len`` the PoSE target (the factor's default is
    target / original). ``--rope-scaling-type`` must be set (None means "keep the checkpoint's",
    which the caller decides).
    """
    from pose_megatron.rope import canonical_rope_scaling

    if isinstance(args, dict):
        args = argparse.Namespace(**{dest: args.get(dest) for dest in ROPE_FLAG_DESTS})
    check_rope_flags(args)
    rope_type = args.rope_scaling_type
    if rope_type == "none":
        return None
    factor = getattr(args, "rope_scaling_factor", None) or target_len / original
    scaling = {"rope_type": rope_type, "factor": float(factor)}
    if rope_type != "linear":  # HF's linear scaling has no such key
        scaling["original_max_position_embeddings"] = int(original)
    if rope_type == "llama3":
        scaling.update(rope.LLAMA31_BANDS)
    for dest, (key, types) in _ROPE_PARAMETER_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            scaling[key] = _float_list(_flag(dest), value) \
                if key in ("short_factor", "long_factor") else float(value)
    return canonical_rope_scaling(scaling, source="--rope-scaling-type " + rope_type)


def add_resume_arguments(g) -> None:
    """What a resumed run may change (Megatron-LM's names where it has them); without these a
    resume whose flags differ from the checkpoint's schedule, optimizer state or RoPE is refused."""
    g.add_argument("--override-opt-param-scheduler", action="store_true",
                   help="on resume, apply --lr, --min-lr, --lr-warmup-iters, --lr-decay-iters "
                        "(--train-iters) and --lr-decay-style instead of the checkpoint's LR "
                        "schedule (its step count is kept)")
    g.add_argument("--use-checkpoint-opt-param-scheduler", action="store_true",
                   help="on resume, continue the checkpoint's LR schedule even where those flags "
                        "differ")
    g.add_argument("--no-load-optim", action="store_true",
                   help="on resume, do not load the optimizer state (Adam moments start fresh); "
                        "needed to resume a --no-save-optim checkpoint")
    g.add_argument("--override-rope-scaling", action="store_true",
                   help="on resume, let --rope-scaling-* change the checkpoint's RoPE (earlier "
                        "iterations keep their own settings)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pose_megatron.train",
        description="PoSE context-window extension of a LLaMA-family model on Megatron-Core "
                    "(tensor, pipeline, context and data parallel). Launch with torchrun for "
                    "more than one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1,
                   help="ranks that split each layer's matrices (TP)")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="pipeline stages (PP); layers are split evenly")
    g.add_argument("--context-parallel-size", type=int, default=1,
                   help="ranks that split each sequence (CP; needs Transformer Engine and a GPU)")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="split activations outside attention over the TP ranks (GPU + TE only)")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="shard optimizer state over data-parallel ranks (GPU only)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to run; default cuda when available")
    g.add_argument("--transformer-impl", choices=("auto", "local", "transformer_engine"),
                   default="auto",
                   help="layer implementation: Transformer Engine when importable (auto), or the "
                        "Megatron-Core local spec")
    g.add_argument("--model-class", choices=("gpt", "hybrid"), default="gpt",
                   help="gpt: Megatron-Core's GPTModel (deprecated by megatron-core 0.19); hybrid: "
                        "the same model as a HybridModel, one attention and one MLP layer per "
                        "block (pattern '*-' per block; megatron-core >= 0.19). A hybrid run "
                        "--loads GPT-layout checkpoints (the converters', GPT runs') through "
                        "Megatron-Core's load-time translation; its own checkpoints convert "
                        "to HF like any other")

    g = p.add_argument_group("model (ignored when --load or --model-config gives pose_model.json)")
    g.add_argument("--model-config", default=None,
                   help="pose_model.json (or a directory holding one) describing the model")
    g.add_argument("--num-layers", type=int, default=2, help="transformer layers")
    g.add_argument("--hidden-size", type=int, default=64, help="hidden size")
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="MLP size; default 8/3*hidden"
                   " rounded up to 64")
    g.add_argument("--num-attention-heads", type=int, default=4, help="attention heads")
    g.add_argument("--num-query-groups", type=int, default=None,
                   help="key/value heads (GQA); default = --num-attention-heads")
    g.add_argument("--vocab-size", type=int, default=256, help="vocabulary size")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="the model's original window; default --seq-length")
    g.add_argument("--rotary-base", type=float, default=10000.0, help="RoPE theta")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", default=None,
                   help="Megatron blend: 'PREFIX' or 'W1 PREFIX1 W2 PREFIX2 ...' of indexed "
                        "datasets (.bin/.idx)")
    g.add_argument("--split", default="100,0,0", help="train,valid,test split of --data-path")
    g.add_argument("--mock-data", action="store_true",
                   help="random-token documents instead of --data-path (smoke tests, benchmarks)")
    g.add_argument("--seq-length", type=int, default=None,
                   help="sequence length of a sample; PoSE's --pose-train-len wins when set")
    g.add_argument("--tokenizer-model", default=None,
                   help="tokenizer of --data-path (sentencepiece .model or HF tokenizer dir); "
                        "checked against the vocabulary size")
    g.add_argument("--data-cache-path", default=None,
                   help="where the sample index of --data-path is cached; default beside the data")

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1, help="samples per micro-batch")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="samples per optimizer step over all data-parallel ranks; default "
                        "micro-batch-size * data-parallel size")
    g.add_argument("--train-iters", type=int, required=False, default=10,
                   help="optimizer steps to train for (in total, counting resumed ones)")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of decay")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up steps from 0")
    g.add_argument("--lr-decay-iters", type=int, default=None,
                   help="steps over which the lr decays; default --train-iters")
    g.add_argument("--lr-decay-style", choices=("constant", "linear", "cosine", "inverse-square-root",
                                                "WSD"), default="linear", help="lr decay shape")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--adam-beta2", type=float, default=0.95, help="Adam beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon")
    g.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    g.add_argument("--bf16", action="store_true", help="bf16 weights and compute (GPU)")
    g.add_argument("--seed", type=int, default=1234, help="seed of weights init and data order")
    g.add_argument("--recompute-activations", action="store_true",
                   help="recompute each layer's activations in backward (less memory)")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--load", default=None,
                   help="checkpoint directory to start from: a training checkpoint resumes "
                        "(model, optimizer, scheduler, RNG, data position); a converter release "
                        "checkpoint loads the model only and starts at iteration 0")
    g.add_argument("--finetune", action="store_true",
                   help="with --load: take only the model weights of a training checkpoint and "
                        "start a new run at iteration 0 (fresh optimizer, scheduler and data "
                        "order), as Megatron-LM's --finetune does")
    g.add_argument("--save", default=None, help="directory to write checkpoints into")
    g.add_argument("--save-interval", type=int, default=None,
                   help="save every N steps (and at the end); default only at the end")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="stop once this many minutes have passed since the job started (setup "
                        "included), as Megatron-LM's flag of that name does: the step in progress "
                        "finishes, a checkpoint is saved (with --save) and the job exits 0; rerun "
                        "with --load on that directory to continue")
    g.add_argument("--no-save-optim", action="store_true",
                   help="leave the optimizer state out of checkpoints (smaller, not resumable)")
    add_resume_arguments(g)
    g.add_argument("--log-interval", type=int, default=1, help="steps per log line")
    g.add_argument("--tensorboard-dir", default=None,
                   help="write TensorBoard scalars here (when tensorboard is installed)")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for the MFU estimate; default known GPUs' bf16 peak")
    g.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    g.add_argument("--log-json", default=None,
                   help="append every step's metrics (exact loss, lr, grad norm, ...) to this "
                        "JSON-lines file (rank 0)")
    add_pose_arguments(p)
    from pose_megatron import errors

    errors.add_debug_argument(p)
    return p


def _fail(parser, message):
    parser.error(message)


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "context_parallel_size", "micro_batch_size", "train_iters", "log_interval",
                 "pose_num_chunks"):
        if getattr(args, name) < 1:
            _fail(parser, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.pose_train_len = args.pose_train_len or args.seq_length
    if args.pose_train_len is None:
        _fail(parser, "give --pose-train-len (or --seq-length): the tokens per training sample")
    args.seq_length = args.pose_train_len
    args.pose_target_len = args.pose_target_len or args.pose_train_len
    if args.pose_target_len < args.pose_train_len:
        _fail(parser, f"--pose-target-len {args.pose_target_len} is below --pose-train-len "
                      f"{args.pose_train_len}")
    if args.data_path is None and not args.mock_data:
        _fail(parser, "give --data-path (a Megatron blend) or --mock-data")
    if args.data_path and args.mock_data:
        _fail(parser, "--data-path and --mock-data exclude each other")
    if args.save_interval is not None and args.save_interval < 1:
        _fail(parser, f"--save-interval must be >= 1, got {args.save_interval}")
    if args.exit_duration_in_mins is not None and not args.exit_duration_in_mins > 0:
        _fail(parser, f"--exit-duration-in-mins must be > 0, got {args.exit_duration_in_mins}")
    if args.save_interval and not args.save:
        _fail(parser, "--save-interval needs --save")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        _fail(parser, "--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler "
                      "exclude each other")
    if args.finetune and not args.load:
        _fail(parser, "--finetune needs --load (the checkpoint whose weights start the run)")
    if args.load and not os.path.isdir(args.load):
        _fail(parser, f"--load {args.load}: no such directory")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    try:
        if args.rope_scaling_factor is not None and args.rope_scaling_type in (None, "none"):
            raise ValueError(f"--rope-scaling-factor needs a --rope-scaling-type to scale "
                             f"(got {args.rope_scaling_type or 'none: keep the checkpoint RoPE'})")
        check_rope_flags(args)
        for dest in ("rope_short_factor", "rope_long_factor"):
            if getattr(args, dest) is not None:
                _float_list(_flag(dest), getattr(args, dest))
    except ValueError as err:
        _fail(parser, str(err))
    if args.lr_warmup_iters >= args.lr_decay_iters:
        _fail(parser, f"--lr-warmup-iters {args.lr_warmup_iters} must be below --lr-decay-iters "
                      f"(default --train-iters) {args.lr_decay_iters}")
    return args


def _default_ffn(hidden: int) -> int:
    return ((8 * hidden // 3 + 63) // 64) * 64


def rope_scaling_from_args(args, base: ModelArgs) -> dict | None:
    """The HF-style rope_scaling dict the flags ask for (None: plain RoPE; unset type: ``base``'s)."""
    if args.rope_scaling_type is None:
        return base.rope_scaling
    original = args.rope_original_max_position or rope.original_window(
        base.rope_scaling, base.max_position_embeddings)
    return rope_scaling_from_flags(args, original=int(original), target_len=args.pose_target_len)


def model_args_from(args, loaded: ModelArgs | None = None) -> ModelArgs:
    """The ModelArgs of this run: a checkpoint's or --model-config's, or the size flags'."""
    import dataclasses

    if loaded is None and args.model_config:
        path = args.model_config
        directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
        loaded = ModelArgs.load(directory)
    if loaded is None:
        loaded = ModelArgs(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size,
            intermediate_size=args.ffn_hidden_size or _default_ffn(args.hidden_size),
            num_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
            num_query_groups=args.num_query_groups,
            max_position_embeddings=args.max_position_embeddings or args.pose_train_len,
            rope_theta=args.rotary_base,
        )
    return dataclasses.replace(loaded, rope_scaling=rope_scaling_from_args(args, loaded))

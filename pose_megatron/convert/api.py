"""The two conversions end to end: HF directory -> Megatron checkpoint -> HF directory."""

from __future__ import annotations

import json
import math
import os
from typing import Optional


from pose_megatron import dtypes, families, publish
from pose_megatron.config import ModelArgs
from pose_megatron.checkpoint import store
from pose_megatron.convert import bridge, hf_config, hf_io, weights

LAYOUTS = ("megatron", "bridge")


def _progress_bar(total_bytes: int, desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not enabled,
               dynamic_ncols=True)

    def step(_name, tensor):
        bar.update(tensor.numel() * tensor.element_size())

    return bar, step


def _check_hf_shapes(hf: hf_io.HFCheckpoint, args: ModelArgs) -> None:
    expected = weights.hf_shapes(args)
    absent = [n for n in expected if n not in hf]
    if absent:
        raise KeyError(
            f"{hf.directory}: {len(absent)} tensor(s) required by config.json are missing, e.g. "
            f"{absent[:3]}")
    for name, shape in expected.items():
        found = hf.shape(name)
        if found != shape:
            raise ValueError(
                f"{hf.directory}: shape mismatch for {name}: the checkpoint has {found}, "
                f"config.json implies {shape}")
    known = set(expected) | set(weights.hf_sources(families.OUTPUT_LAYER[0], args))  # tied too
    extra = [n for n in hf.names() if n not in known and "rotary_emb.inv_freq" not in n]
    if extra:
        raise ValueError(f"{hf.directory}: tensors the converter does not know: {extra[:5]}")


def check_tokenizer_source(tokenizer: Optional[str]) -> None:
    """Refuse a ``--tokenizer`` that names nothing to copy, before any weights are written."""
    if tokenizer is None:
        return
    if os.path.isfile(tokenizer) and tokenizer.endswith(".model"):
        return
    if not os.path.isdir(tokenizer):
        raise FileNotFoundError(
            f"--tokenizer {tokenizer}: neither a tokenizer directory nor a sentencepiece .model "
            "file")
    if not any(os.path.isfile(os.path.join(tokenizer, n)) for n in hf_io.TOKENIZER_FILES):
        raise FileNotFoundError(
            f"--tokenizer {tokenizer}: the directory holds none of {', '.join(hf_io.TOKENIZER_FILES[:3])}, ...")


def hf_to_megatron(
    hf_dir: str, out: str, *, tp: int = 1, pp: int = 1, dtype: Optional[str] = None,
    fmt: str = "torch_dist", spec: str = "local", force: bool = False,
    tokenizer: Optional[str] = None, progress: bool = True, layout: str = "megatron",
    add_position_embedding: bool = True,
) -> ModelArgs:
    """HF directory -> Megatron checkpoint. ``layout="bridge"`` writes the weights under
    ``iter_0000000/`` with the files Megatron-Bridge's loader reads (``convert.bridge``).
    ``add_position_embedding``: the value recorded in the Megatron-LM args (False for jobs run
    with ``--no-position-embedding``; see ``megatron_lm_args``)."""
    if fmt not in store.FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {store.FORMATS}")
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {LAYOUTS}")
    if layout == "bridge" and fmt != "torch_dist":
        raise ValueError("--layout bridge: Megatron-Bridge loads torch_dist checkpoints only "
                         "(drop --format legacy)")
    if spec not in weights.SPECS:
        raise ValueError(f"--spec {spec!r}: expected one of {weights.SPECS}")
    check_tokenizer_source(tokenizer)
    publish.check_output_apart(out, {"--hf-dir": hf_dir, "--tokenizer": tokenizer})
    publish.check_replaceable(out, force)
    hf = hf_io.HFCheckpoint(hf_dir, mmap=fmt == "torch_dist")  # torch_dist holds all tensors
    config_path = os.path.join(hf_dir, "config.json")
    try:
        args = hf_config.args_from_hf_config(hf.config, config_path)
    except KeyError as err:
        raise ValueError(f"{config_path}: required key {err.args[0]!r} is missing") from None
    except (TypeError, ValueError) as err:
        if config_path in str(err):
            raise
        raise ValueError(f"{config_path}: {err}") from None
    weights.check_parallel(args, tp, pp)
    _check_hf_shapes(hf, args)
    if layout == "bridge":
        bridge.provider_fields(args)  # refuses a RoPE Bridge cannot compute, before writing
    stored = hf.dtype(weights.hf_sources(families.EMBEDDING[0], args)[0])
    target = dtypes.to_torch(dtype) if dtype is not None else stored
    args.torch_dtype = dtypes.name_of(target)

    def get_global(name):
        tensors = [hf.get(n) for n in weights.hf_sources(name, args)]
        return weights.hf_to_global(name, tensors, args).to(target)

    def get_pieces(name):
        tensors = [hf.get(n) for n in weights.hf_sources(name, args)]
        return [t.to(target) for t in weights.hf_to_global_pieces(name, tensors, args)]

    bar, step = _progress_bar(hf.nbytes(), "HF -> Megatron", progress)
    with publish.publish_dir(out, force=force,
                             inputs={"--hf-dir": hf_dir, "--tokenizer": tokenizer}) as tmp:
        args.save(tmp)
        # Megatron-LM's converters label converted weights "release"; Bridge's loader only
        # looks for iter_* directories, and its import saves step 0
        iteration = 0 if layout == "bridge" else None
        path = os.path.join(tmp, store.iteration_dir(iteration))
        if fmt == "legacy":
            store.write_legacy(path, args, get_global, tp, pp, spec=spec, progress=step,
                                     add_position_embedding=add_position_embedding)
        else:
            store.write_dist(path, args, get_pieces, target, progress=step,
                                   add_position_embedding=add_position_embedding)
        args.save(path)  # the settings of these weights, beside them (see checkpoint.resumable)
        store.write_tracker(tmp, iteration)
        tok_dir = os.path.join(tmp, store.TOKENIZER_SUBDIR)
        os.makedirs(tok_dir)
        # the HF dir's own tokenizer travels with the checkpoint unless another is named
        copied = hf_io.copy_tokenizer(tokenizer or hf_dir, tok_dir)
        if not copied:
            os.rmdir(tok_dir)
        if layout == "bridge":  # Bridge records its tokenizer by absolute path, as here
            bridge.write_metadata(tmp, path, args, 0, tokenizer_dir=os.path.join(
                os.path.abspath(out), store.TOKENIZER_SUBDIR) if copied else None)
        with open(os.path.join(tmp, "conversion.json"), "w") as f:
            json.dump({"source": os.path.abspath(hf_dir), "format": fmt, "tp": tp, "pp": pp,
                       "spec": spec, "dtype": args.torch_dtype, "layout": layout}, f, indent=2)
    bar.close()
    hf.close()
    return args


def megatron_to_hf(
    megatron_dir: str, out: str, *, dtype: Optional[str] = None, force: bool = False,
    tokenizer: Optional[str] = None, max_shard_bytes: int = 5 * 1024**3,
    iteration: Optional[int] = None, progress: bool = True,
) -> ModelArgs:
    check_tokenizer_source(tokenizer)
    inputs = {"--megatron-dir": megatron_dir, "--tokenizer": tokenizer}
    publish.check_output_apart(out, inputs)
    publish.check_replaceable(out, force)
    args, reader, _fmt = store.open_checkpoint(megatron_dir, iteration)
    target = dtypes.to_torch(dtype) if dtype is not None else None
    config = hf_config.hf_config_from_args(
        args, dtypes.name_of(target) if target else None)  # refuses unknown RoPE first
    names = weights.megatron_names(args)
    # from the shapes, not the tensors: a legacy reader would merge TP shards twice
    itemsize = reader.get(names[0]).element_size()
    total = itemsize * sum(math.prod(shape) for shape in weights.hf_shapes(args).values())
    bar, step = _progress_bar(total, "Megatron -> HF", progress)
    with publish.publish_dir(out, force=force, inputs=inputs) as tmp:
        writer = hf_io.HFWriter(tmp, max_shard_bytes)
        try:
            for name in names:
                tensor = reader.get(name)
                step(name, tensor)
                for hf_name, t in zip(weights.hf_sources(name, args),
                                      weights.global_to_hf(name, tensor, args)):
                    writer.add(hf_name, t.to(target) if target is not None else t)
            writer.finish()
        finally:
            writer.close()
            reader.close()
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        # ours keep it at the top, Megatron-Bridge's in the iteration directory
        tok_src = tokenizer or next(
            (d for d in (os.path.join(megatron_dir, store.TOKENIZER_SUBDIR),
                         os.path.join(reader.path, store.TOKENIZER_SUBDIR)) if os.path.isdir(d)), None)
        if tok_src is not None:
            hf_io.copy_tokenizer(tok_src, tmp)
    bar.close()
    return args

"""`lepjax convert SRC DST`: a model between Hugging Face and lepjax formats, or a training run
directory (its latest checkpoint) to either."""

from __future__ import annotations

import os

from lepjax.cli.common import add_config_flag

HELP = "convert a model (or a training run directory) to Hugging Face or lepjax format"


def add_args(p):
    p.add_argument("src", help="a Hugging Face (config.json + safetensors) or lepjax model "
                               "directory, or a `lepjax train` run directory")
    p.add_argument("dst", help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--to", choices=["hf", "lepjax"], default=None,
                   help="output format (default: the other one; hf for a run directory)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="HF export dtype (default: the dtype the weights were imported in)")
    p.add_argument("--step", type=int, default=None,
                   help="run directory only: the checkpoint step (default: the latest)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory to copy beside the weights (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    add_config_flag(p, "optional: its mesh section places the weights")


def default_config():
    from ml_collections import ConfigDict

    from lepjax.parallel import mesh_section

    return ConfigDict(dict(mesh=mesh_section()))


def validate(args, cfg):
    if not os.path.isdir(args.src):
        raise FileNotFoundError(f"source {args.src!r} is not a directory")
    if os.path.realpath(args.src) == os.path.realpath(args.dst):
        raise ValueError(f"the output {args.dst!r} is the source; choose another directory")


def run(args, cfg):
    from lepjax import models, parallel
    from lepjax.train import run as train_run

    mesh, rules = parallel.mesh_from_config(cfg.mesh)
    if train_run.is_run_dir(args.src):
        to = args.to or "hf"
        out = train_run.export_run(args.src, args.dst, fmt=to, step=args.step,
                                   tokenizer_from=args.tokenizer, dtype=args.dtype,
                                   overwrite=args.overwrite, mesh=mesh, rules=rules)
        return {"converted": out, "from": "run", "to": to}, out
    src_format = models.detect_format(args.src)
    to = args.to or ("lepjax" if src_format == "hf" else "hf")
    # Keep weights in the precision they were stored in: float32 holds bf16/fp16 exactly.
    model, mc = models.load(args.src, mesh=mesh, rules=rules, param_dtype="float32")
    tokenizer_from = args.tokenizer or args.src
    if to == "hf":
        out = models.save_hf(model, args.dst, dtype=args.dtype, tokenizer_from=tokenizer_from,
                             overwrite=args.overwrite)
    else:
        out = models.save(model, args.dst, tokenizer_from=tokenizer_from, overwrite=args.overwrite)
    return {"converted": out, "from": src_format, "to": to, "num_params": mc.num_params}, out

"""`lepjax init DST`: a randomly initialised model of a preset architecture."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "write a randomly initialised model of a preset architecture"


def add_args(p):
    p.add_argument("dst", help="output directory")
    p.add_argument("--preset", default="tiny_llama3",
                   help="architecture preset (default: tiny_llama3; see lepjax.models.PRESETS)")
    p.add_argument("--format", choices=["hf", "lepjax"], default="lepjax", help="output format")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    add_config_flag(p, "optional: its mesh section places the weights")


def default_config():
    from ml_collections import ConfigDict

    from lepjax.parallel import mesh_section

    return ConfigDict(dict(mesh=mesh_section()))


def validate(args, cfg):
    from lepjax import config as config_lib
    from lepjax.models.config import PRESETS

    config_lib.check_choice("--preset", args.preset, sorted(PRESETS))


def run(args, cfg):
    from lepjax import models, parallel

    mesh, rules = parallel.mesh_from_config(cfg.mesh)
    mc = models.get_preset(args.preset)
    model = models.create_model(mc, mesh=mesh, rules=rules, seed=args.seed, param_dtype="float32")
    save = models.save_hf if args.format == "hf" else models.save
    out = save(model, args.dst, overwrite=args.overwrite)
    return {"written": out, "preset": args.preset, "format": args.format,
            "num_params": mc.num_params}, out

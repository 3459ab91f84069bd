"""`lepjax <verb>`: the command-line entry point.

Verbs that take a config accept `--config=path.py` and any number of `--config.key=value`
overrides; see `lepjax.config`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from lepjax import config as config_lib

log = logging.getLogger("lepjax")

VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}
DEFAULT_CONFIGS: dict[str, Callable] = {}

# Modules that register further verbs with `@verb(...)` when imported.
VERB_MODULES: list[str] = ["lepjax.data.cli", "lepjax.train.cli", "lepjax.generate_cli",
                           "lepjax.vocab.cli", "lepjax.lep.cli", "lepjax.adapt_cli",
                           "lepjax.eval.cli", "lepjax.augment.cli", "lepjax.serve"]


def verb(name: str, help: str, default_config: Callable | None = None):
    """Register `run(args, cfg)` as `lepjax <name>`; `add_args(parser)` defines its flags.

    Use as `@verb("name", "help")(add_args)` on `run`. `cfg` is the loaded config (`--config` file
    plus overrides), or `default_config()` (default: model + mesh sections) without `--config`.
    """

    def deco(add_args):
        def register(run):
            VERBS[name] = (help, add_args, run)
            if default_config is not None:
                DEFAULT_CONFIGS[name] = default_config
            return run

        return register

    return deco


def add_config_flag(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--config", default=None, metavar="FILE.py",
                   help=f"ml-collections config file with get_config() ({default_help}); any key "
                        "can then be overridden with --config.section.key=value")


def _default_config():
    from ml_collections import ConfigDict

    return ConfigDict(dict(model=config_lib.model_section(), mesh=config_lib.mesh_section()))


# ---- convert ---------------------------------------------------------------------------------


def _convert_args(p):
    p.add_argument("src", help="a Hugging Face (config.json + safetensors) or lepjax model directory")
    p.add_argument("dst", help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--to", choices=["hf", "lepjax"], default=None,
                   help="output format (default: the other one)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="HF export dtype (default: the dtype the weights were imported in)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    add_config_flag(p, "optional: its mesh section places the weights")


@verb("convert", "convert a model between Hugging Face and lepjax formats")(_convert_args)
def run_convert(args, cfg):
    from lepjax import models

    src_format = models.detect_format(args.src)
    to = args.to or ("lepjax" if src_format == "hf" else "hf")
    mesh, rules = models.mesh_from_config(cfg.mesh)
    # Keep weights in the precision they were stored in: float32 holds bf16/fp16 exactly.
    model, mc = models.load(args.src, mesh=mesh, rules=rules, param_dtype="float32")
    if to == "hf":
        out = models.save_hf(model, args.dst, dtype=args.dtype, tokenizer_from=args.src,
                             overwrite=args.overwrite)
    else:
        out = models.save(model, args.dst, tokenizer_from=args.src, overwrite=args.overwrite)
    resolved = {"verb": "convert", "src": os.path.abspath(args.src), "src_format": src_format,
                "to": to, "dtype": args.dtype, **config_lib.to_dict(cfg)}
    config_lib.write_resolved(resolved, out)
    print(json.dumps({"converted": out, "from": src_format, "to": to,
                      "num_params": mc.num_params}))


# ---- init ------------------------------------------------------------------------------------


def _init_args(p):
    from lepjax.models.config import PRESETS

    p.add_argument("dst", help="output directory")
    p.add_argument("--preset", default="tiny_llama3", choices=sorted(PRESETS),
                   help="architecture preset (default: tiny_llama3)")
    p.add_argument("--format", choices=["hf", "lepjax"], default="lepjax", help="output format")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    add_config_flag(p, "optional: its mesh section places the weights")


@verb("init", "write a randomly initialised model of a preset architecture")(_init_args)
def run_init(args, cfg):
    from lepjax import models

    mesh, rules = models.mesh_from_config(cfg.mesh)
    mc = models.get_preset(args.preset, param_dtype="float32")
    model = models.create_model(mc, mesh=mesh, rules=rules, seed=args.seed)
    save = models.save_hf if args.format == "hf" else models.save
    out = save(model, args.dst, overwrite=args.overwrite)
    config_lib.write_resolved({"verb": "init", "preset": args.preset, "seed": args.seed,
                               "format": args.format, **config_lib.to_dict(cfg)}, out)
    print(json.dumps({"written": out, "preset": args.preset, "format": args.format,
                      "num_params": mc.num_params}))


# ---- forward ---------------------------------------------------------------------------------


def _forward_args(p):
    add_config_flag(p, "e.g. configs/forward.py")


@verb("forward", "run a model on token ids and print a checksum of its logits")(_forward_args)
def run_forward(args, cfg):
    from lepjax.forward import run

    print(json.dumps(run(cfg)))


# ---- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in VERB_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="lepjax", description="Adapt open LLMs (Llama 2/3, Mistral) to a new language in JAX.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (help_text, add_args, _) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        overrides, rest = config_lib.split_overrides(argv)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    if not args.verb:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(args.log_level.upper())
    _, _, run = VERBS[args.verb]
    try:
        default = DEFAULT_CONFIGS.get(args.verb, _default_config)()
        cfg = config_lib.load(getattr(args, "config", None), overrides, default=default)
        if "mesh" in cfg:
            from lepjax import parallel

            parallel.initialize(cfg.mesh.coordinator_address, cfg.mesh.num_processes,
                                cfg.mesh.process_id)
        run(args, cfg)
    except (config_lib.ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        if log.isEnabledFor(logging.DEBUG):
            raise
        print(f"lepjax {args.verb}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # run through the canonical module, where verb modules register
    from lepjax.cli import main as _main

    sys.exit(_main())

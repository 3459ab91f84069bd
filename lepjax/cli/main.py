"""`lepjax <verb>`: the entry point and its explicit verb table.

Every verb runs the same way: parse its flags, load its config (`--config=FILE.py` or the verb's
own `default_config()`, then `--config.key=value` overrides), validate the config before anything
is read (enumerated keys, required keys), start multi-process JAX when the config has a `mesh`
section, call the verb's library function, write the resolved config next to the output (process
0 only) and print the summary as one JSON line. `--dry_run` stops after validation and prints the
plan instead.

A verb module (`lepjax/cli/<verb>.py`) defines `HELP`, `add_args(parser)`, `default_config()`,
optionally `validate(cfg)` and `plan(args, cfg)`, and `run(args, cfg) -> (summary, output_dir)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lepjax import config as config_lib
from lepjax.cli import (adapt, augment, convert, forward, generate, init, prepare, propagate,
                        serve, train, vocab)
from lepjax.cli import compile as compile_verb
from lepjax.cli import eval as eval_verb

log = logging.getLogger("lepjax")

VERBS: dict[str, ModuleType] = {
    "init": init,
    "convert": convert,
    "forward": forward,
    "prepare": prepare,
    "vocab": vocab,
    "train": train,
    "propagate": propagate,
    "generate": generate,
    "serve": serve,
    "eval": eval_verb,
    "augment": augment,
    "adapt": adapt,
    "compile": compile_verb,
}

# Errors a user can cause: one line on stderr, exit 1 (the traceback with --log-level=DEBUG).
USER_ERRORS: tuple[type[BaseException], ...] = (
    config_lib.ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError,
    IsADirectoryError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every verb (`lepjax VERB --help`)."""
    parser = argparse.ArgumentParser(
        prog="lepjax", description="Adapt open LLMs (Llama 2/3, Mistral) to a new language in JAX.")
    parser.add_argument("--log-level", "--log_level", dest="log_level", default="INFO",
                        help="logging level (default INFO; DEBUG also shows tracebacks)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module in VERBS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_args(p)
        p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                       help="load and validate the config, print the plan, exit without "
                            "reading any weights or data")
    return parser


def _command(args: argparse.Namespace) -> dict[str, Any]:
    """The verb and its positional / flag arguments, as recorded in the resolved config."""
    skip = {"verb", "config", "log_level", "dry_run"}
    return {"verb": args.verb,
            **{k: v for k, v in vars(args).items() if k not in skip and v is not None}}


def _plan(module: ModuleType, args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    plan = module.plan(args, cfg) if hasattr(module, "plan") else {}
    return {"dry_run": True, "command": _command(args), **plan,
            "config": config_lib.to_dict(cfg)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lepjax ARGV`; returns the exit code (0 ok, 1 a user error, 2 a usage error)."""
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
    module = VERBS[args.verb]
    try:
        cfg = config_lib.load(getattr(args, "config", None), overrides,
                              default=module.default_config())
        if "model" in cfg:  # compute settings (dtype, attention, remat) of every verb's model
            from lepjax.models import validate_compute

            validate_compute(cfg.model)
        if hasattr(module, "validate"):
            module.validate(args, cfg)
        if args.dry_run:
            print(json.dumps(_plan(module, args, cfg), indent=2, ensure_ascii=False))
            return 0
        if "mesh" in cfg:
            from lepjax import parallel

            parallel.initialize(cfg.mesh.coordinator_address, cfg.mesh.num_processes,
                                cfg.mesh.process_id)
        summary, output_dir = module.run(args, cfg)
        if output_dir:
            config_lib.write_resolved({"command": _command(args), **config_lib.to_dict(cfg)},
                                      output_dir)
        if summary is not None:
            print(json.dumps(summary, ensure_ascii=False))
    except USER_ERRORS as e:
        if log.isEnabledFor(logging.DEBUG):
            raise
        print(f"lepjax {args.verb}: error: {e}", file=sys.stderr)
        return 1
    return 0

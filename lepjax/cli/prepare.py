"""`lepjax prepare`: tokenise text into ArrayRecord shards."""

from __future__ import annotations

import argparse

from lepjax.cli.common import add_config_flag
from lepjax.config import ConfigError

HELP = ("tokenise text into ArrayRecord shards (resumable; on a Dask engine: this machine's "
        "cores or a cluster)")


def add_args(p):
    add_config_flag(p, "default: configs/prepare.py's keys")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Removed flags, kept only to say what replaced them.
    p.add_argument("--num_workers", "--worker_index", dest="removed_split", default=None,
                   help=argparse.SUPPRESS)


def default_config():
    from lepjax.data.prepare import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.data.prepare import validate_config

    if args.removed_split is not None:
        raise ConfigError("--num_workers/--worker_index were removed: `lepjax prepare` runs on "
                          "the engine; use --config.engine.num_workers=N on one machine, or "
                          "--config.engine.kind=dask --config.engine.scheduler_file=F across "
                          "hosts (README: 'Preprocessing a large corpus')")
    validate_config(cfg)


def run(args, cfg):
    from lepjax.data.prepare import prepare

    summary = prepare(cfg, progress=not args.no_progress)
    return summary, summary["output_dir"]

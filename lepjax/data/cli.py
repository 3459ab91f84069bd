"""`lepjax prepare`: command-line entry of the data preparation."""

from __future__ import annotations

import json

from lepjax.cli import add_config_flag, verb


def _default():
    from lepjax.data.prepare import default_config

    return default_config()


def _args(p):
    add_config_flag(p, "default: configs/prepare.py's keys")
    p.add_argument("--num_workers", type=int, default=None,
                   help="hosts sharing this preparation (overrides config num_workers)")
    p.add_argument("--worker_index", type=int, default=None,
                   help="this host's index in [0, num_workers) (overrides config worker_index)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@verb("prepare", "tokenise text into ArrayRecord shards (resumable, multi-process, multi-host)",
      default_config=_default)(_args)
def run_prepare(args, cfg):
    from lepjax import config as config_lib
    from lepjax.data.prepare import prepare

    with cfg.unlocked():
        if args.num_workers is not None:
            cfg.num_workers = args.num_workers
        if args.worker_index is not None:
            cfg.worker_index = args.worker_index
    summary = prepare(cfg, progress=not args.no_progress)
    config_lib.write_resolved(cfg, summary["output_dir"],
                              name=f"resolved_config.worker{cfg.worker_index}.json"
                              if cfg.num_workers > 1 else config_lib.RESOLVED_CONFIG)
    print(json.dumps(summary))

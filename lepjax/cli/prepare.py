"""`lepjax prepare`: tokenise text into ArrayRecord shards."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "tokenise text into ArrayRecord shards (resumable, multi-process, multi-host)"


def add_args(p):
    add_config_flag(p, "default: configs/prepare.py's keys")
    p.add_argument("--num_workers", type=int, default=None,
                   help="hosts sharing this preparation (overrides config num_workers)")
    p.add_argument("--worker_index", type=int, default=None,
                   help="this host's index in [0, num_workers) (overrides config worker_index)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_config():
    from lepjax.data.prepare import default_config

    return default_config()


def run(args, cfg):
    from lepjax.data.prepare import prepare

    with cfg.unlocked():
        if args.num_workers is not None:
            cfg.num_workers = args.num_workers
        if args.worker_index is not None:
            cfg.worker_index = args.worker_index
    summary = prepare(cfg, progress=not args.no_progress)
    return summary, summary["output_dir"]

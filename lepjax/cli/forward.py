"""`lepjax forward`: one sharded forward pass, printed as a checksum of its logits."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "run a model on token ids and print a checksum of its logits"


def add_args(p):
    add_config_flag(p, "e.g. configs/forward.py")


def default_config():
    from lepjax.models.checksum import default_config

    return default_config()


def run(args, cfg):
    from lepjax.models.checksum import forward_checksum

    return forward_checksum(cfg), cfg.output_dir or None

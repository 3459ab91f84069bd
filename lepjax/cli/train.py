"""`lepjax train`: train (or resume) a model on prepared shards."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "train (or resume) a model on prepared shards"


def add_args(p):
    add_config_flag(p, "e.g. configs/train/tiny_ru.py")


def default_config():
    from lepjax.train.loop import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.train import validate_config

    validate_config(cfg)


def plan(args, cfg):
    from lepjax.cli.common import device_plan

    return {"output_dir": cfg.train.run_dir, "steps": cfg.train.steps,
            "seq_len": cfg.data.seq_len, **device_plan(cfg)}


def run(args, cfg):
    from lepjax.train.loop import train

    return train(cfg), cfg.train.run_dir

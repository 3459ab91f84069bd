"""`lepjax adapt`: the whole adaptation in one run directory."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "the whole adaptation: vocab, prepare, train, propagate, export, evaluate"


def add_args(p):
    add_config_flag(p, "e.g. configs/demo.py or configs/lep/llama3_8b_ru.py")


def default_config():
    from lepjax.adapt import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.adapt import validate_config

    validate_config(cfg)


def plan(args, cfg):
    from lepjax.adapt import plan as stage_plan
    from lepjax.cli.common import device_plan

    return {"output_dir": cfg.run_dir, **stage_plan(cfg), **device_plan(cfg)}


def run(args, cfg):
    from lepjax.adapt import adapt

    return adapt(cfg), cfg.run_dir

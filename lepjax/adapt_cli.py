"""`lepjax adapt`: command-line entry of the whole adaptation pipeline."""

from __future__ import annotations

import json

from lepjax.cli import add_config_flag, verb


def _default():
    from lepjax.adapt import default_config

    return default_config()


def _args(p):
    add_config_flag(p, "e.g. configs/demo.py or configs/lep/llama3_8b_ru.py")


@verb("adapt", "the whole adaptation: vocab, prepare, train, propagate, export, evaluate",
      default_config=_default)(_args)
def run_adapt(args, cfg):
    from lepjax import config as config_lib
    from lepjax.adapt import adapt

    config_lib.write_resolved(cfg, cfg.run_dir or ".")
    summary = adapt(cfg)
    print(json.dumps(summary, indent=2))

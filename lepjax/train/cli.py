"""`lepjax train`: command-line entry of the training loop."""

from __future__ import annotations

import json

from lepjax.cli import add_config_flag, verb


def _default():
    from lepjax.train.loop import default_config

    return default_config()


def _args(p):
    add_config_flag(p, "e.g. configs/train/tiny_ru.py")


@verb("train", "train (or resume) a model on prepared shards", default_config=_default)(_args)
def run_train(args, cfg):
    from lepjax.train.loop import train

    print(json.dumps(train(cfg)))

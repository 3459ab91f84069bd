"""`lepjax generate`: decode prompts from a file with a lepjax or Hugging Face checkpoint."""

from __future__ import annotations

import os

from lepjax.cli.common import add_config_flag, required

HELP = "decode prompts with a checkpoint (batched, KV cache)"


def add_args(p):
    add_config_flag(p, "keys: lepjax.generate.files.default_config")


def default_config():
    from lepjax.generate.files import default_config

    return default_config()


def validate(args, cfg):
    required(cfg, "prompts", "output")


def run(args, cfg):
    from lepjax.generate.files import generate_file

    return generate_file(cfg), os.path.dirname(os.path.abspath(cfg.output))

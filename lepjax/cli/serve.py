"""`lepjax serve`: a checkpoint on an OpenAI-compatible endpoint, until SIGTERM / Ctrl-C."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag

HELP = "serve a checkpoint: OpenAI-compatible completions and chat"


def add_args(p):
    add_config_flag(p, "keys: lepjax.generate.server.default_config; e.g. --config.model.path=DIR "
                       "--config.port=0")


def default_config():
    from lepjax.generate.server import default_config

    return default_config()


def run(args, cfg):
    from lepjax.generate.server import serve

    return serve(cfg), None

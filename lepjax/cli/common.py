"""What the verb modules share: the `--config` flag and a required-key check."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_flag(p: argparse.ArgumentParser, default_help: str) -> None:
    """`--config=FILE.py`; any key can then be overridden with `--config.section.key=value`."""
    p.add_argument("--config", default=None, metavar="FILE.py",
                   help=f"ml-collections config file with get_config() ({default_help}); any key "
                        "can then be overridden with --config.section.key=value")


def required(cfg: Any, *keys: str) -> None:
    """Refuse a config in which any of the dotted `keys` is empty, naming all of them."""
    missing = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if not node:
            missing.append(key)
    if missing:
        raise ValueError("set " + ", ".join(f"--config.{k}" for k in missing))

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


def device_plan(cfg: Any, batch_key: str = "data.batch_size") -> dict[str, Any]:
    """The mesh this host would build from `cfg.mesh` and how `batch_key` splits over it.

    On a login node the host's devices are not the job's: a mesh that cannot be built here is
    reported, not an error (the job checks it again on its own devices).
    """
    import jax

    from lepjax import parallel

    node = cfg
    for part in batch_key.split("."):
        node = node[part]
    batch = int(node)
    plan: dict[str, Any] = {"global_batch": batch, "devices_here": jax.device_count()}
    try:
        mesh, rules = parallel.mesh_from_config(cfg.mesh)
    except ValueError as e:
        plan["mesh"] = f"not buildable on this host's {jax.device_count()} devices ({e})"
        return plan
    axes = dict(rules).get("batch", ())
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = 1
    for a in axes:
        ways *= mesh.shape.get(a, 1)
    plan.update(mesh=dict(mesh.shape), batch_axes=list(axes),
                per_device_batch=batch / ways if ways else batch)
    return plan

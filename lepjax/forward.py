"""`lepjax forward`: one sharded forward pass, reported as a logits checksum.

A smoke test of a model directory or preset on the current devices: it loads (or initialises) the
model on the mesh, runs the jitted forward on fixed token ids and prints a checksum that must be
the same wherever the same weights run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np


def run(cfg: Any) -> dict[str, Any]:
    """Run the forward pass described by `cfg` (see `configs/forward.py`); returns the report."""
    import jax

    from lepjax import config as config_lib
    from lepjax import models

    mesh, rules = models.mesh_from_config(cfg.mesh)
    model = models.from_config(cfg.model, mesh=mesh, rules=rules)
    mc = model.config
    if cfg.tokens:
        tokens = np.asarray([list(cfg.tokens)] * cfg.batch_size, np.int32)
    else:
        tokens = np.random.default_rng(cfg.seed).integers(
            0, mc.vocab_size, (cfg.batch_size, cfg.seq_len), dtype=np.int32)
    if tokens.max() >= mc.vocab_size or tokens.min() < 0:
        raise ValueError(f"token ids must lie in [0, {mc.vocab_size}) for this model")
    forward, state = models.make_forward(model, mesh, rules)
    start = time.perf_counter()
    logits = np.asarray(jax.device_get(forward(state, tokens)), np.float64)
    seconds = time.perf_counter() - start
    report = {
        "model": cfg.model.path or f"preset:{cfg.model.preset}",
        "shape": list(logits.shape),
        "logits_sum": float(logits.sum()),
        "logits_abs_mean": float(np.abs(logits).mean()),
        "argmax_last": logits[:, -1].argmax(-1).tolist(),
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "seconds_incl_compile": round(seconds, 3),
    }
    if cfg.output_dir:
        config_lib.write_resolved(cfg, cfg.output_dir)
        if jax.process_index() == 0:
            with open(os.path.join(cfg.output_dir, "forward.json"), "w") as f:
                json.dump(report, f, indent=2)
    return report

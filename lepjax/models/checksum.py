"""One sharded forward pass, reported as a logits checksum (`lepjax forward`).

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


def default_config():
    """The `lepjax forward` config.

    Keys:
      model.*: which weights and how to compute (see lepjax.models.model_section). With an empty
        model.path, a randomly initialised model.preset is used.
      mesh.*: device mesh and sharding rules (see lepjax.parallel.mesh_section).
      tokens: explicit token ids (one row, repeated batch_size times); empty = random ids.
      batch_size, seq_len: shape of the random token ids.
      seed: seed of the random token ids.
      output_dir: where to write forward.json and resolved_config.json (empty: print only).
      overwrite: replace a forward.json already in output_dir.
    """
    from ml_collections import ConfigDict

    from lepjax.models import model_section
    from lepjax.parallel import mesh_section

    model = model_section()
    model.dtype = "float32"
    return ConfigDict(dict(model=model, mesh=mesh_section(), tokens=(), batch_size=2, seq_len=16,
                           seed=0, output_dir="", overwrite=False))


def forward_checksum(cfg: Any) -> dict[str, Any]:
    """Run the forward pass described by `cfg` (see `default_config`); returns the report."""
    import jax

    from lepjax import models, parallel

    out = os.path.join(cfg.output_dir, "forward.json") if cfg.output_dir else ""
    if out and os.path.exists(out) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; choose another output_dir or set "
                              "--config.overwrite=True to replace it")
    mesh, rules = parallel.mesh_from_config(cfg.mesh)
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
    if out and jax.process_index() == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return report

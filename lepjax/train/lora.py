"""LoRA: low-rank adapters on the attention and MLP projections of scanned layers.

For a target weight W (e.g. `layers/attn/q`, [layers, embed, heads, head_dim]) LoRA trains
A [n, *in, r] and B [n, r, *out] for the n selected layers and uses W + (alpha / r) · A·B. A is
initialised normal with std 1/sqrt(fan-in), B with zeros, so training starts from the base
model. The base weights stay frozen; `merge` folds the adapters into them for export.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from lepjax.config import ConfigError

# target name -> (parameter path, number of input dimensions after the layer axis)
TARGETS = {
    "q": ("layers/attn/q", 1), "k": ("layers/attn/k", 1), "v": ("layers/attn/v", 1),
    "o": ("layers/attn/o", 2), "gate": ("layers/mlp/gate", 1), "up": ("layers/mlp/up", 1),
    "down": ("layers/mlp/down", 1),
}
PREFIX = "lora/"


def lora_section() -> ConfigDict:
    """The `train.lora` section.

    Keys:
      rank: adapter rank (0 = no LoRA).
      alpha: scale numerator (the update is alpha / rank · A·B).
      targets: projections to adapt: any of q, k, v, o, gate, up, down.
      layers: layer indices to adapt, e.g. "0,-1" (empty = all layers).
    """
    return ConfigDict(dict(rank=0, alpha=16.0, targets=("q", "k", "v", "o"), layers=""))


def check_section(section: Any) -> None:
    """Model-free check of a `train.lora` section (rank, targets, layer list syntax)."""
    if section.rank < 0:
        raise ConfigError(f"train.lora.rank={section.rank} is negative (0 = no LoRA)")
    if isinstance(section.targets, str):
        raise ConfigError(f"train.lora.targets={section.targets!r} must be a list of names, e.g. "
                          "('q', 'v'); valid: " + ", ".join(TARGETS))
    for t in section.targets:
        if t not in TARGETS:
            close = difflib.get_close_matches(str(t), list(TARGETS), n=3, cutoff=0.3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"train.lora.targets: unknown target {t!r}{hint} (valid: "
                              f"{', '.join(TARGETS)})")
    try:
        [int(x) for x in section.layers.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"train.lora.layers={section.layers!r}: expected comma-separated layer "
                          "indices such as '0,-1' (empty = all layers)") from None


def layer_indices(spec: str, num_layers: int) -> tuple[int, ...]:
    """Parse "0,1,-1" (empty = all layers)."""
    if not spec.strip():
        return tuple(range(num_layers))
    raw = [int(x) for x in spec.split(",") if x.strip()]
    bad = [i for i in raw if not -num_layers <= i < num_layers]
    if bad:
        raise ConfigError(f"train.lora.layers: indices {bad} out of range for a model of "
                          f"{num_layers} layers")
    return tuple(sorted({i % num_layers for i in raw}))


def init(flat: Mapping[str, jax.Array], cfg: Any, num_layers: int, seed: int = 0) -> dict:
    """Adapter parameters {"lora/<path>/a": A, "lora/<path>/b": B} for the configured targets."""
    check_section(cfg)
    idx = layer_indices(cfg.layers, num_layers)
    out = {}
    key = jax.random.PRNGKey(seed)
    for name in cfg.targets:
        path, n_in = TARGETS[name]
        w = flat[path]
        in_shape, out_shape = w.shape[1:1 + n_in], w.shape[1 + n_in:]
        key, sub = jax.random.split(key)
        std = 1.0 / np.sqrt(np.prod(in_shape))
        out[f"{PREFIX}{path}/a"] = std * jax.random.normal(
            sub, (len(idx), *in_shape, cfg.rank), jnp.float32)
        out[f"{PREFIX}{path}/b"] = jnp.zeros((len(idx), cfg.rank, *out_shape), jnp.float32)
    return out


def delta(a: jax.Array, b: jax.Array) -> jax.Array:
    """A·B over the rank axis: [n, *in, r] x [n, r, *out] -> [n, *in, *out]."""
    n_in = a.ndim - 2
    a2 = a.reshape(a.shape[0], -1, a.shape[-1])
    b2 = b.reshape(b.shape[0], b.shape[1], -1)
    return jnp.einsum("nir,nro->nio", a2, b2).reshape(a.shape[:1 + n_in] + b.shape[2:])


def apply(full: dict[str, jax.Array], cfg: Any, num_layers: int) -> dict[str, jax.Array]:
    """Fold the adapters found in `full` into their weights (and drop them from the dict)."""
    adapters = {k: v for k, v in full.items() if k.startswith(PREFIX)}
    if not adapters:
        return full
    out = {k: v for k, v in full.items() if not k.startswith(PREFIX)}
    idx = np.asarray(layer_indices(cfg.layers, num_layers))
    scale = cfg.alpha / cfg.rank
    for name in cfg.targets:
        path, _ = TARGETS[name]
        d = scale * delta(adapters[f"{PREFIX}{path}/a"], adapters[f"{PREFIX}{path}/b"])
        w = out[path]
        out[path] = w.at[idx].add(d.astype(w.dtype))
    return out

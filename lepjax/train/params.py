"""Which parameters train: selecting, splitting and re-assembling the parameter tree.

Parameters are handled as a flat dict {"layers/attn/q": array, ...}. A selection maps a path to
`None` (the whole parameter trains) or to layer indices (only those slices of a scanned,
stacked parameter train). The trained part (`trainable`) gets gradients and optimiser state; the
rest (`frozen`) is held as is, bit-identical, in `frozen_dtype` if asked.

Presets of `train.trainable`:
  all          every parameter
  none         nothing (with LoRA: only the adapters train)
  embeddings   input embeddings and LM head (the LEP recipe)
  2x2ls        embeddings, LM head, final norm and layers 0, 1, -2, -1 (Yamaguchi et al.)
or a comma-separated list of path prefixes, with `layers[i,j,...]` for layer slices, e.g.
  "embed,lm_head,final_norm,layers[0,1,-2,-1]".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PRESETS = {
    "all": "*",
    "none": "",
    "embeddings": "embed,lm_head",
    "2x2ls": "embed,lm_head,final_norm,layers[0,1,-2,-1]",
}

Selection = dict[str, tuple[int, ...] | None]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b": leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": leaf} -> nested dict."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def select(spec: str, paths: list[str], num_layers: int) -> Selection:
    """Parse a `train.trainable` spec against the model's parameter paths."""
    spec = PRESETS.get(spec, spec)
    if spec.strip() == "*":
        return {p: None for p in paths}
    if not spec.strip():
        return {}
    selection: Selection = {}
    for item in _split(spec):
        m = re.fullmatch(r"([\w/]+)(?:\[([-\d,\s]+)\])?", item)
        if not m:
            raise ValueError(f"cannot parse trainable item {item!r}")
        prefix, layers = m.group(1), m.group(2)
        matched = [p for p in paths if p == prefix or p.startswith(prefix + "/")]
        if not matched:
            if prefix == "lm_head":  # tied embeddings: the LM head is the embedding
                continue
            raise ValueError(f"trainable item {item!r} matches no parameter; parameters: {paths}")
        idx = None
        if layers is not None:
            if not prefix.startswith("layers"):
                raise ValueError(f"layer indices only apply to layers/..., not {prefix!r}")
            raw = [int(x) for x in layers.split(",") if x.strip()]
            bad = [i for i in raw if not -num_layers <= i < num_layers]
            if bad:
                raise ValueError(f"layer indices {bad} out of range for {num_layers} layers")
            idx = tuple(sorted({i % num_layers for i in raw}))
        for p in matched:
            selection[p] = idx
    return selection


def _split(spec: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return items + ([cur.strip()] if cur.strip() else [])


def split(flat: Mapping[str, jax.Array], selection: Selection,
          frozen_dtype: str | None = None) -> tuple[dict, dict]:
    """(trainable, frozen) flat dicts. Layer-sliced parameters stay whole in `frozen`."""
    trainable, frozen = {}, {}
    for path, value in flat.items():
        if path in selection:
            idx = selection[path]
            if idx is None:
                trainable[path] = value
                continue
            trainable[path] = value[np.asarray(idx)]
        frozen[path] = value if frozen_dtype is None else value.astype(jnp.dtype(frozen_dtype))
    return trainable, frozen


def merge(trainable: Mapping[str, jax.Array], frozen: Mapping[str, jax.Array],
          selection: Selection) -> dict[str, jax.Array]:
    """The full flat parameter dict: frozen values with the trained ones written in."""
    full = dict(frozen)
    for path, value in trainable.items():
        idx = selection[path]
        if idx is None:
            full[path] = value
        else:
            full[path] = frozen[path].astype(value.dtype).at[np.asarray(idx)].set(value)
    return full


def count(flat: Mapping[str, Any]) -> int:
    return int(sum(np.prod(v.shape) for v in flat.values()))

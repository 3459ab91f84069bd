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

import difflib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lepjax.config import ConfigError

PRESETS = {
    "all": "*",
    "none": "",
    "embeddings": "embed,lm_head",
    "2x2ls": "embed,lm_head,final_norm,layers[0,1,-2,-1]",
}

Selection = dict[str, tuple[int, ...] | None]


def _items(spec: str) -> list[tuple[str, str, str | None]]:
    """(item, path prefix, layer list or None) of a comma-separated `train.trainable` list."""
    out = []
    for item in _split(spec):
        m = re.fullmatch(r"([\w/]+)(?:\[([-\d,\s]+)\])?", item)
        if not m:
            raise ConfigError(f"train.trainable: cannot parse item {item!r}; expected a preset "
                              f"({', '.join(PRESETS)}) or items like 'embed', 'layers/attn', "
                              "'layers[0,-1]'")
        prefix, layers = m.group(1), m.group(2)
        if layers is not None and not prefix.startswith("layers"):
            raise ConfigError(f"train.trainable: layer indices only apply to layers/..., not "
                              f"{item!r}")
        out.append((item, prefix, layers))
    return out


def check_spec(spec: str, paths: list[str]) -> None:
    """Check a `train.trainable` spec's grammar and names against parameter `paths`, without
    layer counts (what can be checked before a model exists); ConfigError with close names."""
    spec = PRESETS.get(spec, spec)
    if spec.strip() in ("*", ""):
        return
    for item, prefix, _ in _items(spec):
        if prefix != "lm_head" and not _matching(prefix, paths):
            raise _no_match(item, prefix, paths)


def _matching(prefix: str, paths: list[str]) -> list[str]:
    return [p for p in paths if p == prefix or p.startswith(prefix + "/")]


def _no_match(item: str, prefix: str, paths: list[str]) -> ConfigError:
    names = sorted({"/".join(p.split("/")[:i]) for p in paths
                    for i in range(1, p.count("/") + 2)})
    close = difflib.get_close_matches(prefix, names + list(PRESETS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"train.trainable: item {item!r} matches no parameter{hint} (presets: "
                       f"{', '.join(PRESETS)}; parameters: {', '.join(paths)})")


def select(spec: str, paths: list[str], num_layers: int) -> Selection:
    """Parse a `train.trainable` spec against the model's parameter paths."""
    spec = PRESETS.get(spec, spec)
    if spec.strip() == "*":
        return {p: None for p in paths}
    if not spec.strip():
        return {}
    selection: Selection = {}
    for item, prefix, layers in _items(spec):
        matched = _matching(prefix, paths)
        if not matched:
            if prefix == "lm_head":  # tied embeddings: the LM head is the embedding
                continue
            raise _no_match(item, prefix, paths)
        idx = None
        if layers is not None:
            raw = [int(x) for x in layers.split(",") if x.strip()]
            bad = [i for i in raw if not -num_layers <= i < num_layers]
            if bad:
                raise ConfigError(f"train.trainable: layer indices {bad} in {item!r} are out of "
                                  f"range for a model of {num_layers} layers")
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
    """Number of elements of the arrays (or shape structs) in `flat`."""
    return int(sum(np.prod(v.shape) for v in flat.values()))

"""Creating models already sharded, and the lepjax checkpoint format (orbax).

A lepjax model directory holds `lepjax.json` (format version and the `ModelConfig`: the
architecture only), `params/` (an orbax checkpoint of the parameter tree) and any tokenizer files
that came with the model. How a model computes (`Compute`: dtype, attention kernel, remat) is
given by the code that creates or loads it, as keyword arguments (`dtype="float32"`, ...).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lepjax import files, parallel
from lepjax.models.config import Compute, ModelConfig
from lepjax.models.transformer import Decoder

LEPJAX_META = "lepjax.json"
FORMAT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja", "chat_template.json", "added_tokens.json",
)


def is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def abstract_model(config: ModelConfig,
                   compute: Compute = Compute()) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract (shape-only) state of a `Decoder`, allocating nothing."""
    return nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0), compute=compute)))


def state_shardings(state: nnx.State, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES):
    """A `NamedSharding` per parameter, from its `logical_axes` metadata and the rules."""

    def one(v):
        axes = v.get_metadata().get("logical_axes") or (None,) * len(v.shape)
        return v.replace(parallel.named_sharding(mesh, axes, rules, v.shape))

    return jax.tree.map(one, state, is_leaf=is_variable)


def default_mesh(mesh: Mesh | None) -> Mesh:
    return mesh if mesh is not None else parallel.make_mesh({"fsdp": -1})


def create_model(
    config: ModelConfig, *, mesh: Mesh | None = None, rules: parallel.Rules = parallel.DEFAULT_RULES,
    seed: int = 0, **compute: str,
) -> Decoder:
    """A randomly initialised model whose parameters are created directly in their shards.

    `compute`: compute settings (fields of `Compute`, e.g. `dtype="float32"`).
    """
    mesh = default_mesh(mesh)
    run = Compute().replace(**compute)
    graphdef, abstract = abstract_model(config, run)
    shardings = state_shardings(abstract, mesh, rules)

    def init():
        return nnx.state(Decoder(config, rngs=nnx.Rngs(seed), compute=run))

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def build_from_arrays(
    config: ModelConfig, make: Callable[[tuple[str, ...], jax.ShapeDtypeStruct, NamedSharding], jax.Array],
    *, mesh: Mesh | None = None, rules: parallel.Rules = parallel.DEFAULT_RULES,
    compute: Compute = Compute(),
) -> Decoder:
    """Assemble a model from per-parameter arrays: `make(path, abstract, sharding)` returns each."""
    mesh = default_mesh(mesh)
    graphdef, abstract = abstract_model(config, compute)
    shardings = state_shardings(abstract, mesh, rules)

    def one(path, v, s):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        struct = jax.ShapeDtypeStruct(v.shape, v.dtype)
        arr = make(keys, struct, s.get_value() if is_variable(s) else s)
        return v.replace(arr)

    state = jax.tree.map_with_path(one, abstract, shardings, is_leaf=is_variable)
    return nnx.merge(graphdef, state)


def pure_params(model: Decoder) -> dict:
    """The parameter tree as nested dicts of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save(model: Decoder, path: str, *, tokenizer_from: str | None = None, overwrite: bool = False) -> str:
    """Write `model` as a lepjax model directory (atomic: written aside, then renamed)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    _check_destination(path, overwrite)
    tmp = path + ".partial"
    if jax.process_index() == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"), pure_params(model))
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(tmp, LEPJAX_META), "w", encoding="utf-8") as f:
            json.dump({"format": "lepjax-model", "version": FORMAT_VERSION,
                       "model": model.config.to_dict()}, f, indent=2)
        if tokenizer_from:
            copy_tokenizer_files(tokenizer_from, tmp)
        files.commit_dir(tmp, path)
    return path


def _check_destination(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) "
                              "to replace it")


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copy the tokenizer files a model directory carries (those that exist)."""
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def read_lepjax_config(path: str) -> ModelConfig:
    """The `ModelConfig` (architecture) stored in a lepjax model directory."""
    meta_path = os.path.join(path, LEPJAX_META)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != "lepjax-model":
        raise ValueError(f"{meta_path}: not a lepjax model directory (format={meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format version {meta['version']} is newer than this lepjax "
                         f"({FORMAT_VERSION}); upgrade lepjax")
    return ModelConfig.from_dict(meta["model"])


def load_lepjax(
    path: str, *, mesh: Mesh | None = None, rules: parallel.Rules = parallel.DEFAULT_RULES,
    **compute: str,
) -> Decoder:
    """Restore a lepjax model directory, each parameter straight into its shards.

    `compute`: compute settings of this run (fields of `Compute`, e.g. `attention="xla"`).
    """
    import orbax.checkpoint as ocp

    config = read_lepjax_config(path)
    mesh = default_mesh(mesh)
    graphdef, abstract = abstract_model(config, Compute().replace(**compute))
    shardings = state_shardings(abstract, mesh, rules)
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.get_value()),
        abstract, shardings, is_leaf=is_variable)
    target = nnx.to_pure_dict(target)
    params_dir = os.path.join(os.path.abspath(path), "params")
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"{path}: missing params/ (an incomplete lepjax model directory)")
    stored = ocp.StandardCheckpointer().metadata(params_dir)
    stored_tree = getattr(stored, "item_metadata", stored)
    _check_tree_matches(path, target, stored_tree)
    restored = ocp.StandardCheckpointer().restore(params_dir, target)
    nnx.replace_by_pure_dict(abstract, restored)
    return nnx.merge(graphdef, abstract)


def flatten_tree(tree: Any, is_leaf: Any = None) -> tuple[dict[str, Any], Any]:
    """({"layers/attn/q": leaf, ...}, treedef) of a pytree keyed by names (an `nnx.State`, nested
    dicts, a pure parameter dict, orbax metadata). The one place parameter paths are spelt;
    `unflatten_tree` inverts it. Dict keys of the tree form the path; other path entries (a Variable's value
    attribute) are skipped."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    flat = {"/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)): leaf
            for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("two leaves of the tree share a parameter path")
    return flat, treedef


def unflatten_tree(treedef: Any, flat: Mapping[str, Any], paths: list[str]) -> Any:
    """The tree `flatten_tree` flattened to `paths` (in its order), from `flat` by path."""
    return jax.tree.unflatten(treedef, [flat[p] for p in paths])


def flatten(tree: Any) -> dict[str, Any]:
    """{"a/b": leaf} of a nested parameter tree."""
    return flatten_tree(tree)[0]


def _check_tree_matches(path: str, target, stored) -> None:
    want, have = flatten(target), flatten(stored)
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{path}: checkpoint is missing parameters {missing}")
    for name, t in want.items():
        shape = tuple(getattr(have[name], "shape", ()))
        if shape != tuple(t.shape):
            raise ValueError(f"{path}: parameter {name} has shape {shape}, the model config "
                             f"expects {tuple(t.shape)}")


def to_host(x: jax.Array) -> np.ndarray:
    """A NumPy copy of a (possibly multi-host sharded) array."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

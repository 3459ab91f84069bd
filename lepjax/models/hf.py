"""Hugging Face Llama/Mistral checkpoints <-> lepjax models, in both directions.

Import streams: every safetensors file is memory-mapped, and each device's shard of each lepjax
parameter is cut from the mapped tensors (`jax.make_array_from_callback`), so no host ever holds a
full copy of the model. Export gathers one tensor at a time and writes sharded safetensors with an
index, in a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lepjax import files, parallel
from lepjax.models import io
from lepjax.models.config import Compute, ModelConfig
from lepjax.models.safetensors_io import open_tensors, write_file
from lepjax.models.transformer import Decoder

# HF tensors that carry no weights lepjax needs (buffers written by old transformers versions).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class WeightMap:
    """How one lepjax parameter is stored in a HF checkpoint.

    `to_lepjax(hf_tensor)` and `to_hf(lepjax_tensor)` are NumPy views/reshapes for one layer.
    """

    path: tuple[str, ...]
    hf_name: str  # with "{i}" for the layer index when `per_layer`
    to_lepjax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    per_layer: bool = True


def weight_maps(c: ModelConfig) -> list[WeightMap]:
    """The lepjax <-> HF parameter correspondence for a config."""
    H, KV, hd, D = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
    ident = lambda x: x  # noqa: E731
    T = lambda x: x.T  # noqa: E731

    def heads_in(n):  # HF [n*hd, D] <-> lepjax [D, n, hd]
        return (lambda x: x.reshape(n, hd, D).transpose(2, 0, 1),
                lambda x: x.transpose(1, 2, 0).reshape(n * hd, D))

    pre = "model.layers.{i}."
    maps = [
        WeightMap(("embed",), "model.embed_tokens.weight", ident, ident, per_layer=False),
        WeightMap(("final_norm", "scale"), "model.norm.weight", ident, ident, per_layer=False),
        WeightMap(("layers", "attn_norm", "scale"), pre + "input_layernorm.weight", ident, ident),
        WeightMap(("layers", "mlp_norm", "scale"), pre + "post_attention_layernorm.weight", ident, ident),
        WeightMap(("layers", "attn", "q"), pre + "self_attn.q_proj.weight", *heads_in(H)),
        WeightMap(("layers", "attn", "k"), pre + "self_attn.k_proj.weight", *heads_in(KV)),
        WeightMap(("layers", "attn", "v"), pre + "self_attn.v_proj.weight", *heads_in(KV)),
        WeightMap(("layers", "attn", "o"), pre + "self_attn.o_proj.weight",
                  lambda x: x.reshape(D, H, hd).transpose(1, 2, 0),
                  lambda x: x.transpose(2, 0, 1).reshape(D, H * hd)),
        WeightMap(("layers", "mlp", "gate"), pre + "mlp.gate_proj.weight", T, T),
        WeightMap(("layers", "mlp", "up"), pre + "mlp.up_proj.weight", T, T),
        WeightMap(("layers", "mlp", "down"), pre + "mlp.down_proj.weight", T, T),
    ]
    if not c.tie_word_embeddings:
        maps.append(WeightMap(("lm_head",), "lm_head.weight", T, T, per_layer=False))
    return maps


def is_hf_dir(path: str) -> bool:
    """A directory with a HF `config.json` and safetensors weights."""
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith(".safetensors") for f in os.listdir(path))


def _open_checkpoint(path: str) -> dict[str, np.ndarray]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for name in files:
            if not os.path.isfile(os.path.join(path, name)):
                raise FileNotFoundError(f"{path}: shard {name} listed in {os.path.basename(index)} "
                                        "is missing")
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        if any(f.endswith(".bin") for f in os.listdir(path)):
            raise ValueError(f"{path}: only PyTorch .bin weights found; lepjax reads safetensors "
                             "(convert with transformers' save_pretrained(safe_serialization=True))")
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(open_tensors(os.path.join(path, name)))
    return tensors


def load_hf(
    path: str, *, mesh: Mesh | None = None, rules: parallel.Rules = parallel.DEFAULT_RULES,
    **compute: str,
) -> Decoder:
    """Load a HF Llama/Mistral directory (config.json + safetensors) into a sharded lepjax model.

    `compute`: compute settings of this run (fields of `Compute`: `dtype`, `param_dtype`,
    `attention`, `remat_policy`).
    """
    run = Compute().replace(**compute)
    config = ModelConfig.from_hf(path)
    tensors = _open_checkpoint(path)
    maps = {m.path: m for m in weight_maps(config)}
    L = config.num_layers

    expected = {m.hf_name.format(i=i) for m in maps.values()
                for i in (range(L) if m.per_layer else [0])}
    missing = sorted(expected - set(tensors), key=_natural)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"{path}: checkpoint is missing weight(s) {missing[:5]}{more} that the "
                         f"config ({config.architecture}, {L} layers) requires")
    unexpected = sorted(n for n in set(tensors) - expected if not n.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights the config does not use: {unexpected[:5]}"
                         " (does config.json match the weights?)")

    def make(keys, struct, sharding):
        m = maps[keys]
        names = [m.hf_name.format(i=i) for i in range(L)] if m.per_layer else [m.hf_name]
        views = [m.to_lepjax(tensors[n]) for n in names]
        one_shape = struct.shape[1:] if m.per_layer else struct.shape
        for n, v in zip(names, views):
            if v.shape != tuple(one_shape):
                raise ValueError(f"{path}: weight {n} has shape {tensors[n].shape}, which does not "
                                 f"fit the config (expected {one_shape} after layout change)")

        def cb(index):
            if not m.per_layer:
                return np.asarray(views[0][index], dtype=struct.dtype)
            rest = index[1:]
            return np.stack([np.asarray(views[i][rest], dtype=struct.dtype)
                             for i in range(L)[index[0]]])

        return jax.make_array_from_callback(struct.shape, sharding, cb)

    return io.build_from_arrays(config, make, mesh=mesh, rules=rules, compute=run)


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.replace(".", " ").split()]


def save_hf(
    model: Decoder, path: str, *, dtype: str | None = None, max_shard_bytes: int = 2 << 30,
    tokenizer_from: str | None = None, overwrite: bool = False,
) -> str:
    """Export to a HF directory (config.json, safetensors shards + index), atomically.

    `dtype` defaults to the dtype the weights had when imported (`config.checkpoint_dtype`).
    """
    c = model.config
    dtype = dtype or c.checkpoint_dtype
    np_dtype = np.dtype(_np_dtype(dtype))
    path = os.path.abspath(path)
    io._check_destination(path, overwrite)
    params = nnx.state(model, nnx.Param)

    entries = []  # (hf_name, shape, getter)
    for m in weight_maps(c):
        arr = _get(params, m.path)
        for i in range(c.num_layers) if m.per_layer else [None]:
            one = arr.shape[1:] if m.per_layer else arr.shape
            hf_shape = m.to_hf(np.empty(one, np.bool_)).shape
            entries.append((m.hf_name.format(i=i), hf_shape,
                            (lambda a=arr, i=i, m=m: m.to_hf(io.to_host(a if i is None else a[i])))))
    # Plan shards by size, then write each tensor as it is gathered.
    shards: list[list] = [[]]
    size = 0
    for e in entries:
        nbytes = int(np.prod(e[1])) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes

    tmp = path + ".partial"
    if jax.process_index() == 0:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = ("model.safetensors" if len(shards) == 1
                 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
        getters = {name: get for name, _, get in shard}
        if jax.process_index() == 0:
            write_file(os.path.join(tmp, fname), [(n, s, np_dtype) for n, s, _ in shard],
                       lambda n: getters[n]().astype(np_dtype))
        else:  # every process takes part in the gathers
            for get in getters.values():
                get()
        weight_map.update({n: fname for n, _, _ in shard})
    if jax.process_index() == 0:
        if len(shards) > 1:
            total = sum(int(np.prod(s)) * np_dtype.itemsize for _, s, _ in entries)
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(c.to_hf(dtype), f, indent=2)
        if tokenizer_from:
            io.copy_tokenizer_files(tokenizer_from, tmp)
        files.commit_dir(tmp, path)
    return path


def _np_dtype(dtype: str):
    import ml_dtypes

    return {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]


def _get(params, path):
    node = params
    for k in path:
        node = node[k]
    return node[...]

"""The model-level Python API: load any supported directory, build from a config, run sharded."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from lepjax import parallel
from lepjax.models import hf, io
from lepjax.models.config import ModelConfig, get_preset
from lepjax.models.transformer import Decoder

COMPUTE_KEYS = ("dtype", "param_dtype", "attention", "remat_policy")


def model_section() -> ConfigDict:
    """The `model` section: which weights, and how to compute with them (see `from_config`).

    Keys:
      path: a Hugging Face or lepjax model directory; empty means random weights from `preset`.
      preset: a preset name (`lepjax.models.config.PRESETS`) used when `path` is empty.
      seed: random-initialisation seed (only with `preset`).
      vocab_size: vocabulary size of a random `preset` model (0 = the preset's own).
      dtype: compute dtype of activations and matmuls (bfloat16 | float32 | float16).
      param_dtype: dtype parameters are held in (float32 | bfloat16).
      attention: attention kernel: auto | xla | cudnn | splash.
      remat_policy: rematerialisation of scanned layers: none | full | dots | dots_no_batch.
    """
    return ConfigDict(dict(
        path="", preset="tiny_llama3", seed=0, vocab_size=0, dtype="bfloat16",
        param_dtype="float32", attention="auto", remat_policy="full"))


def detect_format(path: str) -> str:
    """'lepjax' or 'hf' for a model directory; a clear error for anything else."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    if os.path.isfile(os.path.join(path, io.LEPJAX_META)):
        return "lepjax"
    if hf.is_hf_dir(path):
        return "hf"
    raise ValueError(f"{path!r} is neither a lepjax model directory ({io.LEPJAX_META} + params/) "
                     "nor a Hugging Face one (config.json + *.safetensors)")


def load(
    path: str, *, mesh: Mesh | None = None, rules: parallel.Rules = parallel.DEFAULT_RULES,
    **config_overrides: Any,
) -> tuple[Decoder, ModelConfig]:
    """Load a Hugging Face or lepjax model directory: returns `(model, config)`.

    Parameters are placed directly in their shards on `mesh` (default: FSDP over all devices).
    `config_overrides` change compute settings, e.g. `dtype="float32"`, `attention="xla"`.
    """
    loader = io.load_lepjax if detect_format(path) == "lepjax" else hf.load_hf
    model = loader(path, mesh=mesh, rules=rules, **config_overrides)
    return model, model.config


def from_config(section: Any, mesh: Mesh | None = None,
                rules: parallel.Rules = parallel.DEFAULT_RULES) -> Decoder:
    """A model from a config `model` section (see `model_section`)."""
    compute = {k: section[k] for k in COMPUTE_KEYS if k in section}
    if section.get("path"):
        model, _ = load(section.path, mesh=mesh, rules=rules, **compute)
        return model
    arch = {"vocab_size": section.vocab_size} if section.get("vocab_size") else {}
    config: ModelConfig = get_preset(section.preset, **arch)
    return io.create_model(config, mesh=mesh, rules=rules, seed=section.get("seed", 0), **compute)


def make_forward(
    model: Decoder, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES,
) -> tuple[Callable[..., jax.Array], nnx.State]:
    """A jitted `forward(state, tokens, segment_ids=None, positions=None) -> logits`.

    Compiled with explicit input and output shardings (the batch dimension sharded by the `batch`
    rule where the batch size allows), once per input shape. Returns the function and the state
    to pass it (split once; the function merges inside).
    """
    graphdef, state = nnx.split(model)
    state_sh = jax.tree.map(lambda x: x.sharding, state)

    def forward(state, tokens, segment_ids, positions):
        with parallel.activation_sharding(mesh, rules):
            return nnx.merge(graphdef, state)(tokens, segment_ids, positions)

    compiled: dict[tuple, Callable] = {}

    def call(state, tokens, segment_ids=None, positions=None):
        tokens = jnp.asarray(tokens, jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        key = (tokens.shape, segment_ids is None)
        if key not in compiled:
            b, t = tokens.shape
            batch = parallel.named_sharding(mesh, ("batch", "length"), rules, (b, t))
            out = parallel.named_sharding(mesh, ("batch", "length", "vocab"), rules,
                                          (b, t, model.config.vocab_size))
            seg_sh = None if segment_ids is None else batch
            compiled[key] = jax.jit(forward, in_shardings=(state_sh, batch, seg_sh, batch),
                                    out_shardings=out)
        return compiled[key](state, tokens, segment_ids, positions)

    return call, state

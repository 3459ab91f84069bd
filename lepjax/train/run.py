"""A training run directory as a model: load its latest (or any) checkpoint, export it.

A run directory (see `lepjax.train.loop`) holds `run_model.json` (the architecture, which
parameters trained, the LoRA settings and the model directory the run started from), `frozen/`
and `checkpoints/<step>/`. `load_run` merges the frozen and trained parameters of a checkpoint
(LoRA adapters folded in, the multi-token-prediction head dropped) into a `Decoder`;
`export_run` writes that model as a Hugging Face or lepjax model directory
(`lepjax convert RUN_DIR DST`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from lepjax import config as config_lib
from lepjax import models, parallel
from lepjax.train import lora as lora_lib
from lepjax.train import params as P
from lepjax.train.checkpoint import Checkpointer, restore_frozen
from lepjax.train.state import MTP_HEAD, TrainSetup, abstract_model

RUN_META = "run_model.json"
FORMATS = ("hf", "lepjax")


def is_run_dir(path: str) -> bool:
    """True for a `lepjax train` run directory (it has `run_model.json`)."""
    return os.path.isfile(os.path.join(path, RUN_META))


def write_meta(run_dir: str, setup: TrainSetup, lora: Any, model_path: str = "") -> None:
    """Write `run_model.json` (process 0): what `load_run` needs besides the checkpoints."""
    if jax.process_index() != 0:
        return
    meta = {"model": setup.model.config.to_dict(), "selection": setup.selection,
            "lora": config_lib.to_dict(lora), "model_path": os.path.abspath(model_path)
            if model_path else ""}
    with open(os.path.join(run_dir, RUN_META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)


def read_meta(run_dir: str) -> dict[str, Any]:
    """The contents of `run_model.json`; FileNotFoundError naming the directory if it has none."""
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir!r} is not a training run directory (no {RUN_META})")
    with open(os.path.join(run_dir, RUN_META), encoding="utf-8") as f:
        return json.load(f)


def load_run(run_dir: str, step: int | None = None, mesh=None,
             rules: parallel.Rules = parallel.DEFAULT_RULES, **compute: str) -> models.Decoder:
    """The model of a run's latest (or given) checkpoint: frozen + trained parameters merged,
    LoRA adapters folded in, the multi-token-prediction head dropped.

    `compute`: compute settings of the returned model (`models.Compute` fields, e.g.
    `dtype="float32"`); parameters keep the dtype they were trained in unless `param_dtype` says.
    """
    meta = read_meta(run_dir)
    mc = models.ModelConfig.from_dict(meta["model"])
    selection = {k: (None if v is None else tuple(v)) for k, v in meta["selection"].items()}
    mesh = mesh or parallel.make_mesh({"fsdp": -1})
    am = abstract_model(mc, models.Compute().replace(**compute))
    shardings = {p: parallel.named_sharding(mesh, am.axes[p], rules, s.shape)
                 for p, s in am.structs.items()}
    frozen_abs = {p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings[p])
                  for p, s in am.structs.items() if p not in selection or selection[p] is not None}
    ckpt = Checkpointer(run_dir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None or step not in ckpt.manager.all_steps():
            raise FileNotFoundError(f"{run_dir}: no checkpoint "
                                    f"{'to load' if step is None else f'at step {step}'} "
                                    f"(steps: {list(ckpt.manager.all_steps())})")
        abstract_state = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), ckpt.state_metadata(step),
            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
        state, _ = ckpt.restore(step, abstract_state)
    finally:
        ckpt.close()
    frozen = restore_frozen(run_dir, frozen_abs) or {}
    trainable = {k: v for k, v in state["trainable"].items() if k != MTP_HEAD}
    full = P.merge(trainable, frozen, selection)
    full = lora_lib.apply(full, ConfigDict(meta["lora"]), mc.num_layers)
    placed = {p: jax.device_put(jnp.asarray(full[p], am.structs[p].dtype), shardings[p])
              for p in am.paths}
    return nnx.merge(am.graphdef, P.unflatten_tree(am.treedef, placed, am.paths))


def export_run(run_dir: str, dst: str, fmt: str = "hf", tokenizer_from: str | None = None,
               overwrite: bool = False, *, step: int | None = None, dtype: str | None = None,
               mesh=None, rules: parallel.Rules = parallel.DEFAULT_RULES) -> str:
    """Write a run's checkpoint (latest or `step`) as a Hugging Face (`fmt="hf"`) or lepjax model
    directory at `dst`; returns its path.

    Tokenizer files are copied from `tokenizer_from`, by default from the model directory the run
    started from (when it has any). `dtype`: HF export dtype (default: the imported weights').
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}; expected one of {FORMATS}")
    if tokenizer_from is None:
        tokenizer_from = read_meta(run_dir).get("model_path") or None
    model = load_run(run_dir, step, mesh=mesh, rules=rules, param_dtype="float32")
    if fmt == "hf":
        return models.save_hf(model, dst, dtype=dtype, tokenizer_from=tokenizer_from,
                              overwrite=overwrite)
    return models.save(model, dst, tokenizer_from=tokenizer_from, overwrite=overwrite)

"""A training run directory as a model: load its latest (or any) checkpoint, export it.

A run directory (see `lepjax.train.loop`) holds `run_model.json` (the architecture, which
parameters trained, the LoRA settings and the model directory the run started from), `frozen/`
and `checkpoints/<step>/`. `load_run` merges the frozen and trained parameters of a checkpoint
(LoRA adapters folded in, the multi-token-prediction head dropped) into a `Decoder`;
`export_run` writes that model as a Hugging Face or lepjax model directory
(`lepjax convert RUN_DIR DST`).

`open_run` starts or resumes one. `run_settings.json`, written at the first launch and never
changed, records the settings that define the run (`DEFINING`: the model, the data and the
fingerprints of its datasets, what is trained, the global batch, the sequence length). A launch
under other ones is refused, naming the keys; any other key may change (`train.steps`, the
learning rate and schedule, logging and evaluation intervals, ...) and is logged with its old
and new value against the previous launch's resolved config.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from lepjax import config as config_lib
from lepjax import files, models, parallel
from lepjax.train import lora as lora_lib
from lepjax.train import params as P
from lepjax.train.checkpoint import Checkpointer, restore_frozen
from lepjax.train.state import MTP_HEAD, TrainSetup, abstract_model, model_config

RUN_META = "run_model.json"
RUN_SETTINGS = "run_settings.json"
FORMATS = ("hf", "lepjax")
# The config keys that define a run (with `model.<field>` for each architecture field and
# `data.fingerprints` for the datasets' content): a resume under other values is refused.
DEFINING = ("model.path", "data.paths", "train.trainable", "train.lora", "train.mtp",
            "data.batch_size", "data.seq_len")

log = logging.getLogger("lepjax.train")


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


def dataset_fingerprint(metadata: dict[str, Any]) -> str:
    """A dataset's content fingerprint: the hash of its metadata.json (tokenizer, sources and
    their sizes, shard counts, settings)."""
    blob = json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_settings(cfg: ConfigDict, datasets: Sequence[Any]) -> dict[str, Any]:
    """The settings that define the run of `cfg` (JSON types): the `DEFINING` keys, the model's
    architecture as `model.<field>` (from its metadata: no weight is read) and the fingerprints
    of `datasets` (the opened `data.paths`)."""
    values = {"model.path": os.path.abspath(cfg.model.path) if cfg.model.get("path") else "",
              "data.paths": [os.path.abspath(p) for p in cfg.data.paths],
              "data.fingerprints": [dataset_fingerprint(ds.metadata) for ds in datasets],
              "train.trainable": cfg.train.trainable,
              "train.lora": config_lib.to_dict(cfg.train.lora), "train.mtp": cfg.train.mtp,
              "data.batch_size": cfg.data.batch_size, "data.seq_len": cfg.data.seq_len}
    values.update({f"model.{k}": v for k, v in model_config(cfg.model).to_dict().items()})
    return json.loads(json.dumps(values))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _previous_config(run_dir: str) -> dict[str, Any] | None:
    """The resolved config of the run's latest launch (the highest `resolved_config.<n>.json`)."""
    def n(path: str) -> int:
        m = re.search(r"resolved_config\.(\d+)\.json$", path)
        return int(m.group(1)) if m else 0

    paths = sorted(glob.glob(os.path.join(run_dir, config_lib.RESOLVED_CONFIG.replace(
        ".json", "*.json"))), key=n)
    if not paths:
        return None
    with open(paths[-1], encoding="utf-8") as f:
        data = json.load(f)
    data.pop("command", None)
    return data


def check_resume(run_dir: str, settings: dict[str, Any], cfg: ConfigDict) -> bool:
    """Whether `run_dir` is a run to resume (False: a new one). Raises `ValueError` naming every
    defining key whose value differs from the one the run was started with, or when `run_dir`
    is a non-empty directory that is not a run (no `run_settings.json`); logs the other keys that
    changed since the last launch."""
    if not os.path.isdir(run_dir):
        if os.path.exists(run_dir):
            raise NotADirectoryError(f"train.run_dir {run_dir} exists and is not a directory")
        return False
    path = os.path.join(run_dir, RUN_SETTINGS)
    if not os.path.isfile(path):
        ckpts = os.path.join(run_dir, "checkpoints")  # orbax may have created it, empty
        empty = os.path.isdir(ckpts) and not os.listdir(ckpts)
        held = sorted(n for n in os.listdir(run_dir) if not (n == "checkpoints" and empty))
        if held:
            raise FileExistsError(f"train.run_dir {run_dir} holds files but is not a run (no "
                                  f"{RUN_SETTINGS}: {', '.join(held[:3])}); choose another "
                                  "train.run_dir")
        return False
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if changed:
        raise ValueError(
            f"train.run_dir {run_dir} was started with other settings: "
            + "; ".join(f"{k} ({old.get(k)!r} -> {settings.get(k)!r})" for k in changed)
            + ". A run resumes only under the settings that define it: choose another "
            "train.run_dir (to start from this run's weights, export them with `lepjax convert "
            f"{run_dir} DST` and set model.path=DST)")
    previous = _previous_config(run_dir)
    if previous is not None:
        before, now = _flat(previous), _flat(config_lib.to_dict(cfg))
        moves = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                 if before.get(k) != now.get(k) and k != "train.run_dir"]  # a copied run
        if moves:
            log.info("resuming %s with changed settings: %s", run_dir, ", ".join(moves))
    return True


def open_run(run_dir: str, cfg: ConfigDict, setup: TrainSetup, settings: dict[str, Any],
             resumed: bool) -> None:
    """Create or update the run directory once `check_resume` passed: its `settings` (first
    launch only), this launch's resolved config and `run_model.json`."""
    parallel.allgather_json(None)  # every process has checked before anything is written
    os.makedirs(run_dir, exist_ok=True)
    if not resumed and jax.process_index() == 0:
        files.write_json(os.path.join(run_dir, RUN_SETTINGS), settings)
    config_lib.write_resolved(cfg, run_dir)
    write_meta(run_dir, setup, cfg.train.lora, cfg.model.path)


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
    return nnx.merge(am.graphdef, models.io.unflatten_tree(am.treedef, placed, am.paths))


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

"""`lepjax train`: the training loop.

    run_dir/
      resolved_config.json     the config of the (latest) launch
      metrics.jsonl            one line per logged step (loss, lr, grad norm, tokens/s, MFU, ...)
      tensorboard/             the same scalars for TensorBoard (when tensorboardX is installed)
      frozen/, checkpoints/    see lepjax.train.checkpoint

A run directory that already has a checkpoint resumes from the latest complete one: the train
state and the data position are restored, so the run continues with exactly the batches and
losses it would have had. SIGTERM (preemption) saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from lepjax import config as config_lib
from lepjax import models, parallel
from lepjax.data.loader import Loader, data_section
from lepjax.train import flops as flops_lib
from lepjax.train import lora as lora_lib
from lepjax.train import params as P
from lepjax.train.checkpoint import Checkpointer, abstract_of, restore_frozen, save_frozen
from lepjax.train.optim import make_optimizer, optim_section
from lepjax.train.step import StepBuilder

log = logging.getLogger("lepjax.train")


RUN_META = "run_model.json"


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf."""


def train_section() -> ConfigDict:
    """The `train` section.

    Keys:
      run_dir: the run directory (created; resumed from when it has checkpoints).
      steps: optimiser steps in total (the schedule's length).
      stop_at_step: end this launch after this step (0 = run to `steps`), saving a checkpoint;
        the next launch resumes (e.g. to fit a job's time limit).
      trainable: all | embeddings | 2x2ls | a list like "embed,lm_head,layers[0,-1]"
        (see lepjax.train.params).
      frozen_dtype: dtype frozen parameters are held in ("" = as loaded).
      mtp: add a multi-token-prediction head (predicts t+2; initialised from the LM head).
      micro_batches: gradient accumulation: the global batch is split into this many parts.
      loss_chunk: positions per chunk of the LM head + loss (bounds float32 logits memory).
      z_loss: weight of the z-loss (logsumexp²) term; 0 = off.
      log_every, save_every, eval_every: intervals in steps (0 = never; a final save always).
      eval_batches: batches per evaluation.
      keep_checkpoints: checkpoints kept.
      async_checkpointing: save in the background.
      skip_nonfinite: on a NaN/inf loss skip the step instead of stopping with an error.
      peak_tflops: per-device peak for MFU (0 = look up the device kind).
      progress: show a progress bar.
      lora: LoRA adapters (rank, alpha, targets, layers; see lepjax.train.lora); with
        lora.rank > 0 use trainable="none" (adapters only) or add e.g. "embed,lm_head".
    """
    return ConfigDict(dict(
        run_dir="", steps=1000, stop_at_step=0, trainable="all", frozen_dtype="", mtp=False, micro_batches=1,
        loss_chunk=1024, z_loss=0.0, log_every=10, save_every=500, eval_every=0, eval_batches=10,
        keep_checkpoints=3, async_checkpointing=True, skip_nonfinite=False, peak_tflops=0.0,
        progress=True, lora=lora_lib.lora_section()))


def default_config() -> ConfigDict:
    """A complete `lepjax train` config (model, mesh, data, optim, train sections)."""
    return ConfigDict(dict(model=models.model_section(), mesh=parallel.mesh_section(),
                           data=data_section(), optim=optim_section(), train=train_section()))


class _Preemption:
    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True
            log.warning("SIGTERM received: saving a checkpoint and stopping")

        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


class MetricsWriter:
    """metrics.jsonl (and TensorBoard when available), written by process 0."""

    def __init__(self, run_dir: str):
        self.enabled = jax.process_index() == 0
        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a") if self.enabled else None
        self.tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _data_state(loader: Loader) -> dict[str, Any]:
    """The loader position of all processes merged (each process runs its own streams)."""
    merged: dict[str, Any] = {"streams": {}}
    for state in parallel.allgather_json(loader.get_state()):
        merged["streams"].update(state["streams"])
    return merged


def _model_tokenizer_fingerprint(path: str) -> str | None:
    """The fingerprint of the tokenizer shipped in a model directory, if it has one."""
    if not path:
        return None
    from lepjax.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(path).fingerprint()
    except FileNotFoundError:
        return None


def _on_mesh(tree: Any, mesh) -> Any:
    """Arrays not already sharded on `mesh` (scalars, optimiser counters) replicated on it."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        sh = getattr(x, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(place, tree)


def _trainable_flops(c: models.ModelConfig, selection: P.Selection, seq_len: int) -> float:
    layer_paths = {p: idx for p, idx in selection.items() if p.startswith("layers/")}
    trains_embed = "embed" in selection
    if layer_paths:
        idx_sets = [set(range(c.num_layers)) if i is None else set(i) for i in layer_paths.values()]
        lowest = min(min(s) for s in idx_sets)
        trained_layers = len(set().union(*idx_sets))
    else:
        lowest, trained_layers = None, 0
    if trains_embed:
        lowest = 0
    head = "lm_head" in selection or (c.tie_word_embeddings and trains_embed)
    return flops_lib.flops_per_token(c, seq_len, trained_layers=trained_layers,
                                     lowest_trained_layer=lowest, head_trained=head)


def train(cfg: ConfigDict) -> dict[str, Any]:
    """Run (or resume) the training `cfg` describes; returns the final metrics."""
    tc = cfg.train
    if not tc.run_dir:
        raise ValueError("train.run_dir is not set")
    run_dir = os.path.abspath(tc.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    config_lib.write_resolved(cfg, run_dir)
    mesh, rules = parallel.mesh_from_config(cfg.mesh)

    model = models.from_config(cfg.model, mesh=mesh, rules=rules)
    mc = model.config
    graphdef, state = nnx.split(model)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = ["/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
             for p, _ in leaves_with_path]
    flat = dict(zip(paths, [leaf for _, leaf in leaves_with_path]))
    selection = P.select(tc.trainable, paths, mc.num_layers)
    trainable, frozen = P.split(flat, selection, tc.frozen_dtype or None)
    if tc.lora.rank > 0:
        adapters = lora_lib.init(flat, tc.lora, mc.num_layers, seed=cfg.model.seed)
        trainable.update(_on_mesh(adapters, mesh))
        selection.update({k: None for k in adapters})
    if not trainable:
        raise ValueError(f"train.trainable={tc.trainable!r} selects no parameter and LoRA is off "
                         "(train.lora.rank=0): nothing would train")
    if tc.mtp:
        head = model.lm_head_weight()
        trainable["mtp_head"] = jax.jit(lambda x: x, out_shardings=head.sharding)(head)
        selection["mtp_head"] = None
    del model, state, flat

    if jax.process_index() == 0:
        with open(os.path.join(run_dir, RUN_META), "w") as f:
            json.dump({"model": mc.to_dict(), "selection": selection,
                       "lora": config_lib.to_dict(tc.lora)}, f, indent=2)
    tx, schedule = make_optimizer(cfg.optim, tc.steps, trainable)
    opt_state = jax.jit(tx.init)(trainable)
    train_state = _on_mesh({"step": jnp.zeros((), jnp.int32), "trainable": trainable,
                            "opt_state": opt_state}, mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, train_state)
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)

    loader = Loader.from_config(cfg.data, vocab_size=mc.vocab_size,
                                fingerprint=_model_tokenizer_fingerprint(cfg.model.path))
    ckpt = Checkpointer(run_dir, keep=tc.keep_checkpoints, async_save=tc.async_checkpointing)
    save_frozen(run_dir, frozen)
    start = ckpt.latest_step()
    if start is not None:
        train_state, data_state = ckpt.restore(start, abstract_of(train_state))
        loader.set_state(data_state)
        restored = restore_frozen(run_dir, abstract_of(frozen))
        if restored is not None:
            frozen = restored
        log.info("resumed %s from step %d", run_dir, start)
    start = start or 0

    builder = StepBuilder(graphdef, treedef, paths, selection, tx, schedule, tc, mesh, rules,
                          lora=tc.lora if tc.lora.rank > 0 else None, num_layers=mc.num_layers)
    batch_sh = NamedSharding(mesh, parallel.logical_to_spec(
        ("batch", "length"), rules, mesh, (cfg.data.batch_size, cfg.data.seq_len)))
    step_fn = jax.jit(builder.train_step, in_shardings=(state_sh, frozen_sh, batch_sh),
                      out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
                      donate_argnums=(0,))
    eval_fn = jax.jit(builder.eval_step) if tc.eval_every and cfg.data.eval_paths else None

    flops_token = _trainable_flops(mc, selection, cfg.data.seq_len)
    peak = tc.peak_tflops * 1e12 or flops_lib.peak_flops(jax.devices()[0].device_kind)
    writer = MetricsWriter(run_dir)
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step",
               disable=not tc.progress or jax.process_index() != 0)
    last: dict[str, Any] = {}
    t_last, tokens_since = time.perf_counter(), 0.0
    step = start
    try:
        with _Preemption() as preempt:
            end = min(tc.steps, tc.stop_at_step) if tc.stop_at_step else tc.steps
            while step < end:
                try:
                    local = next(loader)
                except StopIteration:
                    log.info("data exhausted at step %d", step)
                    break
                batch = loader.global_batch(local, mesh, rules)
                train_state, metrics = step_fn(train_state, frozen, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not metrics.pop("finite"):
                    if not tc.skip_nonfinite:
                        ckpt.wait()
                        raise NonFiniteLossError(
                            f"non-finite loss ({metrics['loss']}) or gradient norm "
                            f"({metrics['grad_norm']}) at step {step + 1}; the state was not "
                            f"updated and the last good checkpoint (step {ckpt.latest_step()}) "
                            f"in {ckpt.directory} is intact. Set train.skip_nonfinite=true to "
                            "skip such steps.")
                    log.warning("skipping step %d: non-finite loss", step + 1)
                step += 1
                tokens_since += cfg.data.batch_size * cfg.data.seq_len
                if tc.log_every and (step % tc.log_every == 0 or step == end):
                    now = time.perf_counter()
                    tps = tokens_since / (now - t_last)
                    metrics["tokens_per_s"] = tps
                    if peak:
                        metrics["mfu"] = tps * flops_token / (peak * jax.device_count())
                    t_last, tokens_since = now, 0.0
                    writer.write(step, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                    tok_s=f"{tps:.0f}")
                last = metrics
                bar.update(1)
                if eval_fn is not None and step % tc.eval_every == 0:
                    writer.write(step, evaluate(cfg, eval_fn, train_state, frozen, mesh, rules,
                                                mc.vocab_size))
                preempted = parallel.any_process(preempt.requested) or ckpt.reached_preemption(step)
                if (tc.save_every and step % tc.save_every == 0) or preempted:
                    ckpt.save(step, train_state, _data_state(loader), wait=preempted)
                if preempted:
                    log.warning("stopped at step %d for preemption; rerun to resume", step)
                    return {"step": step, "preempted": True, **last}
            if ckpt.latest_step() != step:
                ckpt.save(step, train_state, _data_state(loader))
    finally:
        ckpt.wait()
        bar.close()
        writer.close()
    return {"step": step, "preempted": False, **last}


def evaluate(cfg, eval_fn, train_state, frozen, mesh, rules, vocab_size) -> dict[str, float]:
    """Held-out loss (nats per trained token) and bits per byte over `train.eval_batches`
    batches of `data.eval_paths` (always the same batches: the loader starts afresh)."""
    loader = Loader.from_config(cfg.data, paths=list(cfg.data.eval_paths), vocab_size=vocab_size)
    table = _byte_table(loader)
    ce = tokens = nbytes = 0.0
    for _ in range(cfg.train.eval_batches):
        try:
            batch = loader.global_batch(next(loader), mesh, rules)
        except StopIteration:
            break
        out = jax.device_get(eval_fn(train_state["trainable"], frozen, batch, table))
        ce += float(out["ce_sum"])
        tokens += float(out["tokens"])
        nbytes += float(out.get("bytes", 0.0))
    result = {"eval_loss": ce / max(tokens, 1.0), "eval_tokens": tokens}
    if nbytes:
        result["eval_bits_per_byte"] = ce / np.log(2) / nbytes
    return result


def _byte_table(loader: Loader):
    """Bytes per token id of the eval data's tokenizer (None if the tokenizer is not at hand)."""
    from lepjax.data.tokenizer import load_tokenizer

    path = loader.datasets[0].metadata.get("tokenizer", {}).get("path", "")
    try:
        return jnp.asarray(load_tokenizer(path).token_byte_lengths())
    except (FileNotFoundError, ValueError):
        log.warning("eval: tokenizer %r not found; bits per byte not reported", path)
        return None


def load_run(run_dir: str, step: int | None = None, mesh=None,
             rules=parallel.DEFAULT_RULES) -> models.Decoder:
    """The model of a run's latest (or given) checkpoint: frozen + trained parameters merged,
    the multi-token-prediction head dropped. Export it with `lepjax.models.save_hf`/`save`."""
    with open(os.path.join(run_dir, RUN_META)) as f:
        meta = json.load(f)
    mc = models.ModelConfig.from_dict(meta["model"])
    selection = {k: (None if v is None else tuple(v)) for k, v in meta["selection"].items()}
    mesh = mesh or parallel.make_mesh({"fsdp": -1})
    graphdef, abstract = models.io.abstract_model(mc)
    shardings = models.io.state_shardings(abstract, mesh, rules)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    paths = ["/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
             for p, _ in leaves]
    structs = {path: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh)
               for path, (_, v), sh in zip(paths, leaves, jax.tree.leaves(shardings))}
    frozen_abs = {p: structs[p] for p in paths
                  if p not in selection or selection[p] is not None}
    frozen = restore_frozen(run_dir, frozen_abs) or {}
    ckpt = Checkpointer(run_dir, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to load")
    meta_tree = ckpt.state_metadata(step)
    abstract_state = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta_tree,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    state, _ = ckpt.restore(step, abstract_state)
    ckpt.close()
    trainable = {k: v for k, v in state["trainable"].items() if k != "mtp_head"}
    full = P.merge(trainable, frozen, selection)
    full = lora_lib.apply(full, ConfigDict(meta["lora"]), mc.num_layers)
    placed = [jax.device_put(jnp.asarray(full[p], structs[p].dtype), structs[p].sharding)
              for p in paths]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, placed))

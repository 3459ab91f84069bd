"""`lepjax train`: the training loop.

    run_dir/
      resolved_config.json     the config of the first launch; resolved_config.<n>.json: later
                               launches with another config (never replaced)
      run_settings.json        what defines the run, checked on resume (lepjax.train.run)
      run_model.json           what makes the run directory a model (see lepjax.train.run)
      metrics.jsonl            one line per logged step (loss, lr, grad norm, tokens/s, MFU, ...)
      tensorboard/             the same scalars for TensorBoard (when tensorboardX is installed)
      frozen/, checkpoints/    see lepjax.train.checkpoint (and checkpoints_set_aside/)

`train` is the short loop of MaxText's shape: `lepjax.train.state.build` sets everything up
(checked against the abstract model before any weight is read), then batch, step, maybe log,
maybe evaluate, maybe save. A run directory that already has a checkpoint resumes from the newest
one that restores (or `train.resume_step`), once its settings are checked against the run's
(`lepjax.train.run.check_resume`, before any weight is read): the train state and the data
position are restored, so the run continues with exactly the batches and losses it would have
had. SIGTERM (preemption) saves a checkpoint and
exits cleanly.

Evaluation (`train.eval_every`) reports the held-out loss (nats per trained token, as the
training loss) and bits per byte as `lepjax eval` defines it (`lepjax.models.loss`): the
negative log-likelihood of each document's content tokens (BOS / EOS are not scored) over the
UTF-8 bytes of their decoded text. It reads `data.eval_paths` once, in order, from the start,
for at most `train.eval_batches` batches (0 = all).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from lepjax import config as config_lib
from lepjax import files, models, parallel
from lepjax.config import ConfigError
from lepjax.data.loader import Loader, data_section
from lepjax.models import loss as loss_lib
from lepjax.train import flops as flops_lib
from lepjax.train import lora as lora_lib
from lepjax.train import run as run_lib
from lepjax.train import state as state_lib
from lepjax.train import validate_config
from lepjax.train.checkpoint import Checkpointer, abstract_of, restore_frozen, save_frozen
from lepjax.train.metrics import MetricsWriter, Throughput
from lepjax.train.optim import optim_section

log = logging.getLogger("lepjax.train")


class NonFiniteLossError(ValueError):
    """The loss or gradient became NaN/inf (a user error: e.g. the learning rate or the data)."""


def train_section() -> ConfigDict:
    """The `train` section.

    Keys:
      run_dir: the run directory (created; resumed from when it has checkpoints).
      steps: optimiser steps in total (the schedule's length).
      epochs: size the run by passes over data.paths instead (0 = use `steps`): the loader
        reads each dataset this many times (data.num_epochs) and `steps` becomes the number of
        batches that makes, counted once at the start by packing the data (no compute).
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
        Evaluation reads data.eval_paths or the data.eval_fraction split, reports eval_loss,
        eval_accuracy (next-token top-1 on trained tokens) and eval_bits_per_byte, and keeps
        the checkpoint of the best eval_loss beside the last `keep_checkpoints` (run_dir/
        best.json names it).
      resume_step: resume from the checkpoint of this step (0 = the newest one that restores);
        newer checkpoints are moved to run_dir/checkpoints_set_aside/.
      eval_batches: batches per evaluation (0 = the whole of data.eval_paths).
      keep_checkpoints: checkpoints kept.
      async_checkpointing: save in the background.
      skip_nonfinite: on a NaN/inf loss skip the step instead of stopping with an error.
      peak_tflops: per-device peak for MFU (0 = look up the device kind).
      progress: show a progress bar.
      lora: LoRA adapters (rank, alpha, targets, layers; see lepjax.train.lora); with
        lora.rank > 0 use trainable="none" (adapters only) or add e.g. "embed,lm_head".
    """
    return ConfigDict(dict(
        run_dir="", steps=1000, epochs=0, stop_at_step=0, trainable="all", frozen_dtype="", mtp=False, micro_batches=1,
        loss_chunk=1024, z_loss=0.0, log_every=10, save_every=500, eval_every=0, eval_batches=10,
        resume_step=0, keep_checkpoints=3, async_checkpointing=True, skip_nonfinite=False,
        peak_tflops=0.0, progress=True, lora=lora_lib.lora_section()))


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


def _data_state(loader: Loader) -> dict[str, Any]:
    """The loader position of all processes merged (each process runs its own streams)."""
    merged: dict[str, Any] = {"streams": {}}
    for state in parallel.allgather_json(loader.get_state()):
        merged["streams"].update(state["streams"])
    return merged


def _model_tokenizer(path: str):
    """The tokenizer shipped in a model directory, if it has one (None otherwise)."""
    if not path:
        return None
    from lepjax.tokenizer import load_tokenizer

    try:
        return load_tokenizer(path)
    except FileNotFoundError:
        return None


def _resume(ckpt: Checkpointer, run_dir: str, setup: state_lib.TrainSetup, loader: Loader,
            resume_step: int = 0) -> int:
    """Restore the newest intact checkpoint (or `resume_step`'s) into `setup` and `loader`; the
    step to continue from."""
    restored = ckpt.restore_intact(abstract_of(setup.state), resume_step)
    if restored is None:
        return 0
    start, setup.state, data_state = restored
    loader.set_state(data_state)
    restored = restore_frozen(run_dir, abstract_of(setup.frozen))
    if restored is not None:
        setup.frozen = restored
    log.info("resumed %s from step %d", run_dir, start)
    return start


def train(cfg: ConfigDict) -> dict[str, Any]:
    """Run (or resume) the training `cfg` describes; returns the final metrics."""
    validate_config(cfg)
    tc = cfg.train
    run_dir = os.path.abspath(tc.run_dir)
    mesh, rules = parallel.mesh_from_config(cfg.mesh)
    tok = _model_tokenizer(cfg.model.path)
    if tc.epochs:
        cfg.data.num_epochs = tc.epochs
        cfg.train.steps = _epoch_steps(cfg)
    loader = Loader.from_config(cfg.data, vocab_size=state_lib.model_config(cfg.model).vocab_size,
                                fingerprint=tok.fingerprint() if tok else None)
    settings = run_lib.run_settings(cfg, loader.datasets)
    resumed = run_lib.check_resume(run_dir, settings, cfg)  # before any weight is read
    # LM-head rows past the model tokenizer's ids pad the embedding: no probability, no loss.
    setup = state_lib.build(cfg, mesh=mesh, rules=rules,
                            vocab_limit=tok.vocab_size if tok else None)
    ckpt = Checkpointer(run_dir, keep=tc.keep_checkpoints, async_save=tc.async_checkpointing)
    step = _resume(ckpt, run_dir, setup, loader, tc.resume_step)
    run_lib.open_run(run_dir, cfg, setup, settings, resumed)  # once the launch can run
    save_frozen(run_dir, setup.frozen)
    step_fn = setup.train_step()
    eval_fn = setup.eval_step() if tc.eval_every and (
        cfg.data.eval_paths or cfg.data.eval_fraction) else None
    best = _read_best(run_dir)
    meter = Throughput(
        flops_lib.selection_flops_per_token(setup.model.config, setup.selection, cfg.data.seq_len),
        tc.peak_tflops * 1e12 or flops_lib.peak_flops(jax.devices()[0].device_kind),
        jax.device_count())
    end = min(tc.steps, tc.stop_at_step) if tc.stop_at_step else tc.steps
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step",
               disable=not tc.progress or jax.process_index() != 0)
    last: dict[str, Any] = {}
    writer = MetricsWriter(run_dir)
    try:
        with _Preemption() as preempt:
            while step < end:
                try:
                    batch = loader.global_batch(next(loader), mesh, rules)
                except StopIteration:
                    log.info("data exhausted at step %d", step)
                    break
                setup.state, metrics = step_fn(setup.state, setup.frozen, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not metrics.pop("finite"):
                    _non_finite(tc, ckpt, step, metrics)
                step += 1
                meter.add(cfg.data.batch_size * cfg.data.seq_len)
                if tc.log_every and (step % tc.log_every == 0 or step == end):
                    metrics.update(meter.report())
                    writer.write(step, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                    tok_s=f"{metrics['tokens_per_s']:.0f}")
                last = metrics
                bar.update(1)
                if eval_fn is not None and (step % tc.eval_every == 0 or step == end):
                    result = evaluate(cfg, setup, eval_fn)
                    writer.write(step, result)
                    if best is None or result["eval_loss"] < best["eval_loss"]:
                        ckpt.save(step, setup.state, _data_state(loader),
                                  metrics={"eval_loss": result["eval_loss"]})
                        best = {"step": step, **result}
                        _write_best(run_dir, best)
                preempted = parallel.any_process(preempt.requested) or ckpt.reached_preemption(step)
                due = (tc.save_every and step % tc.save_every == 0) or preempted
                if due and ckpt.latest_step() != step:  # not already saved as the best
                    ckpt.save(step, setup.state, _data_state(loader), wait=preempted)
                if preempted:
                    log.warning("stopped at step %d for preemption; rerun to resume", step)
                    return {"step": step, "preempted": True, **last}
            if ckpt.latest_step() != step:
                ckpt.save(step, setup.state, _data_state(loader))
    finally:
        ckpt.wait()
        bar.close()
        writer.close()
    done = {"step": step, "preempted": False, **last}
    if best is not None:
        done.update(best_step=best["step"], best_eval_loss=best["eval_loss"])
    if tc.epochs:
        done["epochs"] = [round(e, 3) for e in loader.epochs()]
    return done


def _epoch_steps(cfg: ConfigDict) -> int:
    """The batches `data.num_epochs` passes over data.paths make (the loader run once without
    compute; the fewest over the processes, as every process takes part in every step)."""
    counter = Loader.from_config(cfg.data, vocab_size=None)
    batches = 0
    for _ in counter:
        batches += 1
    batches = min(parallel.allgather_json(batches))
    if not batches:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: data.paths make no batch of "
                          f"{cfg.data.batch_size} rows")
    log.info("train.epochs=%d: %d steps of %d rows", cfg.train.epochs, batches,
             cfg.data.batch_size)
    return batches


BEST = "best.json"


def _read_best(run_dir: str) -> dict[str, Any] | None:
    """The best evaluation so far of a resumed run (None for a new one)."""
    path = os.path.join(run_dir, BEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_best(run_dir: str, best: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        files.write_json(os.path.join(run_dir, BEST), best)


def _non_finite(tc: Any, ckpt: Checkpointer, step: int, metrics: dict[str, float]) -> None:
    """Stop with an error on a non-finite step (the state was not updated), or warn and skip."""
    if not tc.skip_nonfinite:
        ckpt.wait()
        last = ckpt.latest_step()
        kept = (f"the last good checkpoint (step {last}) in {ckpt.directory} is intact" if last
                is not None else f"there is no checkpoint yet in {ckpt.directory}")
        raise NonFiniteLossError(
            f"non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) at "
            f"step {step + 1}; the state was not updated and {kept}. Set "
            "train.skip_nonfinite=true to skip such steps.")
    log.warning("skipping step %d: non-finite loss", step + 1)


def evaluate(cfg: ConfigDict, setup: state_lib.TrainSetup, eval_fn) -> dict[str, float]:
    """Held-out loss (nats per trained token) and bits per byte (see the module docstring) of
    the current state over `data.eval_paths`, read once from the start (always the same
    batches)."""
    section = ConfigDict(config_lib.to_dict(cfg.data))
    section.update(dict(shuffle=False, num_epochs=1))
    if cfg.data.eval_paths:
        section.eval_fraction = 0.0
        loader = Loader.from_config(section, paths=list(cfg.data.eval_paths),
                                    vocab_size=setup.model.config.vocab_size)
    else:  # the held-out split of data.paths
        loader = Loader.from_config(section, vocab_size=setup.model.config.vocab_size,
                                    split="eval")
    tokenizer = _eval_tokenizer(loader)
    specials = np.asarray(sorted(_special_ids(loader)), np.int32)
    ce = tokens = nats = correct = 0.0
    nbytes, batches = 0, 0
    while not cfg.train.eval_batches or batches < cfg.train.eval_batches:
        try:
            local = next(loader)
        except StopIteration:
            break
        local["score_mask"] = local["loss_mask"] * ~np.isin(local["targets"], specials)
        if tokenizer is not None:
            nbytes += loss_lib.text_bytes(loss_lib.scored_text(tokenizer.decode,
                                                               scored_documents(local)))
        out = jax.device_get(eval_fn(setup.state["trainable"], setup.frozen,
                                     loader.global_batch(local, setup.mesh, setup.rules)))
        correct += float(out["correct"])
        ce += float(out["ce_sum"])
        tokens += float(out["tokens"])
        nats += float(out["score_nats"])
        batches += 1
    result = {"eval_loss": ce / max(tokens, 1.0), "eval_accuracy": correct / max(tokens, 1.0),
              "eval_tokens": tokens}
    nbytes = sum(parallel.allgather_json(nbytes))
    if tokenizer is not None and nbytes:
        result["eval_bits_per_byte"] = loss_lib.bits_per_byte(nats, nbytes)
    return result


def scored_documents(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The scored target tokens (`score_mask`) of each document (segment) of a packed batch."""
    docs = []
    for targets, mask, seg in zip(batch["targets"], batch["score_mask"], batch["segment_ids"]):
        for s in np.unique(seg[seg > 0]):
            docs.append(targets[(seg == s) & (mask > 0)])
    return docs


def _special_ids(loader: Loader) -> set[int]:
    """BOS / EOS ids of the eval data's tokenizer (from the datasets' metadata)."""
    out: set[int] = set()
    for ds in loader.datasets:
        info = ds.metadata.get("tokenizer", {})
        out |= {info.get("bos_id"), info.get("eos_id")} - {None}
    return out


def _eval_tokenizer(loader: Loader):
    """The tokenizer the eval data was prepared with (decodes scored tokens for bits per byte),
    or None (with a warning) when it is not at hand or the datasets disagree."""
    from lepjax.tokenizer import load_tokenizer

    infos = [ds.metadata.get("tokenizer", {}) for ds in loader.datasets]
    if len({i.get("fingerprint") for i in infos}) > 1:
        log.warning("eval: data.eval_paths were prepared with different tokenizers; bits per "
                    "byte not reported")
        return None
    path = infos[0].get("path", "")
    try:
        return load_tokenizer(path)
    except (FileNotFoundError, ValueError):
        log.warning("eval: tokenizer %r not found; bits per byte not reported", path)
        return None

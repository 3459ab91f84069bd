"""Training: `lepjax train`, the continual pre-training loop every recipe runs through.

    state.py    everything before the first step (selection, LoRA, MTP head, optimiser, shardings)
    step.py     the pure loss / train / eval steps (the LM-head loss is lepjax.models.loss)
    loop.py     the short loop (`default_config`, `train`) and held-out evaluation
    run.py      a run directory as a model (`load_run`, `export_run`)
    metrics.py  metrics.jsonl / TensorBoard, throughput and MFU
    params.py, lora.py, optim.py, checkpoint.py, flops.py: selection grammar and parameter paths,
                adapters, AdamW and schedules, orbax checkpoints, the FLOP count
"""

from __future__ import annotations

import functools
from typing import Any

FROZEN_DTYPES = ("", "float32", "bfloat16", "float16")


@functools.cache
def _decoder_paths() -> tuple[str, ...]:
    """Parameter paths every lepjax decoder has (untied LM head included); no weights."""
    from lepjax.models.config import get_preset
    from lepjax.train.state import abstract_model

    return tuple(abstract_model(get_preset("tiny_llama3").replace(tie_word_embeddings=False)).paths)


def validate_config(cfg: Any) -> None:
    """Model-free check of a `lepjax train` config (or of the train sections an `adapt` config
    composes): `optim.schedule` and ranges, the `train.trainable` grammar and parameter names,
    `train.frozen_dtype`, LoRA targets and layers, and the compute settings of `model`.
    Raises `lepjax.config.ConfigError` naming the key and the closest valid values; reads no
    weights (layer indices are checked against the model's layer count before loading, by
    `lepjax.train.state.build`)."""
    from lepjax.config import ConfigError, check_choice
    from lepjax.train import lora, optim, params

    if "model" in cfg:
        from lepjax.models import validate_compute

        validate_compute(cfg.model)
    if "optim" in cfg:
        optim.check_section(cfg.optim)
    if "train" not in cfg:
        return
    tc = cfg.train
    if not tc.run_dir:
        raise ConfigError("train.run_dir is not set (the run directory to write or resume)")
    params.check_spec(tc.trainable, list(_decoder_paths()))
    check_choice("train.frozen_dtype", tc.frozen_dtype, FROZEN_DTYPES)
    lora.check_section(tc.lora)
    if tc.micro_batches < 1:
        raise ConfigError(f"train.micro_batches={tc.micro_batches}: expected 1 or more")
    if tc.resume_step < 0:
        raise ConfigError(f"train.resume_step={tc.resume_step}: expected a checkpoint's step, or "
                          "0 for the newest one that restores")
    if tc.loss_chunk < 0 or tc.steps < 1:
        raise ConfigError(f"train.loss_chunk={tc.loss_chunk} / train.steps={tc.steps}: expected "
                          "a chunk >= 0 (0 = whole rows) and at least one step")
    if tc.get("epochs", 0):
        if int(tc.epochs) != tc.epochs or tc.epochs < 0:
            raise ConfigError(f"train.epochs={tc.epochs}: expected a whole number of passes")
        if "data" in cfg and cfg.data.num_epochs not in (0, tc.epochs):
            raise ConfigError(f"train.epochs={tc.epochs} and data.num_epochs="
                              f"{cfg.data.num_epochs} disagree: set one")
    if "data" in cfg and cfg.data.get("eval_fraction", 0.0):
        f = cfg.data.eval_fraction
        if not 0 < f < 1:
            raise ConfigError(f"data.eval_fraction={f}: expected 0 < f < 1")
        if cfg.data.eval_paths:
            raise ConfigError("data.eval_fraction and data.eval_paths both name held-out data: "
                              "set one")
        if not tc.eval_every:
            raise ConfigError(f"data.eval_fraction={f} holds records out of training, but "
                              "train.eval_every=0 never evaluates them: set train.eval_every")

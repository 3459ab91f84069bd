"""FIAT student tuning: LoRA on the attention and MLP projections of the instruction-tuned student
(θ_τ), trained on the FIAT prompt/target shards (input I_τ + x + r, loss on y only).

    lepjax train --config=configs/fiat/lora_tune.py \
        --config.model.path=STUDENT_INSTRUCT_DIR --config.data.paths=runs/fiat/train/tokens \
        --config.train.run_dir=runs/fiat/student

FIAT's regime is O(100)-O(1000) labelled examples, so the run is sized by passes over the
records (`train.epochs`), not by a fixed step count: the loader reads the records that many
times and the step count (and the schedule's length) follows from the data. A validation
split of the records (`data.eval_fraction`, or held-out shards in `data.eval_paths`) is
evaluated every `train.eval_every` steps and at the end: eval_loss, eval_accuracy (next-token
top-1 on the target tokens) and bits per byte go to metrics.jsonl, and the checkpoint with the
lowest eval_loss is kept beside the latest ones (run_dir/best.json names its step; export it
with `lepjax convert RUN_DIR DST --step N`).

The loss covers only target tokens because the shards are prompt/target records (their loss mask
is 1 on y + EOS). The run directory is what `lepjax augment fiat-infer` takes as
fiat.infer.student (the adapters are merged on load).

Keys: the `lepjax train` config (lepjax.train.loop.default_config):
  model.path: the instruction-tuned student (override); model.dtype: compute dtype.
  data.paths: the tokens/ directories of `lepjax augment fiat` (override).
  data.seq_len, batch_size: 2048-token rows, equal to fiat.seq_len of configs/fiat/augment.py
    (records are packed several to a row; none is longer than a row), 16 rows per step.
  data.eval_fraction: share of the records held out for validation (0.1).
  optim.lr, warmup_fraction, weight_decay: AdamW, warmup over the first 10% of the steps, then
    cosine (lepjax.train.optim).
  train.trainable="none" + train.lora.rank/alpha/targets/layers: adapters only, on q,k,v,o and
    gate,up,down of every layer.
  train.epochs: passes over the training records (3); train.eval_every: steps between
    validations; train.save_every, run_dir: checkpoints, output (override run_dir).
"""

from lepjax.train.loop import default_config


def get_config():
    cfg = default_config()
    cfg.model.path = ""  # the instruction-tuned student: override
    cfg.model.dtype = "bfloat16"
    cfg.data.paths = ()  # runs/fiat/<task>/tokens: override
    cfg.data.seq_len = 2048  # = fiat.seq_len (configs/fiat/augment.py)
    cfg.data.batch_size = 16
    cfg.data.eval_fraction = 0.1
    cfg.optim.lr = 2e-4
    cfg.optim.warmup_steps = 0  # a tenth of the steps, whatever the data size makes them
    cfg.optim.warmup_fraction = 0.1
    cfg.optim.weight_decay = 0.0
    cfg.train.epochs = 3
    cfg.train.eval_every = 20
    cfg.train.eval_batches = 0  # the whole validation split
    cfg.train.save_every = 100
    cfg.train.trainable = "none"
    cfg.train.lora.rank = 16
    cfg.train.lora.alpha = 32.0
    cfg.train.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
    cfg.train.lora.layers = ""
    return cfg

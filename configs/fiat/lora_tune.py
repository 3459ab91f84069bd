"""FIAT student tuning: LoRA on the attention and MLP projections of the instruction-tuned student
(θ_τ), trained on the FIAT prompt/target shards (input I_τ + x + r, loss on y only).

    lepjax train --config=configs/fiat/lora_tune.py \
        --config.model.path=STUDENT_INSTRUCT_DIR --config.data.paths=runs/fiat/train/tokens \
        --config.train.run_dir=runs/fiat/student

The loss covers only target tokens because the shards are prompt/target records (their loss mask
is 1 on y + EOS). The run directory is what `lepjax augment fiat-infer` takes as
fiat.infer.student (the adapters are merged on load).

Keys: the `lepjax train` config (lepjax.train.loop.default_config):
  model.path: the instruction-tuned student (override); model.dtype: compute dtype.
  data.paths: the tokens/ directories of `lepjax augment fiat` (override); data.seq_len, batch_size.
  optim.lr, warmup_steps, weight_decay: AdamW with warmup + cosine (lepjax.train.optim).
  train.trainable="none" + train.lora.rank/alpha/targets/layers: adapters only, on q,k,v,o and
    gate,up,down of every layer.
  train.steps, save_every, run_dir: length, checkpoints, output (override run_dir).
"""

from lepjax.train.loop import default_config


def get_config():
    cfg = default_config()
    cfg.model.path = ""  # the instruction-tuned student: override
    cfg.model.dtype = "bfloat16"
    cfg.data.paths = ()  # runs/fiat/<task>/tokens: override
    cfg.data.seq_len = 2048
    cfg.data.batch_size = 32
    cfg.optim.lr = 2e-4
    cfg.optim.warmup_steps = 50
    cfg.optim.weight_decay = 0.0
    cfg.train.steps = 2000
    cfg.train.save_every = 500
    cfg.train.trainable = "none"
    cfg.train.lora.rank = 16
    cfg.train.lora.alpha = 32.0
    cfg.train.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
    cfg.train.lora.layers = ""
    return cfg

"""Full continual pre-training of Llama-3-8B on prepared shards of a new language.

    lepjax prepare --config=configs/prepare.py --config.tokenizer=/models/Meta-Llama-3-8B \
        --config.inputs=/data/ru/train.txt --config.output_dir=/data/ru/shards
    lepjax train --config=configs/train/llama3_8b_cpt.py --config.model.path=/models/Meta-Llama-3-8B \
        --config.data.paths=/data/ru/shards --config.train.run_dir=/runs/llama3_8b_cpt

Every parameter trains (`train.trainable=all`): float32 master weights and AdamW moments,
bfloat16 compute, full rematerialisation, batch 256 x 4,096 tokens (1M tokens a step), cosine
schedule with 1% warmup, peak lr 3e-5 (continual pre-training keeps it low to limit forgetting).
The mesh is FSDP over every device. Set train.steps to your corpus: tokens / 1,048,576.

Memory per device, measured with `lepjax compile` (README, "Will it fit?"; mesh fsdp = device
count, remat_policy full): v5e-256 7.02 GiB of 16 and v5p-128 16.14 of 95 as set here. On v4-32
(16 rows a chip) libtpu reports out of memory (39.58G of temporaries > 30.75G HBM), and on
8xH100 (32 rows a GPU) the total is 78.91 GiB of 80, over the 75% JAX's allocator takes: there,
add --config.train.micro_batches=4 (the same global batch in 4 accumulated micro-batches), which
measures 24.26 GiB on v4-32 and 35.16 GiB on 8xH100 (a hand-written H100 target config; XLA
reports no GPU out-of-memory, the total is compared with the device memory here).
"""

from lepjax.train.loop import default_config


def get_config():
    cfg = default_config()
    cfg.model.preset = "llama3_8b"
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.data.seq_len = 4096
    cfg.data.batch_size = 256
    cfg.optim.lr = 3e-5
    cfg.optim.schedule = "cosine"
    cfg.optim.warmup_fraction = 0.01
    cfg.optim.weight_decay = 0.1
    cfg.train.trainable = "all"
    cfg.train.steps = 10000
    cfg.train.save_every = 500
    return cfg

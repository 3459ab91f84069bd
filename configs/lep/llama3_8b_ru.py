"""LEP for Llama-3-8B -> Russian (Tikhomirov & Chernyshev 2024 settings).

    lepjax adapt --config=configs/lep/llama3_8b_ru.py \
        --config.base=/models/Meta-Llama-3-8B --config.instruct=/models/Meta-Llama-3-8B-Instruct \
        --config.target_text=/data/ru/train.txt --config.heldout_text=/data/ru/heldout.txt \
        --config.run_dir=/runs/llama3_ru

Paper settings: embedding-only LAPT with lr 2e-4, batch 256 x 1,024 tokens, weight decay 0.1,
cosine schedule, 100 warmup steps, one epoch (set train.steps to one epoch of your corpus:
tokens / 262,144), LEP `conversion`. Reported Russian characters per token: 2.89 -> 3.78 with the
extended vocabulary. The number of new tokens is not fixed by the paper (check): 10,000 here,
merges after the original ones, `align` initialisation. Paths are overrides. Keys: lepjax.adapt
(optim.*, train.*, data.*, mesh.* are `lepjax train`'s; extend.*, init.* are `lepjax vocab`'s).

Memory per device of the train stage, measured with `lepjax compile --preset=llama3_8b` (README,
"Will it fit?"): global batch 256 x 1,024, remat_policy full, FSDP over every device (mesh
fsdp = device count), bfloat16 compute, float32 embeddings + LM head and their AdamW moments:
v5e-256 5.27 GiB of 16, v5p-128 8.34 of 95, v4-32 21.79 of 32, 8xH100 32.12 of 80 (a
hand-written H100 target config; XLA reports no GPU out-of-memory, the total is compared here).
"""

from lepjax.adapt import default_config


def get_config():
    cfg = default_config()
    cfg.extend.k = 10000
    cfg.extend.priority = "after"
    cfg.extend.aux_vocab_size = 50000
    cfg.init.method = "align"
    cfg.data.seq_len = 1024
    cfg.data.batch_size = 256
    cfg.optim.lr = 2e-4
    cfg.optim.schedule = "cosine"
    cfg.optim.warmup_steps = 100
    cfg.optim.weight_decay = 0.1
    cfg.train.steps = 10000
    cfg.train.trainable = "embeddings"
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.propagate.method = "conversion"
    cfg.export.format = "hf"
    cfg.eval.max_examples = 5000
    return cfg

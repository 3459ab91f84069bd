"""LEP for Mistral-7B-v0.1 -> Russian (Tikhomirov & Chernyshev 2024 settings).

    lepjax adapt --config=configs/lep/mistral_7b_ru.py \
        --config.base=/models/Mistral-7B-v0.1 --config.instruct=/models/Mistral-7B-Instruct-v0.1 \
        --config.target_text=/data/ru/train.txt --config.heldout_text=/data/ru/heldout.txt \
        --config.run_dir=/runs/mistral_ru

Paper settings: embedding-only LAPT with lr 1e-4, batch 256 x 1,024 tokens, weight decay 0.1,
cosine schedule, 100 warmup steps, one epoch (set train.steps to one epoch of your corpus:
tokens / 262,144), LEP `conversion`. Reported Russian characters per token: 2.44 -> 3.77 with the
extended vocabulary. The number of new tokens is not fixed by the paper (check): 10,000 here,
merges after the original ones, `align` initialisation. Paths are overrides. Keys: lepjax.adapt.
"""

from lepjax.adapt import default_config


def get_config():
    cfg = default_config()
    cfg.vocab.k = 10000
    cfg.vocab.priority = "after"
    cfg.vocab.aux_vocab_size = 50000
    cfg.vocab.init_method = "align"
    cfg.data.seq_len = 1024
    cfg.data.batch_size = 256
    cfg.train.lr = 1e-4
    cfg.train.warmup_steps = 100
    cfg.train.weight_decay = 0.1
    cfg.train.steps = 10000
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.propagate.method = "conversion"
    cfg.export.format = "hf"
    cfg.eval.max_lines = 5000
    return cfg

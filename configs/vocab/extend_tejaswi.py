"""Vocabulary extension after Tejaswi et al. 2024: many new tokens, merged after the source's.

    lepjax vocab extend --config=configs/vocab/extend_tejaswi.py \
        --config.tokenizer=/models/Mistral-7B-v0.1 --config.corpus=/data/ru/train.txt \
        --config.output_dir=runs/vocab/mistral_ru_10k
    lepjax vocab init-embeddings --config=configs/vocab/extend_tejaswi.py \
        --config.tokenizer=/models/Mistral-7B-v0.1 --config.corpus=/data/ru/train.txt \
        --config.init.checkpoint=/models/Mistral-7B-v0.1 \
        --config.init.tokenizer=runs/vocab/mistral_ru_10k --config.output_dir=runs/mistral_ru_10k

Keys: see lepjax.vocab.config (tokenizer, corpus, output_dir, extend.*, init.*, report.*).
"""

from lepjax.vocab.config import default_config


def get_config():
    cfg = default_config()
    cfg.extend.k = 10000
    cfg.extend.aux_vocab_size = 50000
    cfg.extend.priority = "after"
    cfg.init.method = "align"
    return cfg

"""Vocabulary replacement as in LEP's BPE variant: a new BPE vocabulary of the source's size.

    lepjax vocab replace --config=configs/vocab/replace_lep.py \
        --config.tokenizer=/models/Meta-Llama-3-8B --config.corpus=/data/ru/*.txt \
        --config.output_dir=runs/vocab/llama3_ru_bpe
    lepjax vocab init-embeddings --config=configs/vocab/replace_lep.py ... \
        --config.init.checkpoint=/models/Meta-Llama-3-8B --config.init.tokenizer=runs/vocab/llama3_ru_bpe

Keys: see lepjax.vocab.config (tokenizer, corpus, output_dir, replace.*, init.*, report.*).
"""

from lepjax.vocab.config import default_config


def get_config():
    cfg = default_config()
    cfg.replace.vocab_size = 0  # the source's size
    cfg.replace.model = "bpe"
    cfg.init.method = "mean"
    return cfg

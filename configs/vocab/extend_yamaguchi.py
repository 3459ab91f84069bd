"""Low-resource vocabulary extension after Yamaguchi et al. 2024: 100 new tokens merged first.

    lepjax vocab extend --config=configs/vocab/extend_yamaguchi.py \
        --config.tokenizer=/models/Llama-2-7b --config.corpus=/data/target/30k_sentences.txt \
        --config.output_dir=runs/vocab/llama2_k100

Keys: see lepjax.vocab.config (tokenizer, corpus, output_dir, extend.*, init.*, report.*).
"""

from lepjax.vocab.config import default_config


def get_config():
    cfg = default_config()
    cfg.max_lines = 30000
    cfg.extend.k = 100
    cfg.extend.aux_vocab_size = 50000
    cfg.extend.priority = "before"
    cfg.init.method = "mean"
    return cfg

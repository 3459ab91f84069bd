"""Vocabulary adaptation: tokenizer adapters, extension/replacement, embedding initialisation, reports.

    from lepjax.vocab import load_tokenizer, extend, save_tokenizer, init_embeddings
    src = load_tokenizer("tokenizer.model")
    new, summary = extend(src, ["ru.txt"], k=1000, priority="after")
    save_tokenizer(new, "out/tok", summary)
"""

from lepjax.vocab.checkpoint import init_embeddings
from lepjax.vocab.expand import extend, replace, select_new_tokens
from lepjax.vocab.tokenizer import VocabTokenizer, load_tokenizer
from lepjax.vocab.writer import save_tokenizer

__all__ = ["VocabTokenizer", "extend", "init_embeddings", "load_tokenizer", "replace",
           "save_tokenizer", "select_new_tokens"]

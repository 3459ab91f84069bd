"""Vocabulary adaptation: the editable BPE vocabulary, extension/replacement, embedding init, reports.

    from lepjax.vocab import load_vocab, extend, save_tokenizer, init_embeddings
    src = load_vocab("tokenizer.model")
    new, summary = extend(src, ["ru.txt"], k=1000, priority="after")
    save_tokenizer(new, "out/tok", summary)
"""

from lepjax.vocab.checkpoint import init_embeddings
from lepjax.vocab.config import validate_config
from lepjax.vocab.expand import extend, replace, select_new_tokens
from lepjax.vocab.tokenizer import VocabTokenizer, load_vocab
from lepjax.vocab.writer import save_tokenizer

__all__ = ["VocabTokenizer", "extend", "init_embeddings", "load_vocab", "replace",
           "save_tokenizer", "select_new_tokens", "validate_config"]

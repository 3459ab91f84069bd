"""Vocabulary extension (new pieces appended to a source tokenizer) and replacement.

Extension (Yamaguchi et al. 2024; Tejaswi et al. 2024): train an auxiliary tokenizer of the
source's kind on target text, walk its merges in rank order and, for each merge (a, b), take any
of a, b, a+b not in the source vocabulary until k new pieces are collected. New ids are
V, V+1, ..., V+k-1; source ids never change. Their merges go before the source's (priority
`before`, Yamaguchi) or after them (`after`, Tejaswi); with `after`, text in which no adjacent
pair of source tokens forms a new piece encodes exactly as before.

`token_filter` (a regular expression, e.g. `[А-Яа-яЁё]` for Russian) keeps only pieces whose
text matches it; without it, pieces such as Latin fragments the auxiliary tokenizer learnt from
foreign words in the target text can change how source-language text is split even with `after`
(the papers do not filter; the choice is a config key).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from lepjax.tokenizer.convert import BYTE_LEVEL
from lepjax.vocab.config import PRIORITIES
from lepjax.vocab.tokenizer import VocabTokenizer
from lepjax.vocab.train import auxiliary_merges, train_replacement

log = logging.getLogger("lepjax.vocab")


def _reachable(piece: str, kind: str, vocab) -> bool:
    """Whether BPE can form `piece` (a single symbol, or some split into two known pieces)."""
    if len(piece) == 1:
        return True
    return any(piece[:i] in vocab and piece[i:] in vocab for i in range(1, len(piece)))


def select_new_tokens(source: VocabTokenizer, merges: Sequence[tuple[str, str]], k: int,
                      token_filter: str = "", aux_vocab_size: int | None = None) -> list[str]:
    """The first k pieces not in `source`, walking `merges` in rank order (a, b, then a+b).

    Pieces the tokenizer could never produce (no split into two known pieces) and pieces whose
    text does not match `token_filter` are skipped.
    """
    if k <= 0:
        raise ValueError(f"k (number of new tokens) must be positive, got {k}")
    pattern = re.compile(token_filter) if token_filter else None
    known = source.piece_to_id
    chosen: dict[str, None] = {}

    class _Vocab:
        def __contains__(self, p: str) -> bool:
            return p in known or p in chosen

    vocab = _Vocab()
    for a, b in merges:
        for piece in (a, b, a + b):
            if piece in vocab:
                continue
            if source.kind != BYTE_LEVEL and piece.startswith("<0x") and piece.endswith(">"):
                continue
            if pattern is not None and not pattern.search(source.surface(piece)):
                continue
            if not _reachable(piece, source.kind, vocab):
                continue
            chosen[piece] = None
            if len(chosen) == k:
                return list(chosen)
    size = f" (vocabulary {aux_vocab_size})" if aux_vocab_size else ""
    raise ValueError(
        f"k={k} is larger than the {len(chosen)} new tokens the auxiliary tokenizer{size} offers "
        f"beyond the source vocabulary{' matching token_filter ' + repr(token_filter) if pattern else ''}"
        f"; lower extend.k, raise extend.aux_vocab_size or give more text")


def extend(source: VocabTokenizer, files: Sequence[str], k: int, *, priority: str = "after",
           aux_vocab_size: int = 50000, token_filter: str = "", max_lines: int = 0,
           min_frequency: int = 2, progress: bool = True) -> tuple[VocabTokenizer, dict[str, Any]]:
    """Extend `source` with k pieces learnt from `files`; returns (new tokenizer, summary)."""
    if priority not in PRIORITIES:
        raise ValueError(f"extend.priority must be 'before' or 'after', got {priority!r}")
    if k > aux_vocab_size:
        raise ValueError(f"k={k} is larger than the auxiliary vocabulary (aux_vocab_size="
                         f"{aux_vocab_size}); lower extend.k or raise extend.aux_vocab_size")
    t0 = time.perf_counter()
    merges, aux_size = auxiliary_merges(source, files, aux_vocab_size, max_lines, min_frequency,
                                        progress)
    t_train = time.perf_counter() - t0
    new = select_new_tokens(source, merges, k, token_filter, aux_size)
    t1 = time.perf_counter()
    out = source.with_new_pieces(new, priority)
    out.hf  # build (and validate) the tokenizers object now
    V = source.vocab_size
    summary = {"action": "extend", "source": source.source, "source_vocab_size": V,
               "vocab_size": out.vocab_size, "k": k, "new_ids": [V, V + k], "priority": priority,
               "aux_vocab_size": aux_size, "token_filter": token_filter,
               "new_tokens": new, "seconds_train_aux": round(t_train, 2),
               "seconds_build": round(time.perf_counter() - t1, 2)}
    log.info("extended %d -> %d ids (aux tokenizer %d pieces, %.1fs)", V, out.vocab_size,
             aux_size, t_train)
    return out, summary


def replace(source: VocabTokenizer, files: Sequence[str], vocab_size: int = 0, *,
            model_type: str = "bpe", max_lines: int = 0, min_frequency: int = 2,
            progress: bool = True) -> tuple[VocabTokenizer, dict[str, Any]]:
    """A new vocabulary of `vocab_size` ids (0 = the source's) learnt from `files`."""
    vocab_size = vocab_size or source.vocab_size
    if vocab_size <= len(source.special) + 256:
        raise ValueError(f"replace.vocab_size={vocab_size} is too small: the special tokens and "
                         "the 256 byte pieces alone take more")
    t0 = time.perf_counter()
    out = train_replacement(source, files, vocab_size, max_lines, model_type, min_frequency,
                            progress)
    out.source = source.source
    shared = sum(1 for p in out.pieces if p in source.piece_to_id)
    summary = {"action": "replace", "source": source.source, "source_vocab_size": source.vocab_size,
               "vocab_size": out.vocab_size, "model": model_type, "shared_pieces": shared,
               "seconds_train": round(time.perf_counter() - t0, 2)}
    return out, summary

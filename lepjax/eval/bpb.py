"""Bits per byte of a model on raw text or prepared shards, comparable across tokenizers.

Each document (a non-blank line of a text file, read as `lepjax prepare` reads it, or one record
of a prepared dataset) is encoded with the model's tokenizer, BOS first; every token after BOS is
scored, and the summed cross-entropy (nats) is divided by ln 2 and by the UTF-8 bytes (or the
characters) of the documents themselves (`lepjax.models.loss.bits_per_byte`, the definition
training's evaluation uses too), so two models with different tokenizers are measured on the same
denominator. Per-token perplexity is reported too, but only compares models that share
a tokenizer.

Shards are scored as the text they hold, so a text file and the shards prepared from it give the
same numbers: a record's BOS/EOS are dropped, its other tokens are scored after the model's BOS
exactly as the file's line would be, and its bytes are those of its decoded text. Shards prepared
with another tokenizer than the model's are decoded with theirs (from metadata.json) and
re-encoded with the model's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from lepjax.eval.loglik import Scorer
from lepjax.models import loss as loss_lib


def _summary(nats: float, ntok: int, nbytes: int, nchars: int, docs: int) -> dict[str, float]:
    bits = nats / math.log(2)
    return {"bits_per_byte": loss_lib.bits_per_byte(nats, nbytes), "bits_per_char": bits / nchars,
            "nats_per_token": nats / max(ntok, 1), "perplexity": math.exp(nats / max(ntok, 1)),
            "tokens": ntok, "bytes": nbytes, "chars": nchars, "documents": docs}


def _score_documents(scorer: Scorer, bos_id: int | None, docs: Sequence[Sequence[int]],
                     texts: Sequence[str], progress: bool, desc: str) -> dict[str, float]:
    if not docs:
        raise ValueError(f"{desc}: no text to evaluate")
    bos = [bos_id] if bos_id is not None else []
    seqs = [bos + [int(t) for t in d] for d in docs]
    start = 1
    keep = [i for i, s in enumerate(seqs) if len(s) > start]
    results = scorer.score([seqs[i] for i in keep], [start] * len(keep), progress=progress,
                           desc=desc)
    nats = -sum(r[0] for r in results)
    ntok = sum(len(seqs[i]) - start for i in keep)
    nbytes = loss_lib.text_bytes(texts)
    nchars = sum(len(t) for t in texts)
    if nbytes == 0:
        raise ValueError(f"{desc}: the documents hold no text")
    return _summary(nats, ntok, nbytes, nchars, len(docs))


def _scorer(model, tokenizer, scorer: Scorer | None, batch_size: int, max_len: int) -> Scorer:
    """`scorer`, or one for `model` whose LM-head rows past the tokenizer's ids (embedding
    padding) get no probability."""
    return scorer or Scorer(model, batch_size=batch_size, max_len=max_len,
                            vocab_limit=tokenizer.vocab_size)


def bits_per_byte(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                  max_len: int = 8192, scorer: Scorer | None = None, progress: bool = False,
                  desc: str = "bits per byte") -> dict[str, float]:
    """{"bits_per_byte", "bits_per_char", "nats_per_token", "perplexity", "tokens", "bytes", ...}.

    `tokenizer` is a `lepjax.tokenizer.Tokenizer`; blank texts are skipped. Documents
    must fit `max_len` tokens (a ValueError says when one does not). `scorer` reuses a `Scorer`
    (and its compiled shapes) instead of building one.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{desc}: no text to evaluate")
    docs = tokenizer.encode(list(texts))
    return _score_documents(_scorer(model, tokenizer, scorer, batch_size, max_len),
                            tokenizer.bos_id, docs, texts, progress, desc)


def read_text_documents(path: str, mode: str = "line", max_documents: int = 0) -> list[str]:
    """The documents of a text file, exactly as `lepjax prepare` reads them."""
    from lepjax.data.sources import read_text

    if not os.path.isfile(path):
        raise FileNotFoundError(f"held-out text file {path!r} does not exist")
    out = []
    for ex in read_text(path, mode):
        out.append(ex["text"])
        if max_documents and len(out) >= max_documents:
            break
    return out


def read_shard_documents(path: str, max_documents: int = 0) -> tuple[list[np.ndarray], dict]:
    """(token ids of each record in shard order, dataset metadata) of a prepared dataset."""
    from array_record.python.array_record_module import ArrayRecordReader

    from lepjax.data import records

    ds = records.open_dataset(path)
    out: list[np.ndarray] = []
    for shard, info in zip(ds.shard_paths, ds.metadata["shards"]):
        reader = ArrayRecordReader(shard)
        n = info["records"] if not max_documents else min(info["records"], max_documents - len(out))
        for blob in reader.read(list(range(n))):
            rec = records.decode(blob)
            out.append(rec["tokens"][rec["loss_mask"] > 0] if ds.kind == "prompt_target"
                       else rec["tokens"])
        reader.close()
        if max_documents and len(out) >= max_documents:
            break
    return out, ds.metadata


def shard_bits_per_byte(model, tokenizer, path: str, *, batch_size: int = 16,
                        max_len: int = 8192, max_documents: int = 0, scorer: Scorer | None = None,
                        progress: bool = False) -> dict[str, float]:
    """Bits per byte on a prepared dataset directory (records scored as their text, see above).

    For prompt/target records only the target tokens count, as their own document.
    """
    from lepjax.data.records import DataError
    from lepjax.tokenizer import load_tokenizer

    docs, meta = read_shard_documents(path, max_documents)
    info = meta.get("tokenizer", {})
    specials = {info.get("bos_id"), info.get("eos_id")} - {None}
    content = [[int(t) for t in d if int(t) not in specials] for d in docs]
    desc = f"bits per byte {os.path.basename(os.path.normpath(path))}"
    if info.get("fingerprint") == tokenizer.fingerprint():
        texts = loss_lib.scored_text(tokenizer.decode, content)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        return _score_documents(_scorer(model, tokenizer, scorer, batch_size, max_len),
                                tokenizer.bos_id, [content[i] for i in keep],
                                [texts[i] for i in keep], progress, desc)
    if not info.get("path") or not os.path.exists(info["path"]):
        raise DataError(f"{path}: prepared with another tokenizer than the model's "
                        f"({info.get('path')!r}, fingerprint {info.get('fingerprint')}), which "
                        "is not there to decode the records with")
    theirs = load_tokenizer(info["path"])
    texts = loss_lib.scored_text(theirs.decode, content)
    return bits_per_byte(model, tokenizer, texts, batch_size=batch_size, max_len=max_len,
                         scorer=scorer, progress=progress, desc=desc)


def heldout_bits_per_byte(model, tokenizer, path: str, *, text_mode: str = "line",
                          max_documents: int = 0, **kw) -> dict[str, float]:
    """Bits per byte on a text file or a prepared dataset directory (holding metadata.json)."""
    if os.path.isdir(path):
        return shard_bits_per_byte(model, tokenizer, path, max_documents=max_documents, **kw)
    texts = read_text_documents(path, text_mode, max_documents)
    return bits_per_byte(model, tokenizer, texts,
                         desc=f"bits per byte {os.path.basename(path)}", **kw)

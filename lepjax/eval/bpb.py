"""Bits per byte of a model on raw text, comparable across tokenizers.

Each line is encoded with the model's tokenizer (BOS first), every token after BOS is scored,
and the summed cross-entropy (nats) is divided by ln 2 and by the UTF-8 bytes of the lines
themselves, so two models with different tokenizers are measured on the same denominator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def bits_per_byte(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                  max_len: int = 8192) -> dict[str, float]:
    """{"bits_per_byte", "bits_per_char", "nats_per_token", "tokens", "bytes", "chars"}.

    `tokenizer` is a `lepjax.data.tokenizer.TextTokenizer`. Lines must fit `max_len` tokens (a
    ValueError says when one does not).
    """
    from lepjax.train.step import chunked_cross_entropy

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no text to evaluate")
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    encoded = [bos + ids for ids in tokenizer.encode_batch(list(texts))]
    longest = max(len(e) for e in encoded)
    if longest > max_len:
        raise ValueError(f"a line has {longest} tokens, more than max_len={max_len}")
    graphdef, state = nnx.split(model)

    @jax.jit
    def score(state, tokens, targets, mask):
        m = nnx.merge(graphdef, state)
        hidden = m.hidden_states(tokens)
        ce, _, _ = chunked_cross_entropy(hidden, m.lm_head_weight(), targets, mask, 0)
        return ce

    T = -(-longest // 64) * 64
    nats, ntok = 0.0, 0
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        tokens = np.zeros((batch_size, T), np.int32)
        mask = np.zeros((batch_size, T), np.float32)
        for r, ids in enumerate(chunk):
            tokens[r, :len(ids)] = ids
            mask[r, :len(ids) - 1] = 1
        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        nats += float(score(state, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(mask)))
        ntok += int(mask.sum())
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    nchars = sum(len(t) for t in texts)
    return {"bits_per_byte": nats / math.log(2) / nbytes, "bits_per_char": nats / math.log(2) / nchars,
            "nats_per_token": nats / max(ntok, 1), "tokens": ntok, "bytes": nbytes, "chars": nchars}

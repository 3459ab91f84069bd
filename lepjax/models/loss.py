"""The LM-head loss, one for training and scoring, and the one definition of bits per byte.

`token_scores` projects final hidden states through the LM head and returns, per position, the
log-probability of the target token, the log-partition (logsumexp, for z-loss) and whether the
target is the model's greedy choice. Logits are formed in float32 `chunk` positions at a time
inside a `lax.scan` under `jax.checkpoint`, so the float32 logits of a whole batch never exist at
once (a 128K vocabulary would need 64 GB for 64 x 2,048 tokens) and the backward pass recomputes
one chunk at a time. Reductions (sum over a loss mask, per-sequence sums) are the caller's.

Rows of the LM head at or beyond `vocab_limit` (the zero rows that pad the embedding to a multiple
of 128) get a logit of -inf: they take no probability mass, so they never enter a loss or a score.

    scores = token_scores(hidden, model.lm_head_weight(), targets, chunk=512, vocab_limit=32000)
    loss = -(scores.logprob * mask).sum() / mask.sum()

Bits per byte (`bits_per_byte`) is the summed negative log-likelihood of the scored tokens, in
bits, divided by the UTF-8 bytes of the text those tokens decode to (`text_bytes`): the
tokenizer-independent measure of the literature (The Pile, Gao et al. 2020), so models with
different tokenizers are compared on the same denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenScores(NamedTuple):
    """Per-position results of `token_scores`, each [batch, length]."""

    logprob: jax.Array  # float32 log p(target | prefix)
    logsumexp: jax.Array  # float32 log-partition of the logits (z-loss is its square)
    greedy: jax.Array  # bool: the target is the argmax of the logits


def chunk_size(length: int, limit: int) -> int:
    """The largest divisor of `length` that is at most `limit` (all of it when `limit` <= 0)."""
    if limit <= 0 or limit >= length:
        return length
    return next(c for c in range(limit, 0, -1) if length % c == 0)


def token_scores(hidden: jax.Array, head: jax.Array, targets: jax.Array, *, chunk: int = 1024,
                 vocab_limit: int | None = None) -> TokenScores:
    """Log-probabilities of `targets` under the LM head, chunked over the sequence.

    hidden [b, t, d] (compute dtype), head [d, v], targets [b, t] int. `chunk` bounds the positions
    whose float32 logits exist at once (the largest divisor of t not above it is used).
    `vocab_limit`: head columns >= it are padding and get -inf logits (None = none are).
    """
    b, t, _ = hidden.shape
    vocab = head.shape[-1]
    if vocab_limit is not None and not 0 < vocab_limit <= vocab:
        raise ValueError(f"vocab_limit={vocab_limit} outside (0, {vocab}] (the LM head's rows)")
    c = chunk_size(t, chunk)
    n = t // c
    real = None if vocab_limit is None or vocab_limit == vocab else jnp.arange(vocab) < vocab_limit

    def one(_, xs):
        h, y = xs
        logits = jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype),
                            preferred_element_type=jnp.float32)
        if real is not None:
            logits = jnp.where(real, logits, -jnp.inf)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        greedy = jnp.argmax(logits, axis=-1) == y
        return None, (picked - lse, lse, greedy)

    one = jax.checkpoint(one, prevent_cse=False)
    split = lambda x: jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)  # noqa: E731
    merge = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, t)  # noqa: E731
    _, (logprob, lse, greedy) = jax.lax.scan(one, None, (split(hidden), split(targets)))
    return TokenScores(merge(logprob), merge(lse), merge(greedy))


def text_bytes(texts: Iterable[str]) -> int:
    """UTF-8 bytes of the scored text: the denominator of bits per byte."""
    return sum(len(t.encode("utf-8")) for t in texts)


def scored_text(decode: Callable[[Sequence[int]], str],
                documents: Iterable[Sequence[int]]) -> list[str]:
    """The text each document's scored tokens stand for (each document decoded at once, so a
    character split over several byte tokens counts once)."""
    return [decode([int(x) for x in d]) for d in documents]


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """Summed negative log-likelihood `nats` of the scored tokens, in bits per UTF-8 byte of the
    text they decode to."""
    if num_bytes <= 0:
        raise ValueError("bits per byte of no text: the scored tokens decode to 0 bytes")
    return nats / math.log(2) / num_bytes

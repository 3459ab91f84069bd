"""Batched, length-bucketed log-likelihood of token sequences (the core of every scored metric).

A request is a token sequence and the index of its first scored token: the summed log-probability
of tokens `start..n-1`, each predicted from the tokens before it, and whether every one of them is
the model's greedy choice. Requests are sorted by length and run in batches of `batch_size` rows
padded to a multiple of `length_bucket`, so a handful of compiled shapes serve any request set.

Padding goes on the right (causal attention never sees it) or on the left (padding is its own
segment, positions restart at the first real token); either way a request's score does not depend
on the batch it lands in. Log-probabilities come from the LM-head loss training uses
(`lepjax.models.loss.token_scores`: float32 logits formed `chunk` positions at a time, so a large
vocabulary never materialises [batch, length, vocab] at once; head rows at or beyond
`vocab_limit`, the embedding's padding, get no probability).

    scorer = Scorer(model, batch_size=16)
    logprob, greedy = scorer.score([[1, 5, 9, 3]], starts=[2])[0]   # log p(9, 3 | 1, 5)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lepjax import parallel
from lepjax.models.loss import token_scores

log = logging.getLogger("lepjax.eval")


class Scorer:
    """Scores (tokens, start) requests with one model; compiles once per padded batch shape."""

    def __init__(self, model, *, mesh=None, rules=parallel.DEFAULT_RULES, batch_size: int = 16,
                 length_bucket: int = 64, padding: str = "right", max_len: int = 0,
                 chunk: int = 256, vocab_limit: int | None = None):
        if padding not in ("right", "left"):
            raise ValueError(f"padding {padding!r}; expected 'right' or 'left'")
        if batch_size <= 0 or length_bucket <= 0:
            raise ValueError("batch_size and length_bucket must be positive")
        self.graphdef, self.state = nnx.split(model)
        self.mesh, self.rules = mesh, rules
        self.batch_size, self.length_bucket, self.padding = batch_size, length_bucket, padding
        self.max_len = max_len or model.config.max_position_embeddings
        self.chunk, self.vocab_limit = chunk, vocab_limit
        # Replicated results: every process of a multi-process job reads all of them.
        replicated = None if mesh is None else jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec())
        self._score = jax.jit(self._score_fn, out_shardings=replicated)

    def _score_fn(self, state, tokens, targets, mask, segment_ids, positions):
        with parallel.activation_sharding(self.mesh, self.rules):
            m = nnx.merge(self.graphdef, state)
            hidden = m.hidden_states(tokens, segment_ids, positions)
            head = m.lm_head_weight()
        scores = token_scores(hidden, head, targets, chunk=self.chunk,
                              vocab_limit=self.vocab_limit)
        total = (scores.logprob * mask).sum(-1)
        missed = (~scores.greedy & (mask > 0)).any(-1)
        return total, ~missed

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
              progress: bool = False, desc: str = "score") -> list[tuple[float, bool]]:
        """(summed log-prob of tokens[start:], all greedy) per request, in request order."""
        from tqdm import tqdm

        if len(sequences) != len(starts):
            raise ValueError(f"{len(sequences)} sequences but {len(starts)} start indices")
        for i, (seq, s) in enumerate(zip(sequences, starts)):
            if not 1 <= s <= len(seq):
                raise ValueError(f"request {i}: start {s} outside [1, {len(seq)}] (a scored token "
                                 "needs at least one token before it)")
            if len(seq) > self.max_len:
                raise ValueError(f"request {i} has {len(seq)} tokens, more than max_len="
                                 f"{self.max_len}")
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[tuple[float, bool] | None] = [None] * len(sequences)
        bar = tqdm(total=len(sequences), desc=desc, unit="ex", disable=not progress)
        start_time = time.perf_counter()
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            total, greedy = self._batch([sequences[i] for i in idx], [starts[i] for i in idx])
            for r, i in enumerate(idx):
                out[i] = (float(total[r]), bool(greedy[r]))
            bar.update(len(idx))
            bar.set_postfix(ex_s=f"{(b + len(idx)) / (time.perf_counter() - start_time):.1f}")
        bar.close()
        seconds = max(time.perf_counter() - start_time, 1e-9)
        log.info("%s: scored %d sequences in %.1f s (%.1f examples/s)", desc, len(sequences),
                 seconds, len(sequences) / seconds)
        return out

    def _batch(self, seqs, starts):
        rows = self.batch_size
        T = -(-max(len(s) for s in seqs) // self.length_bucket) * self.length_bucket
        tokens = np.zeros((rows, T), np.int32)
        targets = np.zeros((rows, T), np.int32)
        mask = np.zeros((rows, T), np.float32)
        valid = np.zeros((rows, T), bool)
        for r, (seq, s) in enumerate(zip(seqs, starts)):
            n = len(seq)
            off = T - n if self.padding == "left" else 0
            tokens[r, off:off + n] = seq
            targets[r, off:off + n - 1] = seq[1:]
            mask[r, off + s - 1:off + n - 1] = 1  # position p predicts token p + 1
            valid[r, off:off + n] = True
        if self.padding == "left":
            segment_ids = jnp.asarray(valid.astype(np.int32))
            positions = jnp.asarray(np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32))
        else:
            segment_ids = None
            positions = jnp.asarray(np.broadcast_to(np.arange(T, dtype=np.int32), (rows, T)))
        total, greedy = self._score(self.state, jnp.asarray(tokens), jnp.asarray(targets),
                                    jnp.asarray(mask), segment_ids, positions)
        return np.asarray(jax.device_get(total)), np.asarray(jax.device_get(greedy))


def split_continuation(tokenizer, context: str, continuation: str,
                       add_bos: bool = True) -> tuple[list[int], int]:
    """(tokens of context + continuation, index of the first continuation token).

    The whole string is encoded at once and the continuation is what follows the context's own
    tokens, so a word boundary is tokenised as it is in running text; where the context's tokens
    are not a prefix of the whole (a merge across the boundary), the two parts are encoded
    separately. Trailing spaces of the context move to the continuation first.
    """
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    bos = tokenizer.bos_prefix(add_bos)
    ctx_ids, whole = tokenizer.encode([stripped, stripped + continuation])
    if whole[:len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
        ids = bos + whole
    else:
        ids = bos + ctx_ids + tokenizer.encode(continuation)
    start = len(bos) + len(ctx_ids)
    if start == 0:
        raise ValueError("an empty context needs a BOS token to condition on")
    if start >= len(ids):
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    return ids, start


def continuation_logliks(scorer: Scorer, tokenizer, requests: Sequence[tuple[str, str]], *,
                         max_len: int = 0, progress: bool = False,
                         desc: str = "loglik") -> list[tuple[float, bool]]:
    """(log p(continuation | context), greedy) for (context, continuation) text pairs.

    Contexts longer than `max_len` tokens (default: the scorer's) lose tokens on the left; the
    BOS token stays.
    """
    max_len = max_len or scorer.max_len
    seqs, starts = [], []
    for context, continuation in requests:
        ids, start = split_continuation(tokenizer, context, continuation)
        cut = len(ids) - max_len
        if cut > 0:
            keep = 1 if tokenizer.bos_id is not None else 0
            if start - cut <= keep:
                raise ValueError(f"continuation {continuation[:40]!r} alone exceeds max_len="
                                 f"{max_len} tokens")
            ids, start = ids[:keep] + ids[keep + cut:], start - cut
        seqs.append(ids)
        starts.append(start)
    return scorer.score(seqs, starts, progress=progress, desc=desc)

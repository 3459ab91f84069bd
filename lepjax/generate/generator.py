"""Batched decoding with a KV cache: greedy, temperature, top-k, top-p, EOS and stop strings.

Prompts are sorted by length and decoded in batches whose prompt length is padded (on the left)
to a multiple of `length_bucket`, so a few compiled shapes serve any prompt set. The model's
parameters stay sharded as loaded (FSDP by default), so a teacher larger than one device decodes
over the whole mesh.

The attention kernel is the model's run option (`model.compute.attention`): the prompt is
prefilled with it and each step runs with it where it supports one-token queries (see
`lepjax.models.attention.decode_kernels`); a kernel that cannot run here is refused when the
`Generator` is built. Sampling settings (temperature, top-k, top-p) are traced values: one
compiled program serves every setting. Embedding rows at or past `vocab_limit` (padding rows of
a vocabulary rounded up to a multiple of 128) are never sampled.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lepjax import parallel
from lepjax.models.attention import decode_kernels

log = logging.getLogger("lepjax.generate")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy; top_k 0 and top_p 1 = no truncation."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    eos_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()


def sample(logits: jax.Array, key: jax.Array, temperature: Any, top_k: Any, top_p: Any,
           vocab_limit: int | None = None) -> jax.Array:
    """Next tokens [b] from logits [b, vocab].

    `temperature`, `top_k`, `top_p` may be traced scalars (no recompilation per setting):
    temperature <= 0 is greedy, top_k 0 and top_p >= 1 keep every token. Ties at the top-k /
    top-p threshold are kept. Columns at or past `vocab_limit` (padding rows) get -inf first.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if vocab_limit is not None and vocab_limit < vocab:
        logits = jnp.where(jnp.arange(vocab) < vocab_limit, logits, -jnp.inf)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    ordered = -jnp.sort(-scaled, axis=-1)  # descending
    kth = jnp.take(ordered, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)
    kth = jnp.where(top_k > 0, kth, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ahead of each token
    keep = jnp.maximum(jnp.sum(before < top_p, axis=-1), 1)  # at least the most likely token
    pth = jnp.take_along_axis(ordered, keep[:, None] - 1, axis=-1)[:, 0]
    pth = jnp.where(top_p >= 1.0, -jnp.inf, pth)
    threshold = jnp.maximum(kth, pth)[:, None]
    drawn = jax.random.categorical(key, jnp.where(scaled < threshold, -jnp.inf, scaled), axis=-1)
    return jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)


@dataclasses.dataclass
class Completion:
    """Generated token ids (EOS excluded), the text if a tokenizer was given, and why it ended."""

    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"  # "eos" | "stop" | "length"


# Called after every look at the tokens on the host with (index of the prompt, its completion
# so far): how streaming sees tokens as they come. `text` is filled when a tokenizer is given.
OnUpdate = Callable[[int, Completion], None]


class Generator:
    """Decodes prompts (token id lists) with one model, compiling per batch shape."""

    def __init__(self, model, *, mesh=None, rules=parallel.DEFAULT_RULES, batch_size: int = 8,
                 length_bucket: int = 64, pad_id: int = 0, steps_per_sync: int = 16,
                 vocab_limit: int | None = None):
        """`steps_per_sync`: decoding steps run on the device (one `lax.scan`) between looks at
        the tokens on the host for EOS and stop strings; 1 = a host round trip every token.
        `vocab_limit`: the real vocabulary size (the tokenizer's); rows past it are padding and
        never generated (None: every embedding row is a token)."""
        if steps_per_sync < 1:
            raise ValueError(f"steps_per_sync must be >= 1, got {steps_per_sync}")
        if batch_size < 1 or length_bucket < 1:
            raise ValueError(f"batch_size and length_bucket must be >= 1, got {batch_size}, "
                             f"{length_bucket}")
        rows = model.config.vocab_size
        if vocab_limit is not None and not 0 < vocab_limit <= rows:
            raise ValueError(f"vocab_limit={vocab_limit} must lie in [1, {rows}] (the model's "
                             "embedding rows)")
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        c = model.compute
        self.kernels = decode_kernels(c.attention, c.dtype, length_bucket=length_bucket,
                                      head_dim=model.config.head_dim, platform=platform)
        log.info("decoding with attention=%s: prefill %s, steps %s", c.attention,
                 self.kernels["prefill"], self.kernels["step"])
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.mesh, self.rules = mesh, rules
        self.batch_size, self.length_bucket, self.pad_id = batch_size, length_bucket, pad_id
        self.steps_per_sync = steps_per_sync
        self.vocab_limit = vocab_limit
        self._prefill = jax.jit(self._prefill_fn)
        self._steps = jax.jit(self._steps_fn, static_argnums=(10,), donate_argnums=(2,))

    def _model(self, state):
        return nnx.merge(self.graphdef, state)

    def _prefill_fn(self, state, tokens, positions, segment_ids, cache, key, temperature, top_k,
                    top_p):
        """The prompt through the model: the first new token [b] and the filled cache."""
        with parallel.activation_sharding(self.mesh, self.rules):
            logits, cache = self._model(state).prefill(tokens, positions, segment_ids, cache,
                                                       self.kernels["prefill"])
        token = sample(logits[:, -1], key, temperature, top_k, top_p, self.vocab_limit)
        return token, cache

    def _steps_fn(self, state, token, cache, position, index, kv_valid, key, temperature, top_k,
                  top_p, steps):
        """`steps` decoding steps on the device: the tokens [b, steps] and the carried state."""
        model = self._model(state)

        def body(carry, _):
            token, cache, position, index, kv_valid, key = carry
            key, sub = jax.random.split(key)
            kv_valid = kv_valid.at[:, index].set(True)
            with parallel.activation_sharding(self.mesh, self.rules):
                logits, cache = model.decode(token[:, None], position[:, None], cache, index,
                                             kv_valid, self.kernels["step"])
            nxt = sample(logits[:, 0], sub, temperature, top_k, top_p, self.vocab_limit)
            return (nxt, cache, position + 1, index + 1, kv_valid, key), nxt

        carry, tokens = jax.lax.scan(body, (token, cache, position, index, kv_valid, key), None,
                                     length=steps)
        return carry, tokens.T

    def compiled_programs(self) -> int:
        """How many programs the prefill and step functions have compiled so far."""
        return self._prefill._cache_size() + self._steps._cache_size()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                 tokenizer: Any = None, progress: bool = False,
                 on_update: OnUpdate | None = None) -> list[Completion]:
        """Completions of `prompts`, in their order. `tokenizer` (with `decode`) enables `stop`
        and the texts; `on_update(i, completion)` sees prompt i's tokens as they come."""
        if params.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode with")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        start, generated = time.perf_counter(), 0
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            update = None if on_update is None else (
                lambda r, c, idx=idx: on_update(idx[r], c))
            for i, completion in zip(idx, self._batch([prompts[i] for i in idx], params,
                                                      tokenizer, params.seed + b, update)):
                out[i] = completion
                generated += len(completion.tokens)
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{generated / (time.perf_counter() - start):.0f}")
        bar.close()
        log.info("generated %d tokens for %d prompts at %.0f tokens/s", generated, len(prompts),
                 generated / max(time.perf_counter() - start, 1e-9))
        return out

    def _batch(self, prompts, params: SamplingParams, tokenizer, seed: int,
               on_update: OnUpdate | None) -> list[Completion]:
        n = len(prompts)
        rows = self.batch_size if n > 1 else 1  # one compiled batch shape (single prompts: 1)
        longest = max(1, max(len(p) for p in prompts))
        P = -(-longest // self.length_bucket) * self.length_bucket
        K = max(1, min(self.steps_per_sync, params.max_new_tokens - 1))
        chunks = -(-(params.max_new_tokens - 1) // K)  # device calls after the prefill's token
        S = P + -(-(1 + chunks * K) // self.length_bucket) * self.length_bucket
        tokens = np.full((rows, P), self.pad_id, np.int32)
        valid = np.zeros((rows, S), bool)
        for r, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError("empty prompt")
            tokens[r, P - len(p):] = p
            valid[r, P - len(p):P] = True
        valid[n:, P - 1] = True  # filler rows: one valid slot so their softmax is defined
        positions = np.maximum(np.cumsum(valid[:, :P], axis=1) - 1, 0).astype(np.int32)
        sampling = (jnp.float32(params.temperature), jnp.int32(params.top_k),
                    jnp.float32(params.top_p))
        cache = self._model(self.state).init_cache(rows, S)
        key, sub = jax.random.split(jax.random.PRNGKey(seed))
        token, cache = self._prefill(self.state, tokens, positions,
                                     valid[:, :P].astype(np.int32), cache, sub, *sampling)
        carry = (token, cache, jnp.asarray(positions[:, -1] + 1), jnp.int32(P),
                 jnp.asarray(valid), key)
        eos = set(params.eos_ids)
        results = [Completion([]) for _ in range(n)]
        done = [False] * n
        block = np.asarray(jax.device_get(token))[:, None]
        produced = 0
        while True:
            fresh = set()
            for column in block.T:
                for r in range(n):
                    if done[r]:
                        continue
                    t = int(column[r])
                    if t in eos:
                        done[r], results[r].finish_reason = True, "eos"
                        fresh.add(r)
                        continue
                    results[r].tokens.append(t)
                    fresh.add(r)
                    if params.stop:
                        text = tokenizer.decode(results[r].tokens)
                        if any(s in text for s in params.stop):
                            done[r], results[r].finish_reason = True, "stop"
                produced += 1
                if produced == params.max_new_tokens:
                    break
            finished = all(done) or produced >= params.max_new_tokens
            if on_update is not None:
                for r in sorted(fresh):
                    self._finish_text(results[r], tokenizer, params, final=finished or done[r])
                    on_update(r, results[r])
            if finished:
                break
            carry, block = self._steps(self.state, *carry, *sampling, K)
            block = np.asarray(jax.device_get(block))
        for c in results:
            self._finish_text(c, tokenizer, params, final=True)
        return results

    @staticmethod
    def _finish_text(c: Completion, tokenizer, params: SamplingParams, final: bool) -> None:
        """The completion's text: cut before a stop string; while still decoding, without the
        last few characters that a stop string (or an incomplete byte sequence) may yet claim."""
        if tokenizer is None:
            return
        c.text = tokenizer.decode(c.tokens)
        if c.finish_reason == "stop":
            c.text = c.text[:min(c.text.index(s) for s in params.stop if s in c.text)]
        elif not final:
            hold = max((len(s) - 1 for s in params.stop), default=0)
            text = c.text.rstrip("\ufffd")
            c.text = text[:len(text) - hold] if hold else text

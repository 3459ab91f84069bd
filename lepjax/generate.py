"""Batched decoding with a KV cache: greedy, temperature, top-k, top-p, EOS and stop strings.

Prompts are sorted by length and decoded in batches whose prompt length is padded (on the left)
to a multiple of `length_bucket`, so a few compiled shapes serve any prompt set. The model's
parameters stay sharded as loaded (FSDP by default), so a teacher larger than one device decodes
over the whole mesh.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lepjax import parallel

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


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float):
    """Next tokens [b] from logits [b, vocab]."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        drop_sorted = (cum - jax.nn.softmax(sorted_logits, axis=-1)) >= top_p  # keep >= 1 token
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
            drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class Completion:
    """Generated token ids (EOS excluded), the text if a tokenizer was given, and why it ended."""

    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"  # "eos" | "stop" | "length"


class Generator:
    """Decodes prompts (token id lists) with one model, compiling per batch shape."""

    def __init__(self, model, *, mesh=None, rules=parallel.DEFAULT_RULES, batch_size: int = 8,
                 length_bucket: int = 64, pad_id: int = 0, steps_per_sync: int = 16):
        """`steps_per_sync`: decoding steps run on the device (one `lax.scan`) between looks at
        the tokens on the host for EOS and stop strings; 1 = a host round trip every token."""
        if steps_per_sync < 1:
            raise ValueError(f"steps_per_sync must be >= 1, got {steps_per_sync}")
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.mesh, self.rules = mesh, rules
        self.batch_size, self.length_bucket, self.pad_id = batch_size, length_bucket, pad_id
        self.steps_per_sync = steps_per_sync
        self._prefill = jax.jit(self._prefill_fn)
        self._steps = jax.jit(self._steps_fn, static_argnums=(7, 8, 9, 10), donate_argnums=(2,))

    def _model(self, state):
        return nnx.merge(self.graphdef, state)

    def _prefill_fn(self, state, tokens, positions, kv_valid, cache):
        with parallel.activation_sharding(self.mesh, self.rules):
            logits, cache = self._model(state).decode(tokens, positions, cache, 0, kv_valid)
        return logits[:, -1], cache

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
                                             kv_valid)
            nxt = sample(logits[:, 0], sub, temperature, top_k, top_p)
            return (nxt, cache, position + 1, index + 1, kv_valid, key), nxt

        carry, tokens = jax.lax.scan(body, (token, cache, position, index, kv_valid, key), None,
                                     length=steps)
        return carry, tokens.T

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                 tokenizer: Any = None, progress: bool = False) -> list[Completion]:
        """Completions of `prompts`, in their order. `tokenizer` (with `decode`) enables `stop`."""
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
            for i, completion in zip(idx, self._batch([prompts[i] for i in idx], params,
                                                      tokenizer, seed=params.seed + b)):
                out[i] = completion
                generated += len(completion.tokens)
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{generated / (time.perf_counter() - start):.0f}")
        bar.close()
        log.info("generated %d tokens for %d prompts at %.0f tokens/s", generated, len(prompts),
                 generated / max(time.perf_counter() - start, 1e-9))
        return out

    def _batch(self, prompts, params: SamplingParams, tokenizer, seed: int) -> list[Completion]:
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
        cache = self._model(self.state).init_cache(rows, S)
        logits, cache = self._prefill(self.state, tokens, positions, jnp.asarray(valid), cache)
        key = jax.random.PRNGKey(seed)
        key, sub = jax.random.split(key)
        token = sample(logits, sub, params.temperature, params.top_k, params.top_p)
        carry = (token, cache, jnp.asarray(positions[:, -1] + 1), jnp.int32(P),
                 jnp.asarray(valid), key)
        eos = set(params.eos_ids)
        results = [Completion([]) for _ in range(n)]
        done = [False] * n
        block = np.asarray(jax.device_get(token))[:, None]
        produced = 0
        while True:
            for column in block.T:
                for r in range(n):
                    if done[r]:
                        continue
                    t = int(column[r])
                    if t in eos:
                        done[r], results[r].finish_reason = True, "eos"
                        continue
                    results[r].tokens.append(t)
                    if params.stop:
                        text = tokenizer.decode(results[r].tokens)
                        if any(s in text for s in params.stop):
                            done[r], results[r].finish_reason = True, "stop"
                produced += 1
                if produced == params.max_new_tokens:
                    break
            if all(done) or produced >= params.max_new_tokens:
                break
            carry, block = self._steps(self.state, *carry, params.temperature, params.top_k,
                                       params.top_p, K)
            block = np.asarray(jax.device_get(block))
        if tokenizer is not None:
            for c in results:
                c.text = tokenizer.decode(c.tokens)
                if c.finish_reason == "stop":
                    cut = min(c.text.index(s) for s in params.stop if s in c.text)
                    c.text = c.text[:cut]
        return results

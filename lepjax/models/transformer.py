"""The decoder: embed -> scanned decoder layers -> final RMSNorm -> LM head.

Llama 2, Llama 3 and Mistral are configurations of this one module. Layer parameters are stacked
along a leading `layers` axis and applied with `jax.lax.scan`, under the remat policy of the run's
`Compute` (the architecture is `model.config`, the compute settings `model.compute`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lepjax.models.attention import Attention
from lepjax.models.config import Compute, ModelConfig
from lepjax.models.layers import MLP, RMSNorm, param
from lepjax.parallel import constrain

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, compute: Compute, *, rngs: nnx.Rngs,
                 stack: int | None = None):
        c, pd = config, compute.param_dtype
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, pd, stack=stack)
        self.attn = Attention(c, compute, rngs=rngs, stack=stack)
        self.mlp_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, pd, stack=stack)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, std=c.initializer_range,
                       param_dtype=pd, dtype=compute.dtype, rngs=rngs, stack=stack)

    def __call__(self, x, positions, segment_ids):
        x = x + self.attn(self.attn_norm(x), positions, segment_ids)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "embed"))

    def prefill(self, x, positions, segment_ids, cache_k, cache_v, kernel):
        """One layer over a prompt, filling the KV cache (see `Attention.prefill`)."""
        a, cache_k, cache_v = self.attn.prefill(self.attn_norm(x), positions, segment_ids,
                                                cache_k, cache_v, kernel)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "embed")), cache_k, cache_v

    def decode(self, x, positions, cache_k, cache_v, index, kv_valid, kernel):
        """One layer over new tokens with a KV cache (see `Attention.decode`)."""
        a, cache_k, cache_v = self.attn.decode(self.attn_norm(x), positions, cache_k, cache_v,
                                               index, kv_valid, kernel)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "embed")), cache_k, cache_v


class Decoder(nnx.Module):
    """Decoder-only transformer. `model(tokens)` returns float32 logits [batch, length, vocab].

    `config` is the architecture; `compute` how this run computes it (default: bfloat16
    activations, float32 parameters, the platform's attention kernel, full remat).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, compute: Compute = Compute()):
        c, pd = config, compute.param_dtype
        self.config, self.compute = config, compute
        self.embed = param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"),
                           pd, std=c.initializer_range)
        self.layers = DecoderLayer(c, compute, rngs=rngs, stack=c.num_layers)
        self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, pd)
        if not c.tie_word_embeddings:
            self.lm_head = param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"),
                                 pd, std=c.initializer_range)

    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, length, vocab] in float32.

        `segment_ids` [batch, length] restrict attention to tokens of the same document in a packed
        row; `positions` [batch, length] are the rotary positions (default: 0..length-1; for packed
        rows they restart at 0 in each document).
        """
        return self.logits(self.hidden_states(tokens, segment_ids, positions))

    def hidden_states(self, tokens, segment_ids=None, positions=None) -> jax.Array:
        """Final-norm hidden states [batch, length, embed] in the compute dtype."""
        c = self.compute
        tokens = jnp.asarray(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(c.dtype)
        x = constrain(x, ("batch", "length", "embed"))

        graphdef, layer_state = nnx.split(self.layers)

        def body(h, state):
            return nnx.merge(graphdef, state)(h, positions, segment_ids), None

        if c.remat_policy != "none":
            body = jax.checkpoint(body, policy=REMAT[c.remat_policy], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, layer_state)
        return self.final_norm(x)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict[str, jax.Array]:
        """An empty KV cache: k, v [layers, batch, length, kv_heads, head_dim]."""
        c = self.config
        shape = (c.num_layers, batch, length, c.num_kv_heads, c.head_dim)
        zeros = jnp.zeros(shape, dtype or self.compute.dtype)
        return {"k": zeros, "v": zeros}

    def prefill(self, tokens, positions, segment_ids, cache, kernel: str = "xla"):
        """Logits [b, t, vocab] of a left-padded prompt and the cache holding its keys/values.

        `segment_ids` [b, t]: 1 on prompt tokens, 0 on padding (padding never reaches a prompt
        token); the prompt fills cache slots 0..t-1. `kernel`: see `attention.decode_kernels`.
        """
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute.dtype)
        graphdef, layer_state = nnx.split(self.layers)

        def body(h, xs):
            state, ck, cv = xs
            h, ck, cv = nnx.merge(graphdef, state).prefill(h, positions, segment_ids, ck, cv,
                                                           kernel)
            return h, (ck, cv)

        x, (k, v) = jax.lax.scan(body, x, (layer_state, cache["k"], cache["v"]))
        return self.logits(self.final_norm(x)), {"k": k, "v": v}

    def decode(self, tokens, positions, cache, index, kv_valid, kernel: str = "xla"):
        """Logits [b, t, vocab] of new tokens and the updated cache.

        The new tokens occupy cache slots index..index+t; `kv_valid` [b, S] marks slots that hold
        real tokens (False for padding). After `prefill`, each decoding step passes one token.
        `kernel`: `xla` or `cudnn` (see `attention.cache_attention`).
        """
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute.dtype)
        graphdef, layer_state = nnx.split(self.layers)

        def body(h, xs):
            state, ck, cv = xs
            h, ck, cv = nnx.merge(graphdef, state).decode(h, positions, ck, cv, index, kv_valid,
                                                          kernel)
            return h, (ck, cv)

        x, (k, v) = jax.lax.scan(body, x, (layer_state, cache["k"], cache["v"]))
        return self.logits(self.final_norm(x)), {"k": k, "v": v}

    def lm_head_weight(self) -> jax.Array:
        """The output projection [embed, vocab] (the transposed embedding when tied)."""
        return self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Project hidden states to float32 logits."""
        w = self.lm_head_weight().astype(self.compute.dtype)
        out = jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "vocab"))

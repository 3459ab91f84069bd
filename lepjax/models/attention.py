"""Grouped-query attention with a choice of kernel.

Kernels, picked by the run's `Compute.attention`:
- `xla`: plain einsum + float32 softmax; the reference, runs everywhere.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, fused on NVIDIA GPUs
  (bf16/fp16 only). Packed rows use a dense segment mask.
- `splash`: the Pallas splash-attention kernel for TPUs (segment ids handled natively).
- `auto`: cudnn on GPU with a 16-bit dtype, splash on TPU, xla otherwise.

The platform is that of the devices of the active mesh (`parallel.activation_sharding`), not the
host's backend: a train step traced for a TPU mesh on a CPU machine (`lepjax compile`) picks, and
compiles, the kernel the pod will run. Without a mesh it is `jax.default_backend()`.

All kernels implement the same mask: causal, restricted to the token's own segment (packed rows),
and, with a sliding window w, to the last w positions including itself (Mistral).

Decoding has two phases with different shapes: the prefill (the left-padded prompt attending to
itself, a self-attention like training's) and the steps (one new token attending to the KV cache
under a mask). `decode_kernels` says which kernel each phase uses for a chosen `attention`, or
refuses a choice that cannot run those shapes on this platform.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lepjax.models.config import Compute, ModelConfig
from lepjax.models.layers import apply_rope, param, rope_inv_freq
from lepjax import parallel
from lepjax.parallel import constrain


def mesh_platform() -> str:
    """The platform ('tpu', 'gpu', 'cpu') of the active mesh's devices, else of the host."""
    ctx = parallel.current_activation_sharding()
    if ctx is None:
        return jax.default_backend()
    return ctx[0].devices.flat[0].platform


def resolve_implementation(name: str, dtype: str, platform: str | None = None) -> str:
    """The kernel `auto` stands for on `platform` (default: `mesh_platform()`); other names are
    returned as given."""
    if name != "auto":
        return name
    platform = platform or mesh_platform()
    if platform == "gpu" and jnp.dtype(dtype).itemsize == 2:
        return "cudnn"
    if platform == "tpu":
        return "splash"
    return "xla"


def decode_kernels(attention: str, dtype: str, *, length_bucket: int, head_dim: int,
                   platform: str | None = None) -> dict[str, str]:
    """The kernels decoding runs with: {"prefill": name, "step": name}, or a ValueError.

    - xla: the masked einsum for both phases.
    - cudnn: cuDNN fused attention for both (the steps with the cache mask); needs an NVIDIA GPU,
      a 16-bit dtype and a head dim that is a multiple of 8 up to 256.
    - splash: the splash kernel for the prefill, which needs prompt lengths padded to a multiple
      of 128 (`length_bucket`); splash has no single-query kernel, so the steps use xla. Off TPU
      splash runs in Pallas interpret mode (slow; what the CPU tests check).
    - auto: cudnn on a GPU with a 16-bit dtype, splash prefill on TPU when `length_bucket` is a
      multiple of 128, xla otherwise.
    """
    platform = platform or mesh_platform()
    if attention == "auto":
        if platform == "gpu" and jnp.dtype(dtype).itemsize == 2 and _cudnn_head_dim(head_dim):
            return {"prefill": "cudnn", "step": "cudnn"}
        if platform == "tpu" and length_bucket % 128 == 0:
            return {"prefill": "splash", "step": "xla"}
        return {"prefill": "xla", "step": "xla"}
    if attention == "xla":
        return {"prefill": "xla", "step": "xla"}
    if attention == "cudnn":
        if platform != "gpu":
            raise ValueError(f"attention='cudnn' needs an NVIDIA GPU, but this backend is "
                             f"{platform!r}; use model.attention=auto or xla")
        if jnp.dtype(dtype).itemsize != 2:
            raise ValueError(f"attention='cudnn' computes in bfloat16 or float16, not {dtype}; set "
                             "model.dtype=bfloat16 or use model.attention=xla")
        if not _cudnn_head_dim(head_dim):
            raise ValueError(f"attention='cudnn' needs a head dim that is a multiple of 8 up to "
                             f"256, this model's is {head_dim}; use model.attention=xla")
        return {"prefill": "cudnn", "step": "cudnn"}
    if attention == "splash":
        if length_bucket % 128:
            raise ValueError(f"attention='splash' prefills prompts padded to a multiple of 128 "
                             f"tokens, but length_bucket={length_bucket}; set length_bucket to a "
                             "multiple of 128 or use model.attention=xla")
        return {"prefill": "splash", "step": "xla"}
    raise ValueError(f"attention={attention!r}; expected one of auto, xla, cudnn, splash")


def _cudnn_head_dim(head_dim: int) -> bool:
    return head_dim % 8 == 0 and head_dim <= 256


def attention_mask(
    segment_ids: jax.Array | None, length: int, sliding_window: int | None, batch: int = 1
) -> jax.Array:
    """Boolean mask [batch, q, kv]: causal, same segment, within the sliding window."""
    q = jnp.arange(length)[:, None]
    k = jnp.arange(length)[None, :]
    mask = k <= q
    if sliding_window is not None:
        mask &= k > q - sliding_window
    mask = jnp.broadcast_to(mask, (batch, length, length))
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask


def masked_attention(q, k, v, mask):
    """Grouped-query attention under an explicit boolean mask [b, t, s] (True = attend).

    q: [b, t, h, d]; k, v: [b, s, kv, d] -> [b, t, h, d]; float32 logits and softmax.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (d**-0.5)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def cache_attention(q, k, v, mask, kernel: str = "xla"):
    """Attention of new queries q [b, t, h, d] to a KV cache k, v [b, S, kv, d] under `mask`
    [b, t, S] (True = attend), with the `xla` (masked einsum) or `cudnn` kernel."""
    if kernel == "xla":
        return masked_attention(q, k, v, mask)
    if kernel == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
    raise ValueError(f"no cache-attention kernel {kernel!r} (decode steps run xla or cudnn)")


def xla_attention(q, k, v, segment_ids, sliding_window):
    """Reference attention. q: [b, t, h, d]; k, v: [b, t, kv, d] -> [b, t, h, d]."""
    b, t = q.shape[:2]
    return masked_attention(q, k, v, attention_mask(segment_ids, t, sliding_window, b))


def cudnn_attention(q, k, v, segment_ids, sliding_window):
    """cuDNN fused attention (GPU). Same contract as `xla_attention`."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=True, local_window_size=window, implementation="cudnn")


def splash_attention(q, k, v, segment_ids, sliding_window, interpret: bool | None = None):
    """Pallas splash attention for TPUs. Same contract as `xla_attention`.

    Off TPU (`mesh_platform()`, or with `interpret=True`) the kernel runs in Pallas interpret
    mode: correct but slow, which is how the CPU tests check it; for a TPU mesh it is the Mosaic
    kernel, also when traced on a CPU host for ahead-of-time compilation. Under a mesh
    (`parallel.activation_sharding`) the kernel runs per shard in a `shard_map` over batch and
    heads.
    """
    if interpret is None:
        interpret = mesh_platform() != "tpu"
    if segment_ids is None:
        segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
    ctx = parallel.current_activation_sharding()
    fn = functools.partial(_splash_local, sliding_window=sliding_window, interpret=interpret)
    if ctx is None:
        return fn(q, k, v, segment_ids)
    mesh, rules = ctx
    kv_spec = parallel.logical_to_spec(("batch", "length", "kv_heads", "head_dim"), rules, mesh, k.shape)
    q_spec = parallel.logical_to_spec(("batch", "length", "heads", "head_dim"), rules, mesh, q.shape)
    # Query heads are grouped by kv head: shard them exactly as the kv heads are sharded.
    q_spec = jax.sharding.PartitionSpec(q_spec[0], None, kv_spec[2], None)
    kv_spec = jax.sharding.PartitionSpec(q_spec[0], None, kv_spec[2], None)
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids, *, sliding_window, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    if t % 128:
        raise ValueError(f"splash attention needs a sequence length that is a multiple of 128, got "
                         f"{t}; pad the batch or use attention='xla'")
    if sliding_window is None:
        head_mask = sm.CausalMask((t, t))
    else:
        head_mask = sm.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
    block = min(512, t)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([head_mask] * h), head_shards=1, q_seq_shards=1,
                                block_sizes=sizes, interpret=interpret)
    seg = sk.SegmentIds(q=segment_ids.astype(jnp.int32), kv=segment_ids.astype(jnp.int32))
    qh = jnp.swapaxes(q * jnp.asarray(d**-0.5, q.dtype), 1, 2)  # [b, h, t, d]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


KERNELS = {"xla": xla_attention, "cudnn": cudnn_attention, "splash": splash_attention}


class Attention(nnx.Module):
    """Multi-head attention with grouped key/value heads and rotary position embedding."""

    def __init__(self, config: ModelConfig, compute: Compute, *, rngs: nnx.Rngs,
                 stack: int | None = None):
        c = config
        std, pd = c.initializer_range, compute.param_dtype
        self.q = param(rngs, (c.hidden_size, c.num_heads, c.head_dim),
                       ("embed", "heads", "head_dim"), pd, std=std, stack=stack)
        self.k = param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim),
                       ("embed", "kv_heads", "head_dim"), pd, std=std, stack=stack)
        self.v = param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim),
                       ("embed", "kv_heads", "head_dim"), pd, std=std, stack=stack)
        self.o = param(rngs, (c.num_heads, c.head_dim, c.hidden_size),
                       ("heads", "head_dim", "embed"), pd, std=std, stack=stack)
        self.config, self.compute = config, compute

    def _qkv(self, x, positions):
        c = self.config
        dt = self.compute.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.q[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", x, self.k[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", x, self.v[...].astype(dt))
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
        q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "heads", "head_dim"))
        k = constrain(apply_rope(k, positions, inv_freq), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        return q, k, v

    def prefill(self, x, positions, segment_ids, cache_k, cache_v, kernel: str):
        """Self-attention of a left-padded prompt x [b, t, d] (padding: segment 0, the prompt:
        segment 1) with `kernel`, its keys and values written to cache slots 0..t-1.

        Returns (output [b, t, d], cache_k, cache_v).
        """
        q, k, v = self._qkv(x, positions)
        cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), 0, 1)
        cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), 0, 1)
        out = KERNELS[kernel](q, k, v, segment_ids, self.config.sliding_window)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        o = self.o[...].astype(self.compute.dtype)
        return jnp.einsum("bthk,hkd->btd", out, o), cache_k, cache_v

    def decode(self, x, positions, cache_k, cache_v, index, kv_valid, kernel: str = "xla"):
        """Attention of new tokens x [b, t, d] written into a KV cache at slots index..index+t.

        cache_k/v: [b, S, kv, hd]; kv_valid [b, S]: slots holding real tokens (not padding).
        Each new token attends to valid slots up to its own, within the sliding window, with the
        `kernel` of `cache_attention`. Returns (output [b, t, d], cache_k, cache_v).
        """
        c = self.config
        q, k, v = self._qkv(x, positions)
        cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, 1)
        cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, 1)
        t, S = x.shape[1], cache_k.shape[1]
        q_slot = index + jnp.arange(t)[:, None]
        k_slot = jnp.arange(S)[None, :]
        mask = k_slot <= q_slot
        if c.sliding_window is not None:
            mask &= k_slot > q_slot - c.sliding_window
        mask = mask[None] & kv_valid[:, None, :]
        out = cache_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask, kernel)
        o = self.o[...].astype(self.compute.dtype)
        return jnp.einsum("bthk,hkd->btd", out, o), cache_k, cache_v

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None):
        c = self.config
        dt = self.compute.dtype
        q, k, v = self._qkv(x, positions)
        impl = resolve_implementation(self.compute.attention, dt)
        out = KERNELS[impl](q, k, v, segment_ids, c.sliding_window)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt))

"""Building blocks of the decoder: parameters with logical axes, RMSNorm, rotary embedding, SwiGLU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lepjax.models.config import RopeScaling
from lepjax.parallel import constrain


def param(
    rngs: nnx.Rngs | None,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype: str,
    *,
    std: float | None = None,
    stack: int | None = None,
) -> nnx.Param:
    """A parameter annotated with its logical axes (`logical_axes` metadata).

    `std=None` initialises to ones (norm scales); otherwise a normal with that std. With `stack`,
    the parameter gets a leading `layers` axis of that size (scanned layers).
    """
    shape, axes = tuple(shape), tuple(logical_axes)
    if stack is not None:
        shape, axes = (stack,) + shape, ("layers",) + axes
    if std is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    """Root-mean-square norm, computed in float32 and cast back before the scale (as Llama does)."""

    def __init__(self, dim: int, eps: float, param_dtype: str, stack: int | None = None):
        self.scale = param(None, (dim,), ("norm",), param_dtype, stack=stack)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies of rotary embedding, float32, with optional Llama 3 scaling.

    Llama 3 scaling keeps high frequencies (wavelength < original_ctx / high_freq_factor), divides
    low frequencies (wavelength > original_ctx / low_freq_factor) by `factor`, and interpolates
    smoothly in between.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if scaling is None:
        return inv_freq
    old_ctx = scaling.original_max_position_embeddings
    low_wavelen = old_ctx / scaling.low_freq_factor
    high_wavelen = old_ctx / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding (half-rotation layout, as in Hugging Face Llama) of x: [b, t, heads, d]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [b, t, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, *, std: float, param_dtype: str, dtype: str,
                 rngs: nnx.Rngs, stack: int | None = None):
        self.gate = param(rngs, (dim, hidden), ("embed", "mlp"), param_dtype, std=std, stack=stack)
        self.up = param(rngs, (dim, hidden), ("embed", "mlp"), param_dtype, std=std, stack=stack)
        self.down = param(rngs, (hidden, dim), ("mlp", "embed"), param_dtype, std=std, stack=stack)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jnp.einsum("btd,df->btf", x, self.gate[...].astype(self.dtype))
        up = jnp.einsum("btd,df->btf", x, self.up[...].astype(self.dtype))
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return jnp.einsum("btf,fd->btd", h, self.down[...].astype(self.dtype))

"""Attention kernels against an independent NumPy float64 reference of the mask semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lepjax.models import attention


def numpy_attention(q, k, v, segment_ids, window):
    """Loop-level reference: causal, same segment, within the last `window` positions."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    group = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kv = hi // group
            for i in range(t):
                allowed = [j for j in range(i + 1)
                           if (segment_ids is None or segment_ids[bi, j] == segment_ids[bi, i])
                           and (window is None or i - j < window)]
                s = np.array([q[bi, i, hi] @ k[bi, j, kv] for j in allowed]) / np.sqrt(d)
                p = np.exp(s - s.max())
                p /= p.sum()
                out[bi, i, hi] = sum(pj * v[bi, j, kv] for pj, j in zip(p, allowed))
    return out


def inputs(b=2, t=128, h=4, kv=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k = rng.normal(size=(b, t, kv, d)).astype(np.float32)
    v = rng.normal(size=(b, t, kv, d)).astype(np.float32)
    # Two documents and trailing padding (segment 0).
    pos = np.arange(t) / t
    seg = np.broadcast_to(np.where(pos < 0.4, 1, np.where(pos < 0.86, 2, 0)), (b, t))
    return q, k, v, seg.astype(np.int32)


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kernel", ["xla", "splash"])
def test_kernel_matches_numpy_reference(kernel, packed, window):
    q, k, v, seg = inputs()
    seg = seg if packed else None
    ref = numpy_attention(q, k, v, seg, window)
    out = attention.KERNELS[kernel](jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                    None if seg is None else jnp.asarray(seg), window)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5


def test_auto_picks_by_platform():
    assert attention.resolve_implementation("auto", "bfloat16", "gpu") == "cudnn"
    assert attention.resolve_implementation("auto", "float32", "gpu") == "xla"
    assert attention.resolve_implementation("auto", "bfloat16", "tpu") == "splash"
    assert attention.resolve_implementation("auto", "bfloat16", "cpu") == "xla"
    assert attention.resolve_implementation("xla", "bfloat16", "gpu") == "xla"


def test_splash_rejects_unaligned_length():
    q, k, v, _ = inputs(t=40)
    with pytest.raises(ValueError, match="multiple of 128"):
        attention.splash_attention(q, k, v, None, None)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("packed", [False, True])
def test_cudnn_matches_xla_in_bf16(packed, window):
    q, k, v, seg = inputs(b=2, t=256, h=8, kv=2, d=64)
    args = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    seg = jnp.asarray(seg) if packed else None
    ref = attention.xla_attention(*args, seg, window).astype(jnp.float32)
    out = attention.cudnn_attention(*args, seg, window).astype(jnp.float32)
    assert float(jnp.abs(out - ref).max()) <= 2e-2

"""Attention kernels side by side: time per call and ratio to the XLA reference, as JSON.

    python benchmarks/attention.py [--batch 4 --length 4096 --heads 32 --kv-heads 8 --head-dim 128]

Runs every kernel the platform supports (xla everywhere; cudnn on GPU; splash on TPU), causal,
packed (segment ids) and sliding-window variants, in bfloat16 (float32 on CPU).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lepjax.models.attention import KERNELS


def bench(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--length", type=int, default=None)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--window", type=int, default=1024)
    a = p.parse_args()
    platform = jax.default_backend()
    small = platform == "cpu"
    b = a.batch or (1 if small else 4)
    t = a.length or (1024 if small else 4096)
    dtype = jnp.float32 if small else jnp.bfloat16
    kernels = ["xla"] + {"gpu": ["cudnn"], "tpu": ["splash"]}.get(platform, [])
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(b, t, a.heads, a.head_dim)), dtype)
    k = jnp.asarray(rng.normal(size=(b, t, a.kv_heads, a.head_dim)), dtype)
    v = jnp.asarray(rng.normal(size=(b, t, a.kv_heads, a.head_dim)), dtype)
    seg = jnp.asarray(np.repeat((np.arange(t) >= t // 3).astype(np.int32)[None] + 1, b, 0))
    variants = {"causal": (None, None), "packed": (seg, None), "sliding_window": (None, a.window)}
    flops = 4 * b * a.heads * t * t * a.head_dim / 2  # causal: half the score matrix
    results = []
    for variant, (segment_ids, window) in variants.items():
        base = None
        for name in kernels:
            fn = jax.jit(lambda q, k, v, s, name=name, w=window: KERNELS[name](q, k, v, s, w))
            sec = bench(fn, q, k, v, segment_ids)
            base = base or sec
            results.append({"variant": variant, "kernel": name, "ms": round(sec * 1e3, 3),
                            "tflops_causal": round(flops / sec / 1e12, 2),
                            "speedup_vs_xla": round(base / sec, 2)})
    print(json.dumps({"benchmark": "attention", "platform": platform,
                      "device": str(jax.devices()[0].device_kind), "batch": b, "length": t,
                      "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
                      "dtype": jnp.dtype(dtype).name, "results": results}, indent=2))


if __name__ == "__main__":
    main()

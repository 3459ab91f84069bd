"""Training throughput of lepjax's train step, as JSON: tokens/s, MFU, peak memory.

    python benchmarks/train_throughput.py --setting 1b_full        # llama_1_1b, all parameters
    python benchmarks/train_throughput.py --setting 8b_embeddings  # llama3_8b, embeddings only
    python benchmarks/train_throughput.py --setting tiny_full      # CPU smoke run

The step is the one `lepjax train` runs (chunked float32 loss, remat policy, AdamW, FSDP over
all local devices), fed random tokens so the data pipeline is not measured. Override with
--batch, --seq-len, --remat, --attention, --steps, --frozen-dtype.
"""

import argparse
import json
import time

import jax
import numpy as np

SETTINGS = {
    "1b_full": dict(preset="llama_1_1b", trainable="all", batch=16, seq_len=2048),
    "8b_embeddings": dict(preset="llama3_8b", trainable="embeddings", batch=8, seq_len=2048,
                          frozen_dtype="bfloat16"),
    "tiny_full": dict(preset="tiny_llama3", trainable="all", batch=8, seq_len=128),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="tiny_full")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--remat", default="dots", choices=["none", "full", "dots", "dots_no_batch"])
    p.add_argument("--attention", default="auto")
    p.add_argument("--frozen-dtype", default=None)
    p.add_argument("--loss-chunk", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    s = dict(SETTINGS[a.setting])
    batch, seq_len = a.batch or s["batch"], a.seq_len or s["seq_len"]

    from lepjax import parallel
    from lepjax.train import flops as flops_lib
    from lepjax.train import loop
    from lepjax.train import state as state_lib

    dtype = "bfloat16" if jax.default_backend() != "cpu" else "float32"
    cfg = loop.default_config()
    cfg.model.update(dict(preset=s["preset"], dtype=dtype, remat_policy=a.remat,
                          attention=a.attention))
    cfg.data.update(dict(batch_size=batch, seq_len=seq_len))
    cfg.train.update(dict(run_dir="unused", trainable=s["trainable"], loss_chunk=a.loss_chunk,
                          frozen_dtype=a.frozen_dtype or s.get("frozen_dtype", "")))
    mesh = parallel.make_mesh({"fsdp": -1})
    setup = state_lib.build(cfg, mesh=mesh)  # the setup and jitted step `lepjax train` runs
    step = setup.train_step()
    mc, train_state, frozen = setup.model.config, setup.state, setup.frozen
    rng = np.random.default_rng(0)
    toks = rng.integers(0, mc.vocab_size, (batch, seq_len), dtype=np.int32)
    data = {"tokens": toks, "targets": toks, "loss_mask": np.ones((batch, seq_len), np.float32),
            "segment_ids": np.ones((batch, seq_len), np.int32),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len))}
    data = {k: jax.device_put(v, setup.batch_sharding) for k, v in data.items()}
    t0 = time.perf_counter()
    train_state, m = step(train_state, frozen, data)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        train_state, m = step(train_state, frozen, data)
    jax.block_until_ready(m)
    sec = (time.perf_counter() - t0) / a.steps
    tps = batch * seq_len / sec
    fpt = flops_lib.selection_flops_per_token(mc, setup.selection, seq_len)
    peak = flops_lib.peak_flops(jax.devices()[0].device_kind)
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({
        "benchmark": "train_throughput", "setting": a.setting, "preset": s["preset"],
        "trainable": s["trainable"], "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "batch": batch, "seq_len": seq_len, "remat": a.remat,
        "attention": a.attention, "dtype": dtype, "step_s": round(sec, 4),
        "tokens_per_s": round(tps), "flops_per_token": fpt,
        "mfu": None if peak is None else round(tps * fpt / (peak * jax.device_count()), 4),
        "peak_memory_gb": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2) or None,
        "compile_s": round(compile_s, 1), "loss": float(m["loss"])}, indent=2))


if __name__ == "__main__":
    main()

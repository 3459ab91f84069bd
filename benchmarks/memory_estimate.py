"""Per-device memory of a train step from XLA's compiled memory analysis, without allocating.

    python benchmarks/memory_estimate.py --preset llama3_8b --trainable embeddings \
        --batch 8 --seq-len 2048 --frozen-dtype bfloat16

Compiles the train step for abstract (shape-only) inputs on the current backend with one device
and prints JSON: argument, output, temporary and total bytes. On a CPU host this estimates what
a GPU step needs (the GPU compiler's buffer assignment differs somewhat: measure there too).
"""

import argparse
import json

import jax


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="llama3_8b")
    p.add_argument("--trainable", default="embeddings")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--frozen-dtype", default="bfloat16")
    p.add_argument("--remat", default="full")
    p.add_argument("--loss-chunk", type=int, default=512)
    a = p.parse_args()

    from lepjax import parallel
    from lepjax.train import loop
    from lepjax.train import params as P
    from lepjax.train import state as state_lib

    cfg = loop.default_config()
    cfg.model.update(dict(preset=a.preset, dtype="bfloat16", remat_policy=a.remat,
                          attention="xla"))
    cfg.data.update(dict(batch_size=a.batch, seq_len=a.seq_len))
    cfg.train.update(dict(run_dir="unused", trainable=a.trainable, loss_chunk=a.loss_chunk,
                          frozen_dtype=a.frozen_dtype))
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    setup = state_lib.build_abstract(cfg, mesh=mesh)  # shapes only: no weights are made
    batch = state_lib.abstract_batch(a.batch, a.seq_len, setup.batch_sharding)
    compiled = setup.train_step().lower(setup.state, setup.frozen, batch).compile()
    trainable = setup.state["trainable"]
    m = compiled.memory_analysis()
    gb = lambda x: round(x / 2**30, 2)  # noqa: E731
    print(json.dumps({
        "benchmark": "memory_estimate", "backend": jax.default_backend(), "preset": a.preset,
        "trainable": a.trainable, "batch": a.batch, "seq_len": a.seq_len, "remat": a.remat,
        "frozen_dtype": a.frozen_dtype, "trained_params": P.count(trainable),
        "argument_gb": gb(m.argument_size_in_bytes), "output_gb": gb(m.output_size_in_bytes),
        "temp_gb": gb(m.temp_size_in_bytes),
        "total_gb_upper_bound": gb(m.argument_size_in_bytes + m.output_size_in_bytes
                                   + m.temp_size_in_bytes - m.alias_size_in_bytes)},
        indent=2))


if __name__ == "__main__":
    main()

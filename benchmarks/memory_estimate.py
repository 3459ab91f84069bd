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
import jax.numpy as jnp


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

    from lepjax import models, parallel
    from lepjax.train import loop
    from lepjax.train import params as P
    from lepjax.train.optim import make_optimizer
    from lepjax.train.step import StepBuilder

    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    mc = models.get_preset(a.preset)
    graphdef, abstract = models.io.abstract_model(
        mc, models.Compute(dtype="bfloat16", remat_policy=a.remat, attention="xla"))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    paths = ["/".join(str(k.key) for k in q if isinstance(k, jax.tree_util.DictKey))
             for q, _ in leaves]
    flat = {p_: jax.ShapeDtypeStruct(v.shape, v.dtype) for p_, (_, v) in zip(paths, leaves)}
    selection = P.select(a.trainable, paths, mc.num_layers)
    trainable = {k: v for k, v in flat.items() if k in selection and selection[k] is None}
    frozen = {k: jax.ShapeDtypeStruct(v.shape, jnp.dtype(a.frozen_dtype))
              for k, v in flat.items() if k not in trainable}
    cfg = loop.default_config()
    cfg.train.loss_chunk = a.loss_chunk
    tx, schedule = make_optimizer(cfg.optim, 1000, trainable)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "trainable": trainable,
             "opt_state": jax.eval_shape(tx.init, trainable)}
    builder = StepBuilder(graphdef, treedef, paths, selection, tx, schedule, cfg.train, mesh)
    b = jax.ShapeDtypeStruct((a.batch, a.seq_len), jnp.int32)
    batch = {"tokens": b, "targets": b, "segment_ids": b, "positions": b,
             "loss_mask": jax.ShapeDtypeStruct((a.batch, a.seq_len), jnp.float32)}
    compiled = jax.jit(builder.train_step, donate_argnums=(0,)).lower(state, frozen, batch).compile()
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

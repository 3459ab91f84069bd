"""lepjax's jitted forward against transformers' PyTorch forward on the same weights, as JSON.

    python benchmarks/forward_vs_torch.py [--hidden 512 --layers 4 --length 512 --batch 4]

Both run float32 on the CPU (the only device PyTorch has here); on an accelerator lepjax also runs
there and the ratio compares accelerator lepjax with CPU PyTorch, which the JSON says. Also
checks that the two agree (max |Δlogits|).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    import jax
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lepjax import models, parallel

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 3,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=max(2048, a.length), rope_theta=500000.0)).eval()
    tokens = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.length))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        mesh = parallel.make_mesh({"fsdp": -1})
        model, _ = models.load(d, mesh=mesh, dtype="float32", remat_policy="none")
    forward, state = models.make_forward(model, mesh)

    def time_it(fn):
        fn()
        out = []
        for _ in range(a.repeats):
            s = time.perf_counter()
            fn()
            out.append(time.perf_counter() - s)
        return float(np.median(out))

    t_lep = time_it(lambda: jax.block_until_ready(forward(state, tokens)))
    tt = torch.as_tensor(tokens)
    with torch.no_grad():
        t_torch = time_it(lambda: hf(tt).logits)
        ref = hf(tt).logits.numpy()
    diff = float(np.abs(np.asarray(forward(state, tokens)) - ref).max())
    ntok = a.batch * a.length
    print(json.dumps({
        "benchmark": "forward_vs_torch", "lepjax_platform": jax.default_backend(),
        "torch_platform": "cpu", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "shape": [a.batch, a.length], "hidden": a.hidden,
        "layers": a.layers, "lepjax_ms": round(t_lep * 1e3, 2), "torch_ms": round(t_torch * 1e3, 2),
        "lepjax_tokens_per_s": round(ntok / t_lep), "torch_tokens_per_s": round(ntok / t_torch),
        "speedup_vs_torch": round(t_torch / t_lep, 2), "max_abs_logit_diff": diff}, indent=2))


if __name__ == "__main__":
    main()

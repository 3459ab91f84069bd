"""Decode throughput: lepjax's batched KV-cache Generator vs transformers' `generate`, as JSON.

    python benchmarks/generate_throughput.py                      # 1.1B shape, 64 prompts
    python benchmarks/generate_throughput.py --preset tiny_llama2 --batch 8 --new-tokens 32  # CPU

Both decode the same random-weight model (a preset's shape, built in transformers and imported
into lepjax) greedily, for the same prompts (random ids, lengths spread over [min, max]), with EOS
ignored so both produce exactly `--new-tokens` tokens per prompt. PyTorch runs on CUDA when it has
it, else the CPU; lepjax on JAX's default backend; the JSON names both. Reported: generated
tokens/s of each (the second of two runs, so compilation is excluded for lepjax and CUDA warm-up for
PyTorch), their ratio, and how many prompts' greedy outputs agree exactly (bf16 ties may differ).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="llama_1_1b")
    p.add_argument("--batch", type=int, default=64, help="prompts, decoded as one batch")
    p.add_argument("--min-prompt", type=int, default=64)
    p.add_argument("--max-prompt", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--steps-per-sync", type=int, default=16,
                   help="lepjax decoding steps on the device between host checks")
    p.add_argument("--skip-torch", action="store_true", help="only time lepjax")
    a = p.parse_args()

    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from lepjax import models, parallel
    from lepjax.generate import Generator, SamplingParams

    mc = models.get_preset(a.preset)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, mc.vocab_size, int(n)).tolist()
               for n in rng.integers(a.min_prompt, a.max_prompt + 1, a.batch)]
    tdev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, a.dtype)
    with tempfile.TemporaryDirectory() as d:
        model = models.create_model(mc, seed=0, param_dtype="float32")
        models.save_hf(model, d, dtype=a.dtype, overwrite=True)
        del model
        mesh = parallel.make_mesh({"fsdp": -1})
        model, _ = models.load(d, mesh=mesh, dtype=a.dtype, param_dtype=a.dtype)
        hf = None if a.skip_torch else AutoModelForCausalLM.from_pretrained(
            d, dtype=tdtype).to(tdev).eval()

    params = SamplingParams(max_new_tokens=a.new_tokens)  # no EOS: exactly new_tokens each
    gen = Generator(model, mesh=mesh, batch_size=a.batch, length_bucket=64,
                    steps_per_sync=a.steps_per_sync)
    per_step = Generator(model, mesh=mesh, batch_size=a.batch, length_bucket=64, steps_per_sync=1)

    def run_lepjax():
        return gen.generate(prompts, params)

    def run_torch():
        P = max(len(x) for x in prompts)
        ids = torch.zeros((len(prompts), P), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(prompts):
            ids[r, P - len(x):] = torch.tensor(x)
            mask[r, P - len(x):] = 1
        with torch.no_grad():
            out = hf.generate(input_ids=ids.to(tdev), attention_mask=mask.to(tdev),
                              max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                              do_sample=False, pad_token_id=0)
        if tdev == "cuda":
            torch.cuda.synchronize()
        return out[:, P:].cpu().numpy()

    def timed(fn):
        fn()  # compile / warm up
        s = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - s

    ntok = a.batch * a.new_tokens
    lep_out, t_lep = timed(run_lepjax)
    result = {"benchmark": "generate_throughput", "preset": a.preset, "dtype": a.dtype,
              "lepjax_platform": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "prompts": a.batch,
              "prompt_lengths": [a.min_prompt, a.max_prompt], "new_tokens": a.new_tokens,
              "steps_per_sync": a.steps_per_sync,
              "lepjax_s": round(t_lep, 3), "lepjax_tokens_per_s": round(ntok / t_lep, 1)}
    _, t_step = timed(lambda: per_step.generate(prompts, params))
    result.update({"lepjax_per_step_sync_s": round(t_step, 3),
                   "steps_per_sync_speedup": round(t_step / t_lep, 3)})
    if hf is not None:
        torch_out, t_torch = timed(run_torch)
        same = sum(list(map(int, t)) == c.tokens for t, c in zip(torch_out, lep_out))
        result.update({"torch_platform": tdev, "torch_threads": torch.get_num_threads(),
                       "torch_s": round(t_torch, 3),
                       "torch_tokens_per_s": round(ntok / t_torch, 1),
                       "lepjax_vs_torch": round(t_torch / t_lep, 3),
                       "identical_greedy_outputs": f"{same}/{a.batch}"})
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

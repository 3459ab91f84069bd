"""Baseline: the same 1.1B Llama trained with transformers + PyTorch (eager and torch.compile).

    python benchmarks/hf_torch_baseline.py --mode compile   # or eager; --tiny for a CPU smoke run

bf16 autocast, AdamW (fused on CUDA), batch × sequence as in benchmarks/train_throughput.py,
random tokens. Prints JSON with tokens/s and MFU counted like lepjax (lepjax.train.flops).
"""

import argparse
import json
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    a = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lepjax import models
    from lepjax.train import flops as flops_lib

    preset = "tiny_llama3" if a.tiny else "llama_1_1b"
    mc = models.get_preset(preset)
    batch, seq_len = (8, 128) if a.tiny else (a.batch, a.seq_len)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in mc.to_hf("float32").items()
                                         if k not in ("architectures", "model_type")}))
    hf.to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.1,
                            fused=device == "cuda")
    model = torch.compile(hf) if a.mode == "compile" else hf
    tokens = torch.randint(0, mc.vocab_size, (batch, seq_len), device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with amp:
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    sec = (time.perf_counter() - t0) / a.steps
    tps = batch * seq_len / sec
    fpt = flops_lib.flops_per_token(mc, seq_len)
    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = flops_lib.peak_flops(kind)
    print(json.dumps({"benchmark": "hf_torch_baseline", "mode": a.mode, "preset": preset,
                      "device": kind, "batch": batch, "seq_len": seq_len,
                      "step_s": round(sec, 4), "tokens_per_s": round(tps),
                      "mfu": None if peak is None else round(tps * fpt / peak, 4),
                      "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                      if device == "cuda" else None, "loss": float(loss.detach())}, indent=2))


if __name__ == "__main__":
    main()

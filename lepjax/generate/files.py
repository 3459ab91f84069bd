"""`lepjax generate`: decode a prompts file into a completions JSONL."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ml_collections import ConfigDict


def default_config() -> ConfigDict:
    """The `lepjax generate` config.

    Keys:
      model.*, mesh.*: the checkpoint and how to run it (lepjax.models.model_section,
        lepjax.parallel.mesh_section); model.attention is honoured or refused when decoding.
      tokenizer: tokenizer file or directory (empty = the model directory).
      prompts: a .txt file (one prompt per line) or .jsonl (field `prompt_field`).
      prompt_field: JSONL field holding the prompt.
      output: JSONL file to write ({"prompt", "completion", "tokens", "finish_reason"} per line).
      max_new_tokens, temperature, top_k, top_p, seed: sampling (temperature 0 = greedy).
      stop: stop strings; eos: also stop at the tokenizer's EOS (and end-of-turn stop ids).
      add_bos: prepend the tokenizer's BOS to each prompt.
      batch_size, length_bucket: decoding batch and prompt-length padding multiple.
    """
    from lepjax.models import model_section
    from lepjax.parallel import mesh_section

    return ConfigDict(dict(
        model=model_section(), mesh=mesh_section(), tokenizer="", prompts="",
        prompt_field="prompt", output="", max_new_tokens=128, temperature=0.0, top_k=0,
        top_p=1.0, seed=0, stop=(), eos=True, add_bos=True, batch_size=8, length_bucket=64))


def generate_file(cfg: ConfigDict) -> dict[str, Any]:
    """Completions of `cfg.prompts` written to `cfg.output` (atomically); returns a summary."""
    from lepjax.generate.generator import Generator, SamplingParams
    from lepjax.generate.load import load_for_decoding, read_prompts

    if not cfg.output:
        raise ValueError("output is not set")
    texts = read_prompts(cfg.prompts, cfg.prompt_field)  # bad input fails before any weight
    model, tok, mesh, rules = load_for_decoding(cfg)
    prompts = tok.encode(texts, add_bos=cfg.add_bos)
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, seed=cfg.seed, stop=tuple(cfg.stop),
        eos_ids=tok.stop_ids if cfg.eos else ())
    gen = Generator(model, mesh=mesh, rules=rules, batch_size=cfg.batch_size,
                    length_bucket=cfg.length_bucket, vocab_limit=tok.vocab_size)
    start = time.perf_counter()
    outs = gen.generate(prompts, params, tokenizer=tok, progress=True)
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    tmp = cfg.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for text, c in zip(texts, outs):
            f.write(json.dumps({"prompt": text, "completion": c.text, "tokens": c.tokens,
                                "finish_reason": c.finish_reason}, ensure_ascii=False) + "\n")
    os.replace(tmp, cfg.output)
    n = sum(len(c.tokens) for c in outs)
    return {"output": os.path.abspath(cfg.output), "prompts": len(outs), "new_tokens": n,
            "tokens_per_s": round(n / max(seconds, 1e-9), 1), "attention": gen.kernels}

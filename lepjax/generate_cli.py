"""Decode prompts from a file with a lepjax or Hugging Face checkpoint (`lepjax generate`)."""

from __future__ import annotations

import json
import os

from ml_collections import ConfigDict



def default_config() -> ConfigDict:
    """The `lepjax generate` config.

    Keys:
      model.*, mesh.*: the checkpoint and how to run it (see lepjax.config).
      tokenizer: tokenizer file or directory (empty = the model directory).
      prompts: a .txt file (one prompt per line) or .jsonl (field `prompt_field`).
      prompt_field: JSONL field holding the prompt.
      output: JSONL file to write ({"prompt", "completion", "tokens", "finish_reason"} per line).
      max_new_tokens, temperature, top_k, top_p, seed: sampling (temperature 0 = greedy).
      stop: stop strings; eos: also stop at the tokenizer's EOS.
      add_bos: prepend the tokenizer's BOS to each prompt.
      batch_size, length_bucket: decoding batch and prompt-length padding multiple.
    """
    from lepjax import config as config_lib

    cfg = ConfigDict(dict(
        model=config_lib.model_section(), mesh=config_lib.mesh_section(), tokenizer="",
        prompts="", prompt_field="prompt", output="", max_new_tokens=128, temperature=0.0,
        top_k=0, top_p=1.0, seed=0, stop=(), eos=True, add_bos=True, batch_size=8,
        length_bucket=64))
    return cfg


def read_prompts(path: str, field: str) -> list[str]:
    """Prompts of a .txt (one per line) or .jsonl file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
            missing = [i for i, r in enumerate(rows) if field not in r]
            if missing:
                raise ValueError(f"{path}: line {missing[0] + 1} has no field {field!r}")
            return [str(r[field]) for r in rows]
        return [line.rstrip("\n") for line in f if line.strip()]


def load_for_decoding(cfg: ConfigDict):
    """(model, tokenizer, mesh, rules) of a config with model.*, mesh.* and tokenizer keys; a
    tokenizer with more tokens than the model has embedding rows is refused."""
    from lepjax import models
    from lepjax.data.tokenizer import load_tokenizer

    mesh, rules = models.mesh_from_config(cfg.mesh)
    model = models.from_config(cfg.model, mesh=mesh, rules=rules)
    tok = load_tokenizer(cfg.tokenizer or cfg.model.path)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size} embedding rows: they do not belong together")
    return model, tok, mesh, rules


def run(cfg: ConfigDict) -> dict:
    """Generate completions for `cfg.prompts` into `cfg.output`; returns a summary."""
    import time

    from lepjax.generate import Generator, SamplingParams

    if not cfg.output:
        raise ValueError("output is not set")
    model, tok, mesh, rules = load_for_decoding(cfg)
    texts = read_prompts(cfg.prompts, cfg.prompt_field)
    bos = [tok.bos_id] if cfg.add_bos and tok.bos_id is not None else []
    prompts = [bos + ids for ids in tok.encode_batch(texts)]
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, seed=cfg.seed, stop=tuple(cfg.stop),
        eos_ids=(tok.eos_id,) if cfg.eos and tok.eos_id is not None else ())
    gen = Generator(model, mesh=mesh, rules=rules, batch_size=cfg.batch_size,
                    length_bucket=cfg.length_bucket)
    start = time.perf_counter()
    outs = gen.generate(prompts, params, tokenizer=tok, progress=True)
    seconds = time.perf_counter() - start
    out_dir = os.path.dirname(os.path.abspath(cfg.output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = cfg.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for text, c in zip(texts, outs):
            f.write(json.dumps({"prompt": text, "completion": c.text, "tokens": c.tokens,
                                "finish_reason": c.finish_reason}, ensure_ascii=False) + "\n")
    os.replace(tmp, cfg.output)
    n = sum(len(c.tokens) for c in outs)
    return {"output": os.path.abspath(cfg.output), "prompts": len(outs), "new_tokens": n,
            "tokens_per_s": round(n / max(seconds, 1e-9), 1)}

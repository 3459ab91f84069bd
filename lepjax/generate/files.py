"""`lepjax generate`: decode a prompts file into a completions JSONL."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ml_collections import ConfigDict

from lepjax import files


def default_config() -> ConfigDict:
    """The `lepjax generate` config.

    Keys:
      model.*, mesh.*: the checkpoint and how to run it (lepjax.models.model_section,
        lepjax.parallel.mesh_section); model.attention is honoured or refused when decoding.
      tokenizer: tokenizer file or directory (empty = the model directory).
      prompts: a .txt file (one prompt per line) or .jsonl (field `prompt_field`).
      prompt_field: JSONL field holding the prompt.
      chat: render each prompt as a user message (or a JSONL row's `messages_field`, a list of
        {"role", "content"}) through the tokenizer's chat template, with the generation prompt;
        decoding then also stops at the template's end-of-turn token.
      messages_field: JSONL field holding a conversation (with chat=True).
      output: JSONL file to write ({"prompt", "completion", "tokens", "finish_reason"} per line);
        never the prompts file.
      overwrite: replace an existing, non-empty output file.
      max_new_tokens, temperature, top_k, top_p, seed: sampling (temperature 0 = greedy).
      stop: stop strings; eos: also stop at the tokenizer's EOS (and end-of-turn stop ids).
      add_bos: prepend the tokenizer's BOS to each prompt.
      batch_size, length_bucket: decoding batch and prompt-length padding multiple.
    """
    from lepjax.models import model_section
    from lepjax.parallel import mesh_section

    return ConfigDict(dict(
        model=model_section(), mesh=mesh_section(), tokenizer="", prompts="",
        prompt_field="prompt", chat=False, messages_field="messages", output="", overwrite=False,
        max_new_tokens=128, temperature=0.0, top_k=0,
        top_p=1.0, seed=0, stop=(), eos=True, add_bos=True, batch_size=8, length_bucket=64))


def check_output(output: str, prompts: str, overwrite: bool) -> None:
    """Refuse an `output` that is the prompts file, or an existing non-empty file (unless
    `overwrite`), before anything is decoded."""
    if not output:
        raise ValueError("output is not set")
    if os.path.exists(prompts) and os.path.exists(output) and os.path.samefile(output, prompts):
        raise ValueError(f"output {output} is the prompts file; choose another output")
    if os.path.isdir(output):
        raise IsADirectoryError(f"output {output} is a directory; expected a JSONL file path")
    if os.path.isfile(output) and os.path.getsize(output) and not overwrite:
        raise FileExistsError(f"output {output} exists; choose another output or set "
                              "--config.overwrite=True to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"output {output}: {parent} is not a directory")


def generate_file(cfg: ConfigDict) -> dict[str, Any]:
    """Completions of `cfg.prompts` written to `cfg.output` (atomically); returns a summary."""
    from lepjax.generate.generator import Generator, SamplingParams
    from lepjax.generate.load import (chat_stop_ids, load_for_decoding, read_chat_prompts,
                                      read_prompts)

    # Bad input fails before any weight is read.
    check_output(cfg.output, cfg.prompts, cfg.overwrite)
    if cfg.chat:
        conversations = read_chat_prompts(cfg.prompts, cfg.prompt_field, cfg.messages_field)
    else:
        texts = read_prompts(cfg.prompts, cfg.prompt_field)
    model, tok, mesh, rules = load_for_decoding(cfg, chat=cfg.chat)
    if cfg.chat:
        # As transformers' apply_chat_template: the template writes any BOS itself.
        texts = [tok.render_chat(m, add_generation_prompt=True) for m in conversations]
        prompts = tok.encode(texts)
    else:
        prompts = tok.encode(texts, add_bos=cfg.add_bos)
    stops = (chat_stop_ids(tok) if cfg.chat else tok.stop_ids) if cfg.eos else ()
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, seed=cfg.seed, stop=tuple(cfg.stop), eos_ids=tuple(stops))
    gen = Generator(model, mesh=mesh, rules=rules, batch_size=cfg.batch_size,
                    length_bucket=cfg.length_bucket, vocab_limit=tok.vocab_size)
    start = time.perf_counter()
    outs = gen.generate(prompts, params, tokenizer=tok, progress=True)
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    with files.atomic_file(cfg.output) as f:
        for text, c in zip(texts, outs):
            f.write(json.dumps({"prompt": text, "completion": c.text, "tokens": c.tokens,
                                "finish_reason": c.finish_reason}, ensure_ascii=False) + "\n")
    n = sum(len(c.tokens) for c in outs)
    return {"output": os.path.abspath(cfg.output), "prompts": len(outs), "new_tokens": n,
            "tokens_per_s": round(n / max(seconds, 1e-9), 1), "attention": gen.kernels}

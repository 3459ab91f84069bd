"""Inference speedup: decode the same prompts with several checkpoints and compare.

Each checkpoint encodes the prompt texts with its own tokenizer and decodes them greedily, one
prompt at a time (so wall time is per example, not shared by a batch), until EOS, a stop string
or `max_new_tokens`. Every prompt-length bucket is decoded once before timing, so compilation is
never timed. Reported per checkpoint: generated tokens, characters and wall time per example and
in total; and, against the baseline checkpoint (the first by default), the ratios of generated
tokens and of wall time, and the speedup (baseline time / time). METHODS.md §5: both the token
ratio and the measured time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("lepjax.eval")


def decode_timed(generator, tokenizer, texts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = (), progress: bool = True) -> list[dict[str, Any]]:
    """Per prompt: {"tokens", "chars", "seconds", "text", ...} (greedy, one prompt at a time)."""
    from tqdm import tqdm

    from lepjax.generate import SamplingParams

    prompts = tokenizer.encode(list(texts), add_bos=True)
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=tuple(stop),
                            eos_ids=tokenizer.stop_ids)
    bucket = generator.length_bucket
    warmed: set[int] = set()
    for p in prompts:  # compile each prompt shape outside the timed runs
        shape = -(-len(p) // bucket)
        if shape not in warmed:
            warmed.add(shape)
            generator.generate([p], params, tokenizer=tokenizer)
    out = []
    for p in tqdm(prompts, desc="speed", unit="ex", disable=not progress):
        start = time.perf_counter()
        c = generator.generate([p], params, tokenizer=tokenizer)[0]
        seconds = time.perf_counter() - start
        out.append({"prompt_tokens": len(p), "tokens": len(c.tokens), "chars": len(c.text or ""),
                    "seconds": seconds, "text": c.text, "finish_reason": c.finish_reason})
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Totals and means of one checkpoint's timed decodes."""
    n = len(rows)
    tokens = sum(r["tokens"] for r in rows)
    chars = sum(r["chars"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {"examples": n, "generated_tokens": tokens, "generated_chars": chars,
            "seconds": seconds, "tokens_per_example": tokens / n,
            "seconds_per_example": seconds / n,
            "tokens_per_s": tokens / max(seconds, 1e-9), "chars_per_token": chars / max(tokens, 1)}


def compare(per_checkpoint: dict[str, list[dict[str, Any]]], baseline: str = "",
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary per checkpoint + ratios against the baseline, per-example rows with ratios)."""
    labels = list(per_checkpoint)
    base = baseline or labels[0]
    if base not in per_checkpoint:
        raise ValueError(f"speed baseline {base!r} is not a checkpoint label ({', '.join(labels)})")
    summary = {label: summarize(rows) for label, rows in per_checkpoint.items()}
    ratios = {}
    for label in labels:
        if label == base:
            continue
        s, b = summary[label], summary[base]
        ratios[f"{label} / {base}"] = {
            "tokens_ratio": s["generated_tokens"] / max(b["generated_tokens"], 1),
            "time_ratio": s["seconds"] / max(b["seconds"], 1e-9),
            "speedup": b["seconds"] / max(s["seconds"], 1e-9)}
    examples = []
    for i in range(len(per_checkpoint[base])):
        row: dict[str, Any] = {"index": i}
        for label in labels:
            r = per_checkpoint[label][i]
            row[label] = {k: r[k] for k in ("tokens", "seconds", "text", "finish_reason")}
            if label != base:
                b = per_checkpoint[base][i]
                row[label]["tokens_ratio"] = r["tokens"] / max(b["tokens"], 1)
                row[label]["time_ratio"] = r["seconds"] / max(b["seconds"], 1e-9)
        examples.append(row)
    return {"baseline": base, "checkpoints": summary, "ratios": ratios}, examples

"""Tokenizer efficiency on held-out text (METHODS.md §5): `lepjax vocab report`.

For each tokenizer and each held-out file: tokens per word (words = whitespace-separated),
characters per token and tokens per sentence (one sentence per line), each without and with
special tokens (the BOS a model sees before every sentence). Written as `report.json` and a bar
chart `report.png` (one panel per measure, one bar per tokenizer and file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from lepjax.tokenizer import Tokenizer
from lepjax.vocab.corpus import iter_batches

MEASURES = ("tokens_per_word", "chars_per_token", "tokens_per_sentence")


def efficiency(tok: Tokenizer, files: Sequence[str], max_lines: int = 0,
               batch_size: int = 1000) -> dict[str, Any]:
    """Counts and fertility measures of `tok` on the lines of `files`."""
    sentences = words = chars = tokens = 0
    for batch in iter_batches(files, batch_size, max_lines):
        for text, ids in zip(batch, tok.encode(batch)):
            sentences += 1
            words += len(text.split())
            chars += len(text)
            tokens += len(ids)
    if not sentences:
        raise ValueError(f"held-out text {', '.join(files)} holds no non-blank line")
    specials = sentences if tok.bos_id is not None else 0
    out: dict[str, Any] = {"sentences": sentences, "words": words, "chars": chars,
                           "tokens": tokens, "special_tokens": specials}
    for suffix, n in (("", tokens), ("_with_special", tokens + specials)):
        out["tokens_per_word" + suffix] = n / max(words, 1)
        out["chars_per_token" + suffix] = chars / max(n, 1)
        out["tokens_per_sentence" + suffix] = n / sentences
    return out


def report(tokenizers: dict[str, Tokenizer], heldout: dict[str, Sequence[str]],
           max_lines: int = 0) -> dict[str, Any]:
    """{"results": {file label: {tokenizer label: measures}}, "ratios": after/before per measure}."""
    results: dict[str, dict[str, Any]] = {}
    for name, files in heldout.items():
        results[name] = {label: efficiency(tok, files, max_lines) for label, tok in tokenizers.items()}
    labels = list(tokenizers)
    ratios: dict[str, dict[str, float]] = {}
    if len(labels) >= 2:
        base = labels[0]
        for name, per in results.items():
            for label in labels[1:]:
                ratios[f"{name}: {label} / {base}"] = {
                    m: per[label][m] / per[base][m] for m in MEASURES}
    return {"tokenizers": {k: {"source": t.path, "vocab_size": t.vocab_size}
                           for k, t in tokenizers.items()},
            "results": results, "ratios": ratios}


def write_chart(rep: dict[str, Any], path: str) -> str:
    """A PNG bar chart of the three measures (no special tokens) per file and tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = list(rep["results"])
    labels = list(rep["tokenizers"])
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    width = 0.8 / max(len(labels), 1)
    for ax, measure in zip(axes, MEASURES):
        for j, label in enumerate(labels):
            values = [rep["results"][f][label][measure] for f in files]
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(files))]
            bars = ax.bar(xs, values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(files)), files, fontsize=8)
        ax.set_title(measure.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".partial.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(rep: dict[str, Any], directory: str, chart: bool = True) -> list[str]:
    """Write report.json (and report.png) into `directory`, each atomically."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "report.json")
    with open(path + ".partial", "w", encoding="utf-8") as f:
        json.dump(rep, f, indent=2, ensure_ascii=False)
    os.replace(path + ".partial", path)
    out = [path]
    if chart:
        out.append(write_chart(rep, os.path.join(directory, "report.png")))
    return out

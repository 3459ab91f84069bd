"""Tokenizer efficiency on held-out text (METHODS.md §5): `lepjax vocab report`.

For each tokenizer and each held-out file: tokens per word (words = whitespace-separated),
characters per token and tokens per sentence (one sentence per line), each without and with
special tokens (the BOS a model sees before every sentence). Written as `report.json` and a bar
chart `report.png` (one panel per measure, one bar per tokenizer and file). The counts are engine
tasks (lepjax.data.engine), one per tokenizer and chunk of held-out text, summed exactly.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lepjax import files
from lepjax.data.engine import Engine
from lepjax.tokenizer import Tokenizer
from lepjax.vocab.corpus import Chunk, chunk_batches, plan_chunks

MEASURES = ("tokens_per_word", "chars_per_token", "tokens_per_sentence")
COUNTS = ("sentences", "words", "chars", "tokens")


def efficiency_chunk(tokenizers: Sequence[Tokenizer], which: int, chunk: Chunk,
                     batch_size: int) -> dict[str, int]:
    """Engine task: the counts (sentences, words, chars, tokens) of tokenizer `which` on one
    chunk of held-out text (which it reads itself)."""
    tok = tokenizers[which]
    out = dict.fromkeys(COUNTS, 0)
    for batch in chunk_batches(chunk, batch_size):
        for text, ids in zip(batch, tok.encode(batch)):
            out["sentences"] += 1
            out["words"] += len(text.split())
            out["chars"] += len(text)
            out["tokens"] += len(ids)
    return out


def _measures(tok: Tokenizer, counts: dict[str, int], files: Sequence[str]) -> dict[str, Any]:
    sentences, words, chars, tokens = (counts[k] for k in COUNTS)
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


def efficiencies(tokenizers: Sequence[Tokenizer], heldout: dict[str, Sequence[str]],
                 max_lines: int = 0, batch_size: int = 1000, engine: Engine | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """{held-out name: [measures of each tokenizer]}: one `engine` task (None: in this process)
    per tokenizer and chunk of text; the integer counts are summed, so every engine gives the
    same numbers."""
    tasks, owner = [], []
    for name, files in heldout.items():
        for chunk in plan_chunks(files, max_lines):
            for j in range(len(tokenizers)):
                tasks.append((j, chunk, batch_size))
                owner.append((name, j))
    totals = {key: Counter(dict.fromkeys(COUNTS, 0)) for key in owner}
    for i, got in (engine or Engine(None, retries=0)).map(efficiency_chunk, tasks,
                                                          shared=(list(tokenizers),)):
        totals[owner[i]].update(got)
    return {name: [_measures(tok, totals.get((name, j), dict.fromkeys(COUNTS, 0)), files)
                   for j, tok in enumerate(tokenizers)] for name, files in heldout.items()}


def efficiency(tok: Tokenizer, files: Sequence[str], max_lines: int = 0,
               batch_size: int = 1000, engine: Engine | None = None) -> dict[str, Any]:
    """Counts and fertility measures of `tok` on the lines of `files`."""
    return efficiencies([tok], {"": files}, max_lines, batch_size, engine)[""][0]


def report(tokenizers: dict[str, Tokenizer], heldout: dict[str, Sequence[str]],
           max_lines: int = 0, engine: Engine | None = None) -> dict[str, Any]:
    """{"results": {file label: {tokenizer label: measures}}, "ratios": after/before per measure};
    counted on `engine` (None: in this process)."""
    labels = list(tokenizers)
    per = efficiencies(list(tokenizers.values()), heldout, max_lines, engine=engine)
    results = {name: dict(zip(labels, measures)) for name, measures in per.items()}
    ratios: dict[str, dict[str, float]] = {}
    if len(labels) >= 2:
        base = labels[0]
        for name, per_tok in results.items():
            for label in labels[1:]:
                ratios[f"{name}: {label} / {base}"] = {
                    m: per_tok[label][m] / per_tok[base][m] for m in MEASURES}
    return {"tokenizers": {k: {"source": t.path, "vocab_size": t.vocab_size}
                           for k, t in tokenizers.items()},
            "results": results, "ratios": ratios}


def write_chart(rep: dict[str, Any], path: str) -> str:
    """A PNG bar chart of the three measures (no special tokens) per file and tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = list(rep["results"])
    labels = list(rep["tokenizers"])
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    width = 0.8 / max(len(labels), 1)
    for ax, measure in zip(axes, MEASURES):
        for j, label in enumerate(labels):
            values = [rep["results"][f][label][measure] for f in inputs]
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(inputs))]
            bars = ax.bar(xs, values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(inputs)), inputs, fontsize=8)
        ax.set_title(measure.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = files.temp_path(path, ".png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(rep: dict[str, Any], directory: str, chart: bool = True) -> list[str]:
    """Write report.json (and report.png) into `directory`, each atomically."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "report.json")
    files.write_json(path, rep, sort_keys=False)
    out = [path]
    if chart:
        out.append(write_chart(rep, os.path.join(directory, "report.png")))
    return out

"""The evaluation report: results.json, a Markdown table and one PNG bar chart per metric.

Every number of the results is also a row (section, group, metric, {checkpoint: value}); the
Markdown file has one table per section with a column per checkpoint, and `charts/` holds one
chart per (section, metric): a group of bars per dataset or task, one bar per checkpoint.
Files are written aside and renamed, so a crash never leaves a half-written report. In a
multi-process evaluation every process computes the results and process 0 writes them.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from lepjax import files

LM_METRICS = ("bits_per_byte", "bits_per_char", "perplexity")
EFFICIENCY_METRICS = ("tokens_per_word", "chars_per_token", "tokens_per_sentence",
                      "ratio_to_english")
SPEED_METRICS = ("tokens_per_example", "seconds_per_example", "tokens_per_s", "speedup")
SECTION_TITLES = {"language_modelling": "Language modelling (held-out text)",
                  "efficiency": "Tokenizer efficiency", "tasks": "Tasks",
                  "speed": "Inference speed"}

Row = tuple[str, str, str, dict[str, float]]


def metric_rows(results: dict[str, Any]) -> list[Row]:
    """(section, group, metric, {checkpoint label: value}) for every reported number."""
    rows: list[Row] = []
    for section, names in (("language_modelling", LM_METRICS), ("efficiency", EFFICIENCY_METRICS)):
        for group, per in results.get(section, {}).items():
            for m in names:
                values = {lab: r[m] for lab, r in per.items() if m in r}
                if values:
                    rows.append((section, group, m, values))
    for group, entry in results.get("tasks", {}).items():
        metrics = list(dict.fromkeys(m for r in entry["results"].values() for m in r
                                     if m not in ("examples", "examples_per_s")))
        for m in metrics:
            rows.append(("tasks", group, m, {lab: r[m] for lab, r in entry["results"].items()}))
    speed = results.get("speed")
    if speed:
        base = speed["baseline"]
        for m in SPEED_METRICS[:-1]:
            values = {lab: s[m] for lab, s in speed["checkpoints"].items()}
            rows.append(("speed", "decode", m, values))
        speedup = {base: 1.0}
        speedup.update({k.split(" / ")[0]: v["speedup"] for k, v in speed["ratios"].items()})
        rows.append(("speed", "decode", "speedup", speedup))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}")
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: checkpoints, then one table per section."""
    labels = list(results["checkpoints"])
    lines = ["# Evaluation", "", "| checkpoint | path | vocabulary |", "| --- | --- | --- |"]
    for lab, info in results["checkpoints"].items():
        lines.append(f"| {lab} | {info['path']} | {info.get('tokenizer_vocab_size', '')} |")
    rows = metric_rows(results)
    for section, title in SECTION_TITLES.items():
        mine = [r for r in rows if r[0] == section]
        if not mine:
            continue
        lines += ["", f"## {title}", "", "| " + " | ".join(["data", "metric"] + labels) + " |",
                  "| " + " | ".join(["---"] * (2 + len(labels))) + " |"]
        for _, group, metric, values in mine:
            cells = [_fmt(values[lab]) if lab in values else "" for lab in labels]
            lines.append("| " + " | ".join([group, metric] + cells) + " |")
    speed = results.get("speed")
    if speed and speed["ratios"]:
        lines += ["", f"Speed ratios against {speed['baseline']} (tokens ratio < 1 and speedup > 1 "
                  "mean the other checkpoint is cheaper):", ""]
        for pair, r in speed["ratios"].items():
            lines.append(f"- {pair}: tokens ratio {r['tokens_ratio']:.3f}, time ratio "
                         f"{r['time_ratio']:.3f}, speedup {r['speedup']:.3f}")
    return "\n".join(lines) + "\n"


def chart(section: str, metric: str, groups: dict[str, dict[str, float]], labels: list[str],
          path: str) -> str:
    """One grouped bar chart (a group per dataset/task, a bar per checkpoint) as a PNG."""
    if not _writes():
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    width_in = max(4.0, 1.2 + 0.55 * len(names) * max(len(labels), 1))
    fig, ax = plt.subplots(figsize=(width_in, 3.6))
    width = 0.8 / max(len(labels), 1)
    for j, lab in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(names))]
        values = [groups[g].get(lab, float("nan")) for g in names]
        bars = ax.bar(xs, values, width, label=lab)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15 if len(names) > 3 else 0)
    ax.set_title(f"{SECTION_TITLES.get(section, section)}: {metric.replace('_', ' ')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = files.temp_path(path, ".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _writes() -> bool:
    """True on the process that writes the report (process 0 of a multi-process job)."""
    import jax

    return jax.process_index() == 0


def _atomic_text(path: str, text: str) -> str:
    if not _writes():
        return path
    with files.atomic_file(path) as f:
        f.write(text)
    return path


def write_report(results: dict[str, Any], directory: str, charts: bool = True) -> dict[str, Any]:
    """Write results.json, results.md and charts/<section>_<metric>.png; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    out: dict[str, Any] = {
        "json": _atomic_text(os.path.join(directory, "results.json"),
                             json.dumps(results, indent=2, ensure_ascii=False)),
        "markdown": _atomic_text(os.path.join(directory, "results.md"), markdown(results)),
        "charts": []}
    if charts:
        labels = list(results["checkpoints"])
        by_metric: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        for section, group, metric, values in metric_rows(results):
            by_metric.setdefault((section, metric), {})[group] = values
        os.makedirs(os.path.join(directory, "charts"), exist_ok=True)
        for (section, metric), groups in by_metric.items():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{section}_{metric}") + ".png"
            out["charts"].append(chart(section, metric, groups, labels,
                                       os.path.join(directory, "charts", name)))
    return out


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> str:
    """Per-example predictions, one JSON object a line (atomic)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _atomic_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

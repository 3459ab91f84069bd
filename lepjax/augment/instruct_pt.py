"""Instruction Pre-Training (Cheng et al. 2024): `lepjax augment instruct-pt`, library entry point
`synthesize(cfg)`.

  1. Selection: `synth.augment_fraction` of the raw texts (a seeded choice) are augmented; the
     others form the raw pool.
  2. Synthesis (shards of `chains_per_shard` chains under chains/, every round persisted): the
     augmented texts are split into M = `rounds` parts; chain j is text j of every part. In round
     r the synthesizer (the teacher, greedy, `max_new_tokens`) gets chain j's r-th text after the
     previous example (its prompt + parsed pairs, then the separator: the synthesizer's EOS and
     BOS tokens, or `separator_text`) when that example had pairs and the whole prompt plus
     `max_new_tokens` fits `context_tokens` (counted exactly with the synthesizer's tokenizer, BOS
     included); else the text alone, starting a new document. A text without pairs is never used
     as context. A text too long even alone is cut to fit. With `on_error=skip`, prompts the
     teacher fails on are recorded in the shard's report and left out; a rerun retries only them.
  3. Datasets (lepjax.augment.instruct_data): augmented documents (templified), raw texts and
     general instruction data ("{question} {response}") are written as *separate* token datasets
     under augmented/, raw/ and general/; `lepjax train` mixes them by tokens with `data.weights`
     (the summary's `data` block), repeating the smaller ones; nothing is subsampled away.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from lepjax.augment import instruct_data, instruct_tasks, shards
from lepjax.augment import instruct_format as fmt
from lepjax.augment.instruct_synth import Budget
from lepjax.augment.teacher import describe_teacher, run_shard_tasks
from lepjax.augment.teacher_api import Teacher
from lepjax.data import prepare, sources
from lepjax.data.engine import Engine, open_engine

log = logging.getLogger("lepjax.augment.instruct_pt")


def synth_section() -> ConfigDict:
    """The `synth` config section (instruction synthesis).

    Keys:
      inputs: raw domain text (files, globs, directories; tuple or comma-separated).
      format, text_mode, text_field: how to read them (see `lepjax prepare`: auto | text | jsonl
        | parquet; text files one document per `line` or per blank-line `paragraph`).
      general_inputs: general instruction data, JSONL with `question_field` / `response_field`.
      augment_fraction: share of the raw texts that are augmented (seeded choice); the rest are
        the raw pool. 1.0 = all (domain continued pre-training in the paper).
      rounds: M, texts chained into one document (and synthesis rounds).
      max_new_tokens: the synthesizer's output limit per text (greedy).
      context_tokens: the synthesizer's context: prompt + max_new_tokens must fit it.
      synthesizer_tokenizer: tokenizer that counts the budget ("" = teacher.path).
      separator: eos_bos (the synthesizer's EOS then BOS token between chained examples, as it
        was trained) | text (`separator_text`).
      chains_per_shard: chains per synthesis shard (the unit of resumption).
      on_error: fail | skip: prompts the teacher fails on (e.g. an HTTP 400) stop the run
        naming them (fail), or are recorded in the shard's report and left out (skip); a rerun
        retries only those. A round where every one of several prompts fails stops the run
        either way (the teacher is likely down).
      seed: text selection and template choice.
      weights: mixing weights by tokens of augmented, raw and general text, reported as the
        `data.weights` for `lepjax train` (0 = leave that dataset out of the suggestion).
      tokenizer: the student's tokenizer (file or model directory) for the token datasets.
      add_bos, add_eos: BOS / EOS around each document.
      output_dir: where chains/, augmented/, raw/ and general/ go.
      records_per_shard: documents per output shard.
    """
    return ConfigDict(dict(
        inputs=(), format="auto", text_mode="paragraph", text_field="text", general_inputs=(),
        question_field="question", response_field="response", augment_fraction=1.0, rounds=3,
        max_new_tokens=400, context_tokens=4096, synthesizer_tokenizer="", separator="eos_bos",
        separator_text="\n\n", chains_per_shard=256, on_error="fail", seed=0,
        weights=dict(augmented=1.0, raw=0.0, general=0.0), tokenizer="", add_bos=True,
        add_eos=True, output_dir="", records_per_shard=10000))


def select_texts(num_texts: int, fraction: float, seed: int) -> np.ndarray | None:
    """Indices (sorted, int64) of the texts to augment: round(fraction * n) of them, a seeded
    choice; None when that is every text (no index array at all)."""
    if not 0 < fraction <= 1:
        raise shards.AugmentError(f"synth.augment_fraction={fraction}: expected 0 < f <= 1")
    k = round(fraction * num_texts)
    if k >= num_texts:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_texts, k, replace=False))


def _list(v: Any) -> list[str]:
    return [p for p in v.split(",") if p.strip()] if isinstance(v, str) else list(v)


def text_spec(sc: Any) -> ConfigDict:
    """The raw text inputs as a `prepare`-style source spec (lepjax.data.sources)."""
    spec = ConfigDict(dict(inputs=tuple(_list(sc.inputs)), format=sc.format,
                           text_mode=sc.text_mode, text_field=sc.text_field, prompt_field="",
                           target_field="", tfds_name="", tfds_split="train", tfds_data_dir=""))
    if not spec.inputs:
        raise shards.AugmentError("synth.inputs is empty: name the raw text files")
    return spec


def _scan_engine(cfg: Any, teacher: Teacher | None):
    if teacher is not None or cfg.teacher.backend == "local":
        return Engine(None, retries=0)
    return open_engine(cfg.engine)


def _synth_done(out: str, index: int) -> dict | None:
    """The report of a finished synthesis shard without failed prompts (else None: run it)."""
    path = os.path.join(out, "chains", f"shard-{index:05d}", "report.json")
    if not (instruct_data.doc_shard_done(os.path.join(out, "augmented"), index)
            and os.path.isfile(path)):
        return None
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    return report if not report.get("failed") and "stats" in report else None


def synthesize(cfg: Any, *, teacher: Teacher | None = None, progress: bool | None = None
               ) -> dict[str, Any]:
    """Run (or resume) the instruction synthesis `cfg.synth` describes; returns a summary with the
    datasets written, their tokens, and the `data` paths/weights (and epochs per source) for
    `lepjax train`.

    One engine task (`cfg.engine`) per missing shard of augmented/, raw/ and general/ (see
    lepjax.augment.instruct_tasks); the driver holds the chunk plan and the augmented texts'
    index array, never the texts. `teacher` (an object) and the local backend run the tasks in
    this process; the teacher is made only if a shard needs it."""
    sc = cfg.synth
    progress = cfg.get("progress", True) if progress is None else progress
    for key in ("output_dir", "tokenizer"):
        if not sc[key]:
            raise shards.AugmentError(f"synth.{key} is not set")
    if sc.on_error not in ("fail", "skip"):
        raise shards.AugmentError(f"synth.on_error must be 'fail' or 'skip', got {sc.on_error!r}")
    if sc.chains_per_shard <= 0 or sc.records_per_shard <= 0:
        raise shards.AugmentError("synth.chains_per_shard and synth.records_per_shard must be "
                                  "positive")
    fmt.chain_prompt(None, "", sc.separator)  # validates the separator
    synth_tok_path = sc.synthesizer_tokenizer or cfg.teacher.path
    if not synth_tok_path:
        raise shards.AugmentError("set synth.synthesizer_tokenizer (or teacher.path): the "
                                  "context budget is counted in the synthesizer's tokens")
    budget = Budget(shards.tokenizer(synth_tok_path), sc.context_tokens, sc.max_new_tokens,
                    cfg.teacher.add_bos)
    tok = shards.tokenizer(sc.tokenizer)
    spec = text_spec(sc)
    fields = {k: spec[k] for k in sources.FIELDS}
    R = sc.records_per_shard
    general_inputs = _list(sc.general_inputs)
    num_general, general_digest, general_plan = shards.plan_jsonl(
        general_inputs, {"question": sc.question_field, "response": sc.response_field}, R,
        what="synth.general_inputs") if general_inputs else (0, "", [])
    with _scan_engine(cfg, teacher) as engine:
        chunks = prepare.scan(engine, spec)
    ends = np.cumsum([c["count"] for c in chunks]).tolist()
    num_texts = ends[-1] if ends else 0
    if not num_texts:
        raise shards.AugmentError(f"synth.inputs {list(spec.inputs)} hold no text")
    chosen = select_texts(num_texts, sc.augment_fraction, sc.seed)
    k = num_texts if chosen is None else len(chosen)
    weights = instruct_data.check_weights(sc, {"augmented": k > 0, "raw": k < num_texts,
                                               "general": num_general > 0})
    C = sc.chains_per_shard
    num_chains = math.ceil(k / sc.rounds)
    n_shards = {"augmented": math.ceil(num_chains / C), "general": len(general_plan),
                "raw": math.ceil((num_texts - k) / R)}
    out = os.path.abspath(sc.output_dir)
    shards.prepare_output(out, {
        "method": "instruct_pt", "texts": shards.sha(json.dumps(
            [[c.get("path"), c.get("count"), c.get("sha")] for c in chunks])),
        "texts_count": num_texts, "augment_fraction": sc.augment_fraction, "seed": sc.seed,
        "rounds": sc.rounds, "max_new_tokens": sc.max_new_tokens,
        "context_tokens": sc.context_tokens, "synthesizer_tokenizer": budget.tok.fingerprint(),
        "separator": sc.separator, "separator_text": sc.separator_text,
        "chains_per_shard": sc.chains_per_shard, "teacher_add_bos": cfg.teacher.add_bos,
        "general": general_digest, "tokenizer": tok.fingerprint(), "add_bos": sc.add_bos,
        "add_eos": sc.add_eos, "records_per_shard": R},
        subdirs=("chains", *(f"{s}/{d}" for s, n in n_shards.items() if n
                             for d in ("text", "tokens"))),
        teacher=describe_teacher(cfg))
    instruct_tasks.save_chosen(out, chosen)
    stats = {"texts": 0, "truncated": 0, "pairs": 0, "without_pairs": 0}
    tasks = []
    for s in range(n_shards["augmented"]):
        report = _synth_done(out, s)
        if report is not None:
            stats = {key: stats[key] + report["stats"][key] for key in stats}
        else:
            tasks.append(("synth", cfg, out, s, instruct_tasks.synth_task_spec(
                chunks, ends, chosen, k, sc.rounds, s * C, (s + 1) * C), fields))
    for i in range(n_shards["raw"]):
        if not instruct_data.doc_shard_done(os.path.join(out, "raw"), i):
            lo = instruct_tasks.raw_start(chosen, i * R)
            hi = instruct_tasks.raw_start(chosen, (i + 1) * R) \
                if (i + 1) * R < num_texts - k else num_texts
            tasks.append(("raw", cfg, out, i, {"range": [lo, hi], "pieces":
                          instruct_tasks.text_pieces(chunks, ends, lo, hi)}, fields))
    for i, pieces in enumerate(general_plan):
        if not instruct_data.doc_shard_done(os.path.join(out, "general"), i):
            tasks.append(("general", cfg, out, i, {"pieces": pieces}, fields))
    bar = tqdm(total=len(tasks), desc="instruct-pt shards", unit="shard", disable=not progress)
    start, failed, sent = time.perf_counter(), [], 0
    try:
        for _, got in run_shard_tasks(cfg, instruct_tasks.instruct_task, tasks, teacher=teacher,
                                      tokenizer=budget.tok):
            sent += got["sent"]
            if "error" in got:
                raise shards.AugmentError(got["error"])
            if got["kind"] == "synth":
                failed += got["failed"]
                stats = {key: stats[key] + got["stats"][key] for key in stats}
            bar.update(1)
            bar.set_postfix(prompts_s=f"{sent / (time.perf_counter() - start):.1f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    log.info("instruct-pt: %d shards, %d prompts sent to the synthesizer in %.1f s (%.2f "
             "prompts/s)", len(tasks), sent, seconds, sent / max(seconds, 1e-9))
    written = {s: instruct_data.finish_dataset(os.path.join(out, s), n, s, tok, sc)
               for s, n in n_shards.items() if n}
    summary = instruct_data.write_mixture(out, written, weights)
    summary.update(texts=num_texts, texts_augmented=k, chains=num_chains, prompts_sent=sent,
                   failed_prompts=failed, texts_truncated=stats["truncated"],
                   pairs=stats["pairs"], texts_without_pairs=stats["without_pairs"])
    return summary

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
from collections.abc import Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from lepjax.augment import shards
from lepjax.augment import instruct_format as fmt
from lepjax.augment.teacher_api import Part, Request, Special, Teacher, TeacherError
from lepjax.data import records

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


def plan_chains(num_texts: int, rounds: int, start: int = 0, stop: int | None = None
                ) -> list[list[int]]:
    """Positions (in the augmented texts) of chains `start`..`stop`: the texts split into
    `rounds` parts, chain j = the j-th of each part."""
    if rounds <= 0:
        raise shards.AugmentError("synth.rounds must be positive")
    per_part = math.ceil(num_texts / rounds)
    stop = per_part if stop is None else min(stop, per_part)
    return [[j + r * per_part for r in range(rounds) if j + r * per_part < num_texts]
            for j in range(start, stop)]


def select_texts(num_texts: int, fraction: float, seed: int) -> np.ndarray | None:
    """Indices (sorted, int64) of the texts to augment: round(fraction * n) of them, a seeded
    choice; None when that is every text (no index array at all)."""
    if not 0 < fraction <= 1:
        raise shards.AugmentError(f"synth.augment_fraction={fraction}: expected 0 < f <= 1")
    k = round(fraction * num_texts)
    if k >= num_texts:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_texts, k, replace=False))


class Budget:
    """Counts prompt tokens exactly with the synthesizer's tokenizer (text parts encoded as the
    local teacher does, one token per special part, BOS if the teacher adds it)."""

    def __init__(self, tokenizer: Any, context_tokens: int, max_new_tokens: int,
                 add_bos: bool = True):
        self.tok, self.context, self.max_new = tokenizer, context_tokens, max_new_tokens
        self.bos = 1 if add_bos else 0
        if self.count([fmt.synth_prompt("")]) + max_new_tokens > context_tokens:
            raise shards.AugmentError(
                f"synth.context_tokens={context_tokens} leaves no room for a text after "
                f"max_new_tokens={max_new_tokens}")

    def count(self, parts: Sequence[Part], bos: bool = True) -> int:
        """Tokens the synthesizer sees for these prompt parts."""
        texts = [p for p in parts if isinstance(p, str)]
        n = sum(map(len, self.tok.encode(texts))) if texts else 0
        return n + sum(isinstance(p, Special) for p in parts) + (self.bos if bos else 0)

    def fits(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` and the new tokens fit the context."""
        return tokens + self.max_new <= self.context

    def fit_text(self, text: str) -> tuple[str, bool]:
        """`text`, cut (by tokens) until its prompt fits alone; and whether it was cut."""
        if self.fits(self.count([fmt.synth_prompt(text)])):
            return text, False
        ids = self.tok.encode([text])[0]
        keep = self.context - self.max_new - self.count([fmt.synth_prompt("")])
        while keep > 0:
            cut = self.tok.decode(ids[:keep])
            excess = self.count([fmt.synth_prompt(cut)]) + self.max_new - self.context
            if excess <= 0:
                return cut, True
            keep -= max(1, excess)
        return "", True


class ShardSynthesis:
    """The rounds of one shard of chains, each round persisted under chains/shard-NNNNN/."""

    def __init__(self, directory: str, chain_texts: Sequence[Sequence[str]],
                 names: Sequence[Sequence[str]], budget: Budget, sc: Any):
        self.dir, self.texts, self.names, self.budget, self.sc = directory, chain_texts, names, \
            budget, sc
        self.sent = 0  # prompts sent to the teacher by this run
        os.makedirs(directory, exist_ok=True)

    def _path(self, r: int) -> str:
        return os.path.join(self.dir, f"round-{r}.json")

    def report_path(self) -> str:
        return os.path.join(self.dir, "report.json")

    def run(self, get_teacher, request: Request, skip: bool) -> tuple[list[list[dict]], list]:
        """(entries per chain, failed prompts): runs the rounds not yet persisted and retries
        failed prompts of those that are."""
        entries: list[list[dict[str, Any]]] = [[] for _ in self.texts]
        context: list[tuple[list[Part], int] | None] = [None] * len(self.texts)
        failed_all: list[dict[str, Any]] = []
        sep = [fmt.EOS, fmt.BOS] if self.sc.separator == "eos_bos" else [self.sc.separator_text]
        for r in range(max(map(len, self.texts), default=0)):
            active = [c for c in range(len(self.texts)) if r < len(self.texts[c])]
            stored = self._load(r)
            prompts, info = [], []
            for c in active:
                text, truncated = self.budget.fit_text(self.texts[c][r])
                own = [fmt.synth_prompt(text)]
                own_n = self.budget.count(own, bos=False)
                if stored is not None:
                    linked = stored[c]["linked"]
                else:
                    linked = context[c] is not None and self.budget.fits(
                        context[c][1] + self.budget.count(sep, bos=False) + own_n)
                if linked:
                    parts = [*context[c][0], *sep, *own]
                    n = context[c][1] + self.budget.count(sep, bos=False) + own_n
                else:
                    parts, n = own, self.budget.bos + own_n
                prompts.append(parts)
                info.append({"text": self.texts[c][r], "linked": linked, "truncated": truncated,
                             "prompt_tokens": n})
            outputs = [stored[c]["output"] if stored else None for c in active]
            errors = {k: stored[c].get("error", "") for k, c in enumerate(active)
                      if stored and outputs[k] is None}
            todo = [k for k, o in enumerate(outputs) if o is None]
            if todo:
                self.sent += len(todo)
                outputs, errors = self._complete(get_teacher(), prompts, todo, outputs, request,
                                                 [self.names[active[k]][r] for k in
                                                  range(len(active))], skip, r, info, active)
            self._save(r, active, info, outputs, errors)
            for k, c in enumerate(active):
                pairs = fmt.parse_pairs(outputs[k]) if outputs[k] is not None else []
                entries[c].append({**info[k], "pairs": [list(p) for p in pairs],
                                   "output": outputs[k]})
                if outputs[k] is None:
                    failed_all.append({"name": self.names[c][r], "chain": c, "round": r,
                                       "error": errors.get(k, "")})
                context[c] = ((prompts[k] + [fmt.format_pairs(pairs)],
                               info[k]["prompt_tokens"]
                               + self.budget.count([fmt.format_pairs(pairs)], bos=False))
                              if pairs else None)  # a pairless text ends the chain
        return entries, failed_all

    def _complete(self, teacher: Teacher, prompts, todo, outputs, request, names, skip, r, info,
                  active):
        errors: dict[int, str] = {}
        outputs = list(outputs)
        try:
            got = teacher.complete([prompts[k] for k in todo], request)
            for k, text in zip(todo, got):
                outputs[k] = text
        except TeacherError as e:
            for j, text in e.completed.items():
                outputs[todo[j]] = text
            errors = {todo[j]: e.errors.get(j, e.last_error) for j in e.failed}
            where = ", ".join(names[k] for k in sorted(errors)[:10])
            if not skip or (not e.completed and len(todo) > 1):  # the teacher is down
                self._save(r, active, info, outputs, errors)  # keep what did succeed
                raise shards.AugmentError(
                    f"teacher failed on {len(errors)} of {len(todo)} prompts ({where}) in "
                    f"{self.dir}: {e.last_error}. Completed prompts are kept; a rerun retries "
                    "only the failed ones" + ("" if skip else " (or set synth.on_error=skip)")
                ) from e
            log.warning("%s round %d: skipping %d prompts the teacher failed on (%s): %s",
                        self.dir, r, len(errors), where, e.last_error)
        return outputs, errors

    def _load(self, r: int) -> dict[int, dict[str, Any]] | None:
        if not os.path.isfile(self._path(r)):
            return None
        with open(self._path(r), encoding="utf-8") as f:
            return {e["chain"]: e for e in json.load(f)["entries"]}

    def _save(self, r, active, info, outputs, errors) -> None:
        records.write_json_atomic(self._path(r), {"entries": [
            {"chain": c, "linked": info[k]["linked"], "output": outputs[k],
             "error": errors.get(k) if outputs[k] is None else None}
            for k, c in enumerate(active)]})


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
    from lepjax.data.engine import Engine, open_engine

    if teacher is not None or cfg.teacher.backend == "local":
        return Engine(None, retries=0)
    return open_engine(cfg.engine)


def _synth_done(out: str, index: int) -> dict | None:
    """The report of a finished synthesis shard without failed prompts (else None: run it)."""
    from lepjax.augment import instruct_data

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
    from tqdm import tqdm

    from lepjax.augment import instruct_data, instruct_tasks
    from lepjax.augment.teacher import describe_teacher, run_shard_tasks
    from lepjax.data import prepare, sources

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

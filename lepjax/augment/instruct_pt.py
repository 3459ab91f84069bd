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
import random
import time
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from lepjax.augment import instruct_data, shards
from lepjax.augment import instruct_format as fmt
from lepjax.augment.teacher_api import Part, Request, Special, Teacher, TeacherError
from lepjax.data import records, sources
from lepjax.tokenizer import load_tokenizer

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


def plan_chains(num_texts: int, rounds: int) -> list[list[int]]:
    """Text indices per chain: the texts split into `rounds` parts, chain j = j-th of each."""
    if rounds <= 0:
        raise shards.AugmentError("synth.rounds must be positive")
    per_part = math.ceil(num_texts / rounds)
    return [[j + r * per_part for r in range(rounds) if j + r * per_part < num_texts]
            for j in range(per_part)]


def select_texts(num_texts: int, fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the texts to augment: round(fraction * n) of them, a seeded choice."""
    if not 0 < fraction <= 1:
        raise shards.AugmentError(f"synth.augment_fraction={fraction}: expected 0 < f <= 1")
    k = round(fraction * num_texts)
    return sorted(random.Random(seed).sample(range(num_texts), k)) if k < num_texts \
        else list(range(num_texts))


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
        records.write_json_atomic(self.report_path(), {"failed": failed_all})
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


def read_texts(sc: Any) -> list[str]:
    """The raw texts `synth.inputs` names, in a deterministic order."""
    spec = ConfigDict(dict(inputs=tuple(_list(sc.inputs)), format=sc.format,
                           text_mode=sc.text_mode, text_field=sc.text_field, prompt_field="",
                           target_field="", tfds_name="", tfds_split="train", tfds_data_dir=""))
    if not spec.inputs:
        raise shards.AugmentError("synth.inputs is empty: name the raw text files")
    texts = [ex["text"] for ex in sources.iterate(spec)]
    if not texts:
        raise shards.AugmentError(f"synth.inputs {list(spec.inputs)} hold no text")
    return texts


def _list(v: Any) -> list[str]:
    return [p for p in v.split(",") if p.strip()] if isinstance(v, str) else list(v)


def synthesize(cfg: Any, *, teacher: Teacher | None = None, progress: bool | None = None
               ) -> dict[str, Any]:
    """Run (or resume) the instruction synthesis `cfg.synth` describes; returns a summary with the
    datasets written, their tokens, and the `data` paths/weights (and epochs per source) for
    `lepjax train`. `teacher` defaults to the one `cfg.teacher` describes (made only if needed)."""
    from tqdm import tqdm

    from lepjax.augment.teacher import describe_teacher, make_teacher

    sc = cfg.synth
    progress = cfg.get("progress", True) if progress is None else progress
    for key in ("output_dir", "tokenizer"):
        if not sc[key]:
            raise shards.AugmentError(f"synth.{key} is not set")
    if sc.on_error not in ("fail", "skip"):
        raise shards.AugmentError(f"synth.on_error must be 'fail' or 'skip', got {sc.on_error!r}")
    fmt.chain_prompt(None, "", sc.separator)  # validates the separator
    texts = read_texts(sc)
    chosen = select_texts(len(texts), sc.augment_fraction, sc.seed)
    general = instruct_data.read_general(sc)
    tok = load_tokenizer(sc.tokenizer)
    synth_tok_path = sc.synthesizer_tokenizer or cfg.teacher.path
    if not synth_tok_path:
        raise shards.AugmentError("set synth.synthesizer_tokenizer (or teacher.path): the "
                                  "context budget is counted in the synthesizer's tokens")
    budget = Budget(load_tokenizer(synth_tok_path), sc.context_tokens, sc.max_new_tokens,
                    cfg.teacher.add_bos)
    out = os.path.abspath(sc.output_dir)
    (chains_dir,) = shards.prepare_output(out, {
        "method": "instruct_pt", "texts": shards.sha(repr(texts)), "chosen": shards.sha(
            repr(chosen)), "rounds": sc.rounds, "max_new_tokens": sc.max_new_tokens,
        "context_tokens": sc.context_tokens, "synthesizer_tokenizer": budget.tok.fingerprint(),
        "separator": sc.separator, "separator_text": sc.separator_text,
        "chains_per_shard": sc.chains_per_shard, "teacher_add_bos": cfg.teacher.add_bos},
        subdirs=("chains",), teacher=describe_teacher(cfg))
    plan = [[chosen[t] for t in chain] for chain in plan_chains(len(chosen), sc.rounds)]
    n = sc.chains_per_shard
    request = Request(max_new_tokens=sc.max_new_tokens, temperature=0.0)

    def get_teacher():
        nonlocal teacher
        if teacher is None:
            teacher = make_teacher(cfg, tokenizer=budget.tok)
        return teacher

    bar = tqdm(total=len(chosen), desc="instruct-pt synthesis", unit="text", disable=not progress)
    start, chains, failed, sent = time.perf_counter(), [], [], 0
    try:
        for index in range(math.ceil(len(plan) / n)):
            group = plan[index * n:(index + 1) * n]
            shard = ShardSynthesis(
                os.path.join(chains_dir, f"shard-{index:05d}"), [[texts[t] for t in c] for c in
                                                                 group],
                [[f"chain {index * n + j}, round {r} (text {t})" for r, t in enumerate(c)]
                 for j, c in enumerate(group)], budget, sc)
            try:
                entries, shard_failed = shard.run(get_teacher, request, sc.on_error == "skip")
            finally:
                sent += shard.sent
            chains += [{"index": index * n + j, "texts": c, "entries": es}
                       for j, (c, es) in enumerate(zip(group, entries))]
            failed += shard_failed
            bar.update(sum(map(len, group)))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    log.info("instruct-pt: %d prompts sent to the synthesizer in %.1f s (%.2f prompts/s)", sent,
             seconds, sent / max(seconds, 1e-9))
    augmented = set(chosen)
    raw = [t for i, t in enumerate(texts) if i not in augmented]  # the raw pool: the rest only
    summary = instruct_data.write_datasets(sc, out, chains, raw, general, tok, progress)
    summary.update(texts=len(texts), texts_augmented=len(chosen), chains=len(chains),
                   prompts_sent=sent, failed_prompts=failed,
                   texts_truncated=sum(e["truncated"] for c in chains for e in c["entries"]),
                   pairs=sum(len(e["pairs"]) for c in chains for e in c["entries"]),
                   texts_without_pairs=sum(not e["pairs"] and e["output"] is not None
                                           for c in chains for e in c["entries"]))
    return summary

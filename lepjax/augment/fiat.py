"""FIAT (Wang, Wieting, Clark 2023): a frozen teacher writes a chain-of-thought rationale for each
(x, y) example; an instruction-tuned student is LoRA-tuned to answer y from I_τ + x + rationale.

`lepjax augment fiat` reads (x, y) records from JSONL and, shard by shard of `records_per_shard`:

  1. the teacher greedily completes I_β with x in place of `{input}` -> rationale r
     (`max_new_tokens`, cut at the `stop` strings);
  2. text/ gets one JSON record per example: index, source (file:line), instruction (I_τ), input,
     rationale, target, prompt (the student's input: `task_template` filled with I_τ, x, r);
  3. tokens/ gets the prompt/target record (BOS + prompt, target_prefix + y + EOS; loss on the
     target only) in the student's tokenizer: pass tokens/ to `lepjax train` as data.paths.

A record whose prompt plus target does not fit `seq_len` (the student's training rows) is cut in
x only, never in the instruction, the rationale or the target, and marked `input_truncated`;
with `on_long=error` it is refused instead (the loader would otherwise split it and train the
answer without its prompt). Finished shards are skipped on a rerun (see lepjax.augment.shards);
`lepjax augment fiat-infer`
(lepjax.augment.fiat_infer) runs the teacher and then the tuned student on new inputs.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ml_collections import ConfigDict

from lepjax.augment import shards
from lepjax.augment.teacher_api import Request, Teacher
from lepjax.data import records, sources
from lepjax.data.prepare import tokenize_examples

log = logging.getLogger("lepjax.augment.fiat")

TASK_TEMPLATE = "{instruction}\n\nInput: {input}\n\nReasoning: {rationale}\n\nAnswer:"


def fiat_section() -> ConfigDict:
    """The `fiat` config section (augmentation and inference).

    Keys:
      inputs: JSONL files, globs or directories of (x, y) records (tuple or comma-separated).
      input_field, target_field: JSON keys of x and y (y is optional for inference).
      reasoning_prompt: I_β, a text file: the reasoning instruction and few-shot chain-of-thought
        exemplars, with `{input}` where x goes; the teacher continues it with the rationale.
      task_instruction: I_τ, the task instruction the student sees.
      task_template: the student's input, with {instruction} (I_τ), {input} (x), {rationale} (r).
      target_prefix: put before y in the target (e.g. " " after "Answer:").
      max_new_tokens, stop: the teacher's rationale length limit and stop strings (greedy).
      tokenizer: the student's tokenizer (file or model directory) for the tokens/ records.
      add_bos, add_eos: BOS before the prompt, EOS after the target.
      output_dir: where text/ and tokens/ go.
      records_per_shard: examples per shard (the unit of resumption; one engine task each, for
        fiat-infer's rationales too).
      seq_len: the student's training row length (`data.seq_len` of lora_tune): BOS + prompt +
        target + EOS must fit it.
      on_long: truncate | error: a record that does not fit `seq_len` is cut in x only
        (truncate), or refused with an error naming it (error).
      on_error: fail | skip: when the teacher fails on some records of a shard (e.g. a prompt
        beyond its context, an HTTP 400), stop with an error naming them (fail), or leave those
        records out of the shard and go on (skip; logged, counted in the summary). A shard where
        every record fails stops the run either way (the teacher is likely down).
      infer: inference (`lepjax augment fiat-infer`):
        student: the tuned student: a `lepjax train` run directory (LoRA merged) or a model dir.
        tokenizer: the student's tokenizer ("" = fiat.tokenizer, else the student directory).
        output: predictions JSONL to write (rationales and predictions are appended to
          OUTPUT.rationales/shard-NNNNN.jsonl (one engine task per shard of records_per_shard
          inputs) and OUTPUT.predictions.jsonl as they arrive; a rerun reuses them). An
          existing OUTPUT is refused unless `overwrite`; one of fiat.inputs always is.
        overwrite: replace an existing OUTPUT.
        max_new_tokens, stop: the student's answer length limit and stop strings (greedy).
        dtype, batch_size, length_bucket: how the student is decoded.
        lang: language of the normalisation of exact match and token F1 (English drops
          articles; lepjax.answers).
    """
    return ConfigDict(dict(
        inputs=(), input_field="input", target_field="target", reasoning_prompt="",
        task_instruction="", task_template=TASK_TEMPLATE, target_prefix=" ",
        max_new_tokens=256, stop=("\n\nInput:",), tokenizer="", add_bos=True, add_eos=True,
        output_dir="", records_per_shard=1000, on_error="fail", seq_len=2048, on_long="truncate",
        infer=dict(student="", tokenizer="", output="", max_new_tokens=64, stop=("\n",),
                   dtype="bfloat16", batch_size=16, length_bucket=64, lang="en",
                   overwrite=False)))



def load_reasoning_prompt(path: str) -> str:
    """I_β from its file; it must contain the `{input}` placeholder."""
    if not path:
        raise shards.AugmentError("fiat.reasoning_prompt is not set (the I_β prompt file)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fiat.reasoning_prompt {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if "{input}" not in text:
        raise shards.AugmentError(f"{path}: the reasoning prompt has no {{input}} placeholder "
                                  "where the example's input goes")
    return text


def teacher_prompt(reasoning_prompt: str, x: str) -> str:
    """I_β with x in place of `{input}`."""
    return reasoning_prompt.replace("{input}", x)


def student_prompt(section: Any, x: str, rationale: str) -> str:
    """The student's input I_τ + x + r, formatted by `task_template`."""
    try:
        return section.task_template.format(instruction=section.task_instruction, input=x,
                                            rationale=rationale)
    except (KeyError, IndexError, ValueError) as e:
        raise shards.AugmentError(
            f"fiat.task_template {section.task_template!r}: {e!r}; it may only use {{instruction}}, "
            "{input} and {rationale} (double other braces)") from None


def record_length(section: Any, tok: Any, prompt: str, target: str) -> int:
    """Tokens of the prompt/target record (BOS, prompt, target_prefix + target, EOS)."""
    ids, _ = next(tokenize_examples(tok, [{"prompt": prompt, "target": target}],
                                    section.add_bos, section.add_eos))
    return len(ids)


def fit_record(section: Any, tok: Any, x: str, rationale: str, target: str, limit: int,
               name: str) -> tuple[str, bool]:
    """(x, whether it was cut): x shortened by tokens until the record of I_τ + x + r and
    `target` has at most `limit` tokens; the instruction, rationale and target are never cut.
    Raises `AugmentError` naming the record under on_long=error, or when even an empty x does not
    fit."""
    if section.on_long not in ("truncate", "error"):
        raise shards.AugmentError(f"fiat.on_long must be 'truncate' or 'error', got "
                                  f"{section.on_long!r}")
    n = record_length(section, tok, student_prompt(section, x, rationale), target)
    if n <= limit:
        return x, False
    if section.on_long == "error":
        raise shards.AugmentError(f"{name}: prompt + target is {n} tokens, more than {limit} "
                                  "(fiat.seq_len); raise it, or set fiat.on_long=truncate to cut "
                                  "the input")
    ids = tok.encode([x])[0]
    keep = len(ids) - (n - limit)
    while keep > 0:
        cut = tok.decode(ids[:keep])
        excess = record_length(section, tok, student_prompt(section, cut, rationale), target) \
            - limit
        if excess <= 0:
            return cut, True
        keep -= max(1, excess)
    raise shards.AugmentError(f"{name}: the instruction, rationale and target alone need more "
                              f"than {limit} tokens (fiat.seq_len); raise it")


def teacher_request(section: Any) -> Request:
    """The teacher's greedy request for rationales."""
    return Request(max_new_tokens=section.max_new_tokens, temperature=0.0,
                   stop=tuple(section.stop))


def read_examples(section: Any, need_target: bool = True) -> list[dict[str, str]]:
    """The (x, y) records of `inputs` ({"input", "target", "source"})."""
    return shards.read_jsonl_records(
        section.inputs, {"input": section.input_field, "target": section.target_field},
        optional=() if need_target else ("target",), what="fiat.inputs")


def fiat_shard(cfg: Any, out: str, index: int, pieces: list, *, get_teacher=None
               ) -> dict[str, int]:
    """Engine task: shard `index` of a FIAT augmentation. Reads its records (`pieces` of the
    JSONL inputs, see shards.plan_jsonl) itself, asks the teacher for their rationales, writes
    text/ and tokens/ shard `index`; returns its counts, or {"error"} naming the bad record or
    the prompts the teacher failed on (a retry of the task would not help)."""
    try:
        return _fiat_shard(cfg, out, index, pieces, get_teacher)
    except shards.AugmentError as e:
        return {"error": str(e)}


def _fiat_shard(cfg: Any, out: str, index: int, pieces: list, get_teacher) -> dict[str, int]:
    from lepjax.augment.teacher import worker_teacher
    from lepjax.data.prepare import write_shard

    fc = cfg.fiat
    n = fc.records_per_shard
    tok = shards.tokenizer(fc.tokenizer)
    text_dir, tok_dir = os.path.join(out, "text"), os.path.join(out, "tokens")
    chunk = shards.read_jsonl_pieces(pieces, {"input": fc.input_field,
                                              "target": fc.target_field})
    failed = truncated = 0
    if records.shard_complete(text_dir, index):  # killed between the two writes
        rows = shards.read_text_shard(text_dir, index)
    else:
        teacher = get_teacher() if get_teacher is not None else worker_teacher(cfg)
        beta = load_reasoning_prompt(fc.reasoning_prompt)
        prompts = [teacher_prompt(beta, e["input"]) for e in chunk]
        names = [f"record {index * n + k} ({e['source']})" for k, e in enumerate(chunk)]
        rationales = shards.complete_shard(teacher, prompts, teacher_request(fc), index, names,
                                           skip_failed=fc.on_error == "skip")
        rows = []
        for k, (e, r) in enumerate(zip(chunk, rationales)):
            if r is None:
                failed += 1
                continue
            r = r.strip()
            x, cut = fit_record(fc, tok, e["input"], r, fc.target_prefix + e["target"],
                                fc.seq_len, names[k])
            truncated += cut
            rows.append({"index": index * n + k, "source": e["source"],
                         "instruction": fc.task_instruction, "input": e["input"],
                         "rationale": r, "target": e["target"], "input_truncated": cut,
                         "prompt": student_prompt(fc, x, r)})
        shards.write_text_shard(text_dir, index, rows)
    write_shard(tok_dir, index, [{"prompt": r["prompt"], "target": fc.target_prefix + r["target"]}
                                 for r in rows], fc.add_bos, fc.add_eos, tok)
    return {"records": len(chunk), "failed": failed, "truncated": truncated}


def augment(cfg: Any, *, teacher: Teacher | None = None, progress: bool | None = None
            ) -> dict[str, Any]:
    """Run (or resume) the FIAT augmentation `cfg.fiat` describes; returns a summary.

    One engine task (`cfg.engine`) per missing shard; each reads its own records. `teacher`
    (an object) and the local backend run the tasks in this process; the teacher is made only if
    a shard needs it. `progress` defaults to `cfg.progress`.
    """
    from tqdm import tqdm

    from lepjax.augment.teacher import describe_teacher, run_shard_tasks
    from lepjax.tokenizer import load_tokenizer

    fc = cfg.fiat
    progress = cfg.get("progress", True) if progress is None else progress
    for key in ("output_dir", "tokenizer"):
        if not fc[key]:
            raise shards.AugmentError(f"fiat.{key} is not set")
    if fc.records_per_shard <= 0:
        raise shards.AugmentError("fiat.records_per_shard must be positive")
    if fc.on_error not in ("fail", "skip"):
        raise shards.AugmentError(f"fiat.on_error must be 'fail' or 'skip', got {fc.on_error!r}")
    beta = load_reasoning_prompt(fc.reasoning_prompt)
    student_prompt(fc, "x", "r")  # template errors before any work
    n = fc.records_per_shard
    num_records, digest, plan = shards.plan_jsonl(
        fc.inputs, {"input": fc.input_field, "target": fc.target_field}, n, what="fiat.inputs")
    tok = load_tokenizer(fc.tokenizer)
    out = os.path.abspath(fc.output_dir)
    text_dir, tok_dir = shards.prepare_output(out, {
        "method": "fiat", "examples": digest,
        "reasoning_prompt": shards.sha(beta), "task_instruction": fc.task_instruction,
        "task_template": fc.task_template, "target_prefix": fc.target_prefix,
        "max_new_tokens": fc.max_new_tokens, "stop": list(fc.stop),
        "records_per_shard": fc.records_per_shard, "tokenizer": tok.fingerprint(),
        "add_bos": fc.add_bos, "add_eos": fc.add_eos, "seq_len": fc.seq_len,
        "on_long": fc.on_long}, teacher=describe_teacher(cfg))
    num_shards = len(plan)
    todo = [i for i in range(num_shards) if not shards.shard_done(out, i)]
    skipped = num_shards - len(todo)
    bar = tqdm(total=num_records, desc="fiat", unit="rec", disable=not progress)
    bar.update(num_records - sum(min(n, num_records - i * n) for i in todo))
    start, written, done_records = time.perf_counter(), 0, 0
    failed_records = truncated = 0
    try:
        for _, got in run_shard_tasks(cfg, fiat_shard, [(cfg, out, i, plan[i]) for i in todo],
                                      teacher=teacher):
            if "error" in got:
                raise shards.AugmentError(got["error"])
            written += 1
            done_records += got["records"]
            failed_records += got["failed"]
            truncated += got["truncated"]
            bar.update(got["records"])
            bar.set_postfix(shards=f"{skipped + written}/{num_shards}",
                            rec_s=f"{done_records / (time.perf_counter() - start):.2f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    complete = shards.finish(out, num_shards, text_kind="fiat_text", token_kind="prompt_target",
                             tok=tok, add_bos=fc.add_bos, add_eos=fc.add_eos, extra={
                                 "method": "fiat", "teacher": describe_teacher(cfg),
                                 "reasoning_prompt": os.path.abspath(fc.reasoning_prompt),
                                 "sources": [os.path.abspath(p) for p in
                                             sources.expand_inputs(list(_inputs(fc)))]})
    log.info("fiat: %d records in %d new shards (%d skipped) in %.1f s (%.2f records/s)",
             done_records, written, skipped, seconds, done_records / max(seconds, 1e-9))
    return {"output_dir": out, "text": text_dir, "tokens": tok_dir, "records": num_records,
            "shards_total": num_shards, "shards_written": written, "shards_skipped": skipped,
            "records_per_s": round(done_records / max(seconds, 1e-9), 3), "complete": complete,
            "records_failed_this_run": failed_records, "records_truncated_this_run": truncated}


def _inputs(section: Any) -> list[str]:
    inputs = section.inputs
    return [p for p in inputs.split(",") if p.strip()] if isinstance(inputs, str) else list(inputs)

"""FIAT inference (`lepjax augment fiat-infer`, library entry point `infer(cfg)`): the teacher
writes a rationale r for each input x, then the LoRA-tuned student answers I_τ + x + r (the same
prompt format it was tuned on, x cut as in training when the prompt would not fit
`fiat.seq_len` with the answer's `max_new_tokens`).

The rationales are engine tasks (`cfg.engine`), one per shard of `fiat.records_per_shard` inputs
that still misses some; each task reads its own inputs and appends its rationales to
OUTPUT.rationales/shard-NNNNN.jsonl as they arrive. The student then decodes in this process and
appends its predictions to OUTPUT.predictions.jsonl. Each line is keyed by input index and a hash
of its prompt and settings, so a run that is killed or whose teacher fails keeps what it had, and a
rerun sends only the rest. When every input is done, `fiat.infer.output` gets one JSON line per
input in input order, {"index", "source", "input", "rationale", "prompt", "prediction"[,
"target"]}, and the partial files go. With targets the summary reports exact match, accuracy and
token F1 (lepjax.answers).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from lepjax import answers, files
from lepjax.augment import fiat, shards
from lepjax.augment.teacher_api import Teacher, TeacherError

log = logging.getLogger("lepjax.augment.fiat_infer")


def load_student(section: Any, fallback_tokenizer: str = "", mesh=None, rules=None):
    """(model, tokenizer) of `fiat.infer.student`: a `lepjax train` run dir or a model dir."""
    from lepjax import models, parallel
    from lepjax.tokenizer import load_tokenizer

    path = section.student
    if not path:
        raise shards.AugmentError("fiat.infer.student is not set (the tuned student: a lepjax "
                                  "train run directory or a model directory)")
    rules = rules if rules is not None else parallel.DEFAULT_RULES
    tokenizer = section.tokenizer or fallback_tokenizer
    from lepjax.train.run import is_run_dir, load_run

    if is_run_dir(path):
        model = load_run(path, mesh=mesh, rules=rules, dtype=section.dtype)
        if not tokenizer:
            raise shards.AugmentError(f"{path} is a training run: set fiat.infer.tokenizer (or "
                                      "fiat.tokenizer) to the student's tokenizer")
    else:
        model, _ = models.load(path, dtype=section.dtype, mesh=mesh, rules=rules)
    tok = load_tokenizer(tokenizer or path)
    if tok.vocab_size > model.config.vocab_size:
        raise shards.AugmentError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the "
                                  f"student only {model.config.vocab_size} embedding rows")
    return model, tok


def read_rows(path: str, shas: Mapping[int, str]) -> dict[int, dict[str, Any]]:
    """The rows of an append-only JSONL of {"index", "sha", ...} whose hash still matches
    `shas[index]` (a line cut short by a kill, or of other inputs or settings, is ignored)."""
    done: dict[int, dict[str, Any]] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run
                i = row.get("index")
                if isinstance(i, int) and i in shas and row.get("sha") == shas[i]:
                    done[i] = row
    return done


class Appender:
    """An append-only JSONL of {"index", "sha", ...} rows (`read_rows`): the rows of a killed
    run are reused when their hash still matches."""

    def __init__(self, path: str, shas: Mapping[int, str]):
        self.path, self.shas = path, shas
        self.done = read_rows(path, shas)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        cut = False
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        self._file = open(path, "a", encoding="utf-8")
        if cut:
            self._file.write("\n")  # end the partial line a killed run left

    def add(self, i: int, **values: Any) -> None:
        """Append (and flush) the row of input `i`."""
        row = {"index": i, "sha": self.shas[i], **values}
        self.done[i] = row
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


FIELDS = {"input": "input_field", "target": "target_field"}


def _fields(fc: Any) -> dict[str, str]:
    return {name: fc[key] for name, key in FIELDS.items()}


def rationale_key(fc: Any, prompt: str) -> str:
    """The hash a rationale is kept under: its teacher prompt and request."""
    return shards.sha(json.dumps([prompt, fc.max_new_tokens, list(fc.stop)], ensure_ascii=False))


def shard_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"shard-{index:05d}.jsonl")


def rationale_shard(cfg: Any, directory: str, index: int, first: int, pieces: list, *,
                    get_teacher=None) -> dict[str, Any]:
    """Engine task: the rationales of inputs `first`, `first + 1`, ... (`pieces` of the JSONL
    inputs, see shards.plan_jsonl), which it reads itself. Those already in its shard file are
    kept; the teacher's others are appended as they arrive. Returns {"inputs", "asked"}, or
    {"error"} naming the inputs the teacher failed on (a retry of the task would not help)."""
    from lepjax.augment.teacher import worker_teacher

    fc = cfg.fiat
    beta = fiat.load_reasoning_prompt(fc.reasoning_prompt)
    chunk = shards.read_jsonl_pieces(pieces, _fields(fc), optional=("target",))
    prompts = [fiat.teacher_prompt(beta, e["input"]) for e in chunk]
    out = Appender(shard_path(directory, index),
                   {first + k: rationale_key(fc, p) for k, p in enumerate(prompts)})
    todo = [k for k in range(len(chunk)) if first + k not in out.done]
    try:
        if todo:
            teacher = get_teacher() if get_teacher is not None else worker_teacher(cfg)
            teacher.complete([prompts[k] for k in todo], fiat.teacher_request(fc),
                             on_result=lambda j, text: out.add(first + todo[j], rationale=text))
    except TeacherError as e:
        failed = [todo[j] for j in e.failed]
        where = ", ".join(f"input {first + k} ({chunk[k]['source']})" for k in failed[:10])
        return {"error": f"teacher failed on {len(failed)} of the {len(chunk)} inputs of shard "
                         f"{index} ({where}{', ...' if len(failed) > 10 else ''}): {e}"}
    finally:
        out.close()
    return {"inputs": len(chunk), "asked": len(todo)}


def _rationales(cfg: Any, examples: list[dict[str, str]], plan: list, directory: str,
                teacher: Teacher | None, progress: bool) -> tuple[list[str], dict[str, int]]:
    """The teacher's rationale of every example: one engine task per shard of the plan that
    misses some (the others are read back); returns them and the shard counts."""
    from tqdm import tqdm

    from lepjax.augment.teacher import run_shard_tasks

    fc = cfg.fiat
    beta = fiat.load_reasoning_prompt(fc.reasoning_prompt)
    keys = [rationale_key(fc, fiat.teacher_prompt(beta, e["input"])) for e in examples]
    n, found, todo = fc.records_per_shard, {}, []

    def shard_keys(i: int) -> dict[int, str]:
        return {k: keys[k] for k in range(i * n, min((i + 1) * n, len(examples)))}

    for i in range(len(plan)):
        rows = read_rows(shard_path(directory, i), shard_keys(i))
        found.update(rows)
        if len(rows) < len(shard_keys(i)):
            todo.append(i)
    if found:
        log.info("fiat-infer: %d rationales reused from %s", len(found), directory)
    os.makedirs(directory, exist_ok=True)
    bar = tqdm(total=len(examples), initial=len(found), desc="rationales", unit="input",
               disable=not progress)
    try:
        for _, got in run_shard_tasks(cfg, rationale_shard,
                                      [(cfg, directory, i, i * n, plan[i]) for i in todo],
                                      teacher=teacher):
            if "error" in got:
                raise shards.AugmentError(
                    f"{got['error']}. The rationales the teacher wrote are kept in {directory}; "
                    "a rerun only asks for the rest")
            bar.update(got["asked"])
    finally:
        bar.close()
    for i in todo:
        found.update(read_rows(shard_path(directory, i), shard_keys(i)))
    return ([found[k]["rationale"].strip() for k in range(len(examples))],
            {"shards_total": len(plan), "shards_run": len(todo)})


def score(rows: list[dict[str, Any]], lang: str = "en") -> dict[str, float]:
    """exact_match, accuracy and token_f1 (lepjax.answers): means over the rows that have a
    target."""
    scored = [r for r in rows if "target" in r]
    if not scored:
        return {}
    n = len(scored)
    return {"exact_match": round(sum(answers.exact_match(r["prediction"], r["target"], lang)
                                     for r in scored) / n, 4),
            "accuracy": round(sum(answers.accuracy(r["prediction"], r["target"])
                                  for r in scored) / n, 4),
            "token_f1": round(sum(answers.token_f1(r["prediction"], r["target"], lang)
                                  for r in scored) / n, 4)}


def infer(cfg: Any, *, teacher: Teacher | None = None, progress: bool | None = None
          ) -> dict[str, Any]:
    """Rationales from the teacher (on the engine), answers from the student (in this process);
    writes the predictions JSONL and returns a summary (with the metrics when the inputs have
    targets). `teacher` (an object) and the local backend run the rationale tasks in this
    process."""
    from lepjax import parallel
    from lepjax.generate import Generator, SamplingParams

    fc, ic = cfg.fiat, cfg.fiat.infer
    progress = cfg.get("progress", True) if progress is None else progress
    if not ic.output:
        raise shards.AugmentError("fiat.infer.output is not set (the predictions JSONL)")
    if fc.records_per_shard <= 0:
        raise shards.AugmentError("fiat.records_per_shard must be positive")
    out_path = os.path.abspath(ic.output)
    if os.path.realpath(out_path) in {os.path.realpath(p) for p in
                                      shards.input_files(fc.inputs, "fiat.inputs")}:
        raise shards.AugmentError(f"fiat.infer.output {out_path} is one of fiat.inputs: "
                                  "choose another file")
    if os.path.exists(out_path) and not ic.overwrite:
        raise shards.AugmentError(f"fiat.infer.output {out_path} exists; set "
                                  "fiat.infer.overwrite=true to replace it")
    fiat.load_reasoning_prompt(fc.reasoning_prompt)
    fiat.student_prompt(fc, "x", "r")
    _, _, plan = shards.plan_jsonl(fc.inputs, _fields(fc), fc.records_per_shard,
                                   optional=("target",), what="fiat.inputs")
    examples = fiat.read_examples(fc, need_target=False)
    mesh, rules = parallel.mesh_from_config(cfg.mesh) if "mesh" in cfg else (None, None)
    start = time.perf_counter()
    rationales_dir = out_path + ".rationales"
    rationales, counts = _rationales(cfg, examples, plan, rationales_dir, teacher, progress)
    teacher = None  # a local teacher's weights can go before the student loads
    teacher_s = time.perf_counter() - start
    model, tok = load_student(ic, fc.tokenizer, mesh, rules)
    prompts = []
    for k, (e, r) in enumerate(zip(examples, rationales)):
        x, _ = fiat.fit_record(fc, tok, e["input"], r, "", fc.seq_len - ic.max_new_tokens,
                               f"input {k} ({e['source']})")
        prompts.append(fiat.student_prompt(fc, x, r))
    preds_path = out_path + ".predictions.jsonl"
    settings = [os.path.abspath(ic.student), ic.max_new_tokens, list(ic.stop), ic.dtype]
    preds = Appender(preds_path, {i: shards.sha(json.dumps([p, *settings], ensure_ascii=False))
                                  for i, p in enumerate(prompts)})
    todo = [i for i in range(len(prompts)) if i not in preds.done]
    try:
        if todo:
            ids = tok.encode([prompts[i] for i in todo], add_bos=fc.add_bos)
            params = SamplingParams(max_new_tokens=ic.max_new_tokens, temperature=0.0,
                                    stop=tuple(ic.stop),
                                    eos_ids=tok.stop_ids)
            gen = Generator(model, mesh=mesh,
                            rules=rules if rules is not None else parallel.DEFAULT_RULES,
                            batch_size=ic.batch_size, length_bucket=ic.length_bucket,
                            vocab_limit=tok.vocab_size)
            for b in range(0, len(todo), ic.batch_size):
                outs = gen.generate(ids[b:b + ic.batch_size], params, tokenizer=tok)
                for i, o in zip(todo[b:b + ic.batch_size], outs):
                    preds.add(i, prediction=(o.text or "").strip())
    finally:
        preds.close()
    rows = []
    for k, (e, r, p) in enumerate(zip(examples, rationales, prompts)):
        row = {"index": k, "source": e["source"], "input": e["input"], "rationale": r,
               "prompt": p, "prediction": preds.done[k]["prediction"]}
        if "target" in e:
            row["target"] = e["target"]
        rows.append(row)
    with files.atomic_file(out_path) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    shutil.rmtree(rationales_dir)
    os.remove(preds_path)
    seconds = time.perf_counter() - start
    log.info("fiat-infer: %d inputs in %.1f s (teacher %.1f s; %.2f inputs/s)", len(examples),
             seconds, teacher_s, len(examples) / max(seconds, 1e-9))
    return {"output": out_path, "inputs": len(examples), **counts,
            "inputs_per_s": round(len(examples) / max(seconds, 1e-9), 3),
            **score(rows, ic.lang)}

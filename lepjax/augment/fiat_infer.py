"""FIAT inference (`lepjax augment fiat-infer`, library entry point `infer(cfg)`): the teacher
writes a rationale r for each input x, then the LoRA-tuned student answers I_τ + x + r (the same
prompt format it was tuned on, x cut as in training when the prompt would not fit
`fiat.seq_len` with the answer's `max_new_tokens`).

Rationales and predictions are appended to OUTPUT.rationales.jsonl and OUTPUT.predictions.jsonl
as they arrive (one JSON line each, keyed by input index and a hash of its prompt), so a run that
is killed or whose teacher fails keeps them, and a rerun sends only the rest. When every input is
done, `fiat.infer.output` gets one JSON line per input in input order, {"index", "source",
"input", "rationale", "prompt", "prediction"[, "target"]}, and the two partial files go. With
targets the summary reports exact match (stripped strings equal), accuracy (equal after SQuAD
normalisation: case, punctuation, English articles, spaces) and token F1 (SQuAD's bag-of-tokens
F1).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import unicodedata
from collections import Counter
from typing import Any

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


class Appender:
    """An append-only JSONL of {"index", "sha", ...} rows: rows of a killed run are reused when
    their prompt hash still matches; a line cut short by a kill is ignored."""

    def __init__(self, path: str, shas: list[str]):
        self.path, self.shas, self.done = path, shas, {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the last line of a killed run
                    i = row.get("index")
                    if isinstance(i, int) and i < len(shas) and row.get("sha") == shas[i]:
                        self.done[i] = row
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


def _rationales(teacher_fn, prompts: list[str], request: Any, path: str,
                sources: list[str], progress: bool) -> list[str]:
    """The teacher's rationales, appended to `path` as they arrive; those already there (for the
    same prompts) are reused."""
    log_ = Appender(path, [shards.sha(p) for p in prompts])
    if log_.done:
        log.info("fiat-infer: %d rationales reused from %s", len(log_.done), path)
    todo = [i for i in range(len(prompts)) if i not in log_.done]
    try:
        if todo:
            teacher_fn().complete([prompts[i] for i in todo], request, progress=progress,
                                  on_result=lambda k, text: log_.add(todo[k], rationale=text))
    except TeacherError as e:
        failed = [todo[k] for k in e.failed]
        where = ", ".join(f"input {i} ({sources[i]})" for i in failed[:10])
        raise shards.AugmentError(
            f"teacher failed on {len(failed)} of {len(prompts)} inputs ({where}): {e}. The "
            f"{len(log_.done)} rationales it wrote are kept in {path}; a rerun only asks for the "
            "rest") from e
    finally:
        log_.close()
    return [log_.done[i]["rationale"].strip() for i in range(len(prompts))]


ARTICLES = {"en": re.compile(r"\b(a|an|the)\b")}


def normalize_answer(text: str, lang: str = "en") -> str:
    """SQuAD-style: lower-case, no (Unicode) punctuation, no English articles, single spaces."""
    text = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    if lang in ARTICLES:
        text = ARTICLES[lang].sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, target: str, lang: str = "en") -> float:
    """SQuAD's bag-of-tokens F1 of the normalised prediction against the normalised target."""
    pred, ref = normalize_answer(prediction, lang).split(), normalize_answer(target, lang).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    return 0.0 if not common else 2 * common / (len(pred) + len(ref))


def score(rows: list[dict[str, Any]], lang: str = "en") -> dict[str, float]:
    """exact_match (stripped strings equal), accuracy (equal after `normalize_answer`) and
    token_f1: means over the rows that have a target. (The same definitions as
    lepjax.eval.metrics, which augment may not import.)"""
    scored = [r for r in rows if "target" in r]
    if not scored:
        return {}
    n = len(scored)
    return {"exact_match": round(sum(r["prediction"] == r["target"].strip()
                                     for r in scored) / n, 4),
            "accuracy": round(sum(normalize_answer(r["prediction"], lang)
                                  == normalize_answer(r["target"], lang) for r in scored) / n, 4),
            "token_f1": round(sum(token_f1(r["prediction"], r["target"], lang)
                                  for r in scored) / n, 4)}


def infer(cfg: Any, *, teacher: Teacher | None = None, progress: bool | None = None
          ) -> dict[str, Any]:
    """Rationales from the teacher, answers from the student; writes the predictions JSONL and
    returns a summary (with the metrics when the inputs have targets)."""
    from lepjax import parallel
    from lepjax.augment.teacher import make_teacher
    from lepjax.generate import Generator, SamplingParams

    fc, ic = cfg.fiat, cfg.fiat.infer
    progress = cfg.get("progress", True) if progress is None else progress
    if not ic.output:
        raise shards.AugmentError("fiat.infer.output is not set (the predictions JSONL)")
    beta = fiat.load_reasoning_prompt(fc.reasoning_prompt)
    fiat.student_prompt(fc, "x", "r")
    examples = fiat.read_examples(fc, need_target=False)
    mesh, rules = parallel.mesh_from_config(cfg.mesh) if "mesh" in cfg else (None, None)
    start = time.perf_counter()
    out_path = os.path.abspath(ic.output)

    def get_teacher() -> Teacher:
        nonlocal teacher
        if teacher is None:
            teacher = make_teacher(cfg)
        return teacher

    rationales_path = out_path + ".rationales.jsonl"
    rationales = _rationales(get_teacher, [fiat.teacher_prompt(beta, e["input"])
                                           for e in examples],
                             fiat.teacher_request(fc), rationales_path,
                             [e["source"] for e in examples], progress)
    teacher = None  # a local teacher's weights can go before the student loads
    teacher_s = time.perf_counter() - start
    model, tok = load_student(ic, fc.tokenizer, mesh, rules)
    prompts = []
    for k, (e, r) in enumerate(zip(examples, rationales)):
        x, _ = fiat.fit_record(fc, tok, e["input"], r, "", fc.seq_len - ic.max_new_tokens,
                               f"input {k} ({e['source']})")
        prompts.append(fiat.student_prompt(fc, x, r))
    preds_path = out_path + ".predictions.jsonl"
    preds = Appender(preds_path, [shards.sha(p) for p in prompts])
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
    tmp = out_path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, out_path)
    for path in (rationales_path, preds_path):
        os.remove(path)
    seconds = time.perf_counter() - start
    log.info("fiat-infer: %d inputs in %.1f s (teacher %.1f s; %.2f inputs/s)", len(examples),
             seconds, teacher_s, len(examples) / max(seconds, 1e-9))
    return {"output": out_path, "inputs": len(examples),
            "inputs_per_s": round(len(examples) / max(seconds, 1e-9), 3),
            **score(rows, ic.lang)}

"""FIAT inference (`lepjax augment fiat-infer`): the teacher writes a rationale r for each input x,
then the LoRA-tuned student answers I_τ + x + r (the same prompt format it was tuned on).

Writes `fiat.infer.output`, one JSON line per input in input order:
{"index", "source", "input", "rationale", "prompt", "prediction"[, "target"]}; with targets the
summary reports exact match (predictions and targets compared after stripping whitespace).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from lepjax.augment import fiat, shards
from lepjax.augment.teacher import Teacher

log = logging.getLogger("lepjax.augment.fiat_infer")


def load_student(section: Any, fallback_tokenizer: str = "", mesh=None, rules=None):
    """(model, tokenizer) of `fiat.infer.student`: a `lepjax train` run dir or a model dir."""
    from lepjax import models, parallel
    from lepjax.data.tokenizer import load_tokenizer

    path = section.student
    if not path:
        raise shards.AugmentError("fiat.infer.student is not set (the tuned student: a lepjax "
                                  "train run directory or a model directory)")
    rules = rules if rules is not None else parallel.DEFAULT_RULES
    tokenizer = section.tokenizer or fallback_tokenizer
    if os.path.isfile(os.path.join(path, "run_model.json")):
        from lepjax.train.loop import load_run

        model = load_run(path, mesh=mesh, rules=rules)
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


def infer(cfg: Any, *, teacher: Teacher | None = None, progress: bool = True) -> dict[str, Any]:
    """Rationales from the teacher, answers from the student; writes the predictions JSONL."""
    from lepjax import models, parallel
    from lepjax.generate import Generator, SamplingParams

    fc, ic = cfg.fiat, cfg.fiat.infer
    if not ic.output:
        raise shards.AugmentError("fiat.infer.output is not set (the predictions JSONL)")
    beta = fiat.load_reasoning_prompt(fc.reasoning_prompt)
    fiat.student_prompt(fc, "x", "r")
    examples = fiat.read_examples(fc, need_target=False)
    mesh, rules = parallel.mesh_from_config(cfg.mesh) if "mesh" in cfg else (None, None)
    start = time.perf_counter()
    if teacher is None:
        from lepjax.augment.teacher import make_teacher

        teacher = make_teacher(cfg.teacher, mesh=mesh, rules=rules)
    out_path = os.path.abspath(ic.output)
    rationales = _rationales(teacher, [fiat.teacher_prompt(beta, e["input"]) for e in examples],
                             fiat.teacher_request(fc), out_path + ".rationales.jsonl",
                             [e["source"] for e in examples], progress)
    teacher = None  # a local teacher's weights can go before the student loads
    teacher_s = time.perf_counter() - start
    model, tok = load_student(ic, fc.tokenizer, mesh, rules)
    prompts = [fiat.student_prompt(fc, e["input"], r) for e, r in zip(examples, rationales)]
    bos = [tok.bos_id] if fc.add_bos and tok.bos_id is not None else []
    ids = [bos + p for p in tok.encode_batch(prompts)]
    params = SamplingParams(max_new_tokens=ic.max_new_tokens, temperature=0.0, stop=tuple(ic.stop),
                            eos_ids=(tok.eos_id,) if tok.eos_id is not None else ())
    gen = Generator(model, mesh=mesh, rules=rules if rules is not None else _rules(),
                    batch_size=ic.batch_size, length_bucket=ic.length_bucket)
    outs = gen.generate(ids, params, tokenizer=tok, progress=progress)
    tmp = out_path + f".tmp{os.getpid()}"
    matches = scored = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for k, (e, r, p, o) in enumerate(zip(examples, rationales, prompts, outs)):
            row = {"index": k, "source": e["source"], "input": e["input"], "rationale": r,
                   "prompt": p, "prediction": (o.text or "").strip()}
            if "target" in e:
                row["target"] = e["target"]
                scored += 1
                matches += row["prediction"] == e["target"].strip()
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    if os.path.exists(out_path + ".rationales.jsonl"):
        os.remove(out_path + ".rationales.jsonl")
    seconds = time.perf_counter() - start
    log.info("fiat-infer: %d inputs in %.1f s (teacher %.1f s; %.2f inputs/s)", len(examples),
             seconds, teacher_s, len(examples) / max(seconds, 1e-9))
    summary = {"output": out_path, "inputs": len(examples),
               "inputs_per_s": round(len(examples) / max(seconds, 1e-9), 3)}
    if scored:
        summary["exact_match"] = round(matches / scored, 4)
    return summary


def _rationales(teacher: Teacher, prompts: list[str], request: Any, cache: str,
                sources: list[str], progress: bool) -> list[str]:
    """The teacher's rationales; those already in `cache` (from a run that failed part-way, for
    the same prompts) are reused, and when prompts fail the completed ones are saved there."""
    from lepjax.augment.teacher import TeacherError

    done: dict[int, str] = {}
    if os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                i = row["index"]
                if i < len(prompts) and row["prompt_sha"] == shards.sha(prompts[i]):
                    done[i] = row["rationale"]
        log.info("fiat-infer: %d rationales reused from %s", len(done), cache)
    todo = [i for i in range(len(prompts)) if i not in done]
    try:
        got = teacher.complete([prompts[i] for i in todo], request, progress=progress) \
            if todo else []
        done.update(zip(todo, got))
    except TeacherError as e:
        done.update({todo[k]: text for k, text in e.completed.items()})
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "w", encoding="utf-8") as f:
            for i in sorted(done):
                f.write(json.dumps({"index": i, "prompt_sha": shards.sha(prompts[i]),
                                    "rationale": done[i]}, ensure_ascii=False) + "\n")
        os.replace(cache + ".tmp", cache)
        failed = [todo[k] for k in e.failed]
        where = ", ".join(f"input {i} ({sources[i]})" for i in failed[:10])
        raise shards.AugmentError(
            f"teacher failed on {len(failed)} of {len(prompts)} inputs ({where}): {e}. The "
            f"{len(done)} rationales it wrote are kept in {cache}; a rerun only asks for the "
            "rest") from e
    return [done[i].strip() for i in range(len(prompts))]


def _rules():
    from lepjax import parallel

    return parallel.DEFAULT_RULES

"""Score one prompt task with one checkpoint: multiple choice by log-likelihood, or generation.

Multiple choice: every choice is scored as a continuation of the prompt (after the template's
delimiter); `acc` takes the choice with the highest summed log-likelihood, `acc_norm` the highest
log-likelihood per character of the choice, as lm-evaluation-harness does (it divides by the
choice string's length), so long answers are not penalised for having more tokens.

Generation: the prompt is decoded greedily until EOS, a stop string or `max_new_tokens`; the
stripped completion is compared with the gold answers by exact match, token F1, ROUGE-L (mean
over examples) and chrF (corpus-level; per-example values go to the predictions).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from lepjax.eval import metrics as M
from lepjax.eval.loglik import Scorer, continuation_logliks
from lepjax.eval.tasks import Example, Task, build_context

log = logging.getLogger("lepjax.eval")


def contexts(task: Task, examples: list[Example], pool: list[Example],
             pool_is_eval: bool) -> list[str]:
    """The full prompt (few-shot examples included) of each example."""
    return [build_context(task, ex, i, pool, pool_is_eval) for i, ex in enumerate(examples)]


def score_multiple_choice(task: Task, examples: list[Example], prompts: list[str],
                          scorer: Scorer, tokenizer, progress: bool = True,
                          ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(acc / acc_norm, per-example predictions) of a multiple-choice task."""
    requests, owner = [], []
    for i, (ex, ctx) in enumerate(zip(examples, prompts)):
        for choice in ex.choices:
            requests.append((ctx, task.delimiter + choice))
            owner.append(i)
    scores = continuation_logliks(scorer, tokenizer, requests, progress=progress,
                                  desc=f"{task.name} ({task.lang})")
    per: list[list[float]] = [[] for _ in examples]
    for i, (ll, _) in zip(owner, scores):
        per[i].append(ll)
    preds, hits, hits_norm = [], 0, 0
    for ex, ctx, lls in zip(examples, prompts, per):
        lls_arr = np.asarray(lls)
        lengths = np.asarray([max(len(c), 1) for c in ex.choices], np.float64)
        pred, pred_norm = int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))
        hits += pred == ex.label
        hits_norm += pred_norm == ex.label
        preds.append({"source": ex.source, "line": ex.line, "prompt": ctx,
                      "choices": list(ex.choices), "label": ex.label, "pred": pred,
                      "pred_norm": pred_norm, "logliks": lls})
    n = len(examples)
    result = {"acc": hits / n, "acc_norm": hits_norm / n}
    return {k: v for k, v in result.items() if k in task.metrics}, preds


def score_generation(task: Task, examples: list[Example], prompts: list[str], generator,
                     tokenizer, max_len: int, progress: bool = True,
                     ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(exact_match / f1 / rouge_l / chrf, per-example predictions) of a generation task.

    Prompts longer than `max_len - max_new_tokens` tokens lose tokens on the left (BOS kept).
    """
    from lepjax.generate import SamplingParams

    bos = tokenizer.bos_prefix()
    budget = max_len - task.max_new_tokens
    if budget <= len(bos):
        raise ValueError(f"task {task.name}: max_new_tokens={task.max_new_tokens} leaves no room "
                         f"for a prompt within max_len={max_len}")
    ids = []
    for p in tokenizer.encode(prompts):
        ids.append(bos + p[max(0, len(bos) + len(p) - budget):])
    params = SamplingParams(max_new_tokens=task.max_new_tokens, stop=tuple(task.stop),
                            eos_ids=tokenizer.stop_ids)
    outs = generator.generate(ids, params, tokenizer=tokenizer, progress=progress)
    texts = [(c.text or "").strip() for c in outs]
    sums = {m: 0.0 for m in M.EXAMPLE_METRICS}
    preds = []
    for ex, ctx, text, c in zip(examples, prompts, texts, outs):
        row = {m: fn(text, ex.golds, task.lang) for m, fn in M.EXAMPLE_METRICS.items()}
        if "chrf" in task.metrics:
            row["chrf"] = M.chrf(text, ex.golds)
        for m in sums:
            sums[m] += row[m]
        preds.append({"source": ex.source, "line": ex.line, "prompt": ctx, "prediction": text,
                      "golds": list(ex.golds), "tokens": len(c.tokens),
                      "finish_reason": c.finish_reason, **row})
    n = len(examples)
    result = {m: v / n for m, v in sums.items()}
    if "chrf" in task.metrics:
        result["chrf"] = M.corpus_chrf(texts, [ex.golds for ex in examples])
    return {k: v for k, v in result.items() if k in task.metrics}, preds


def evaluate_task(task: Task, examples: list[Example], pool: list[Example], pool_is_eval: bool,
                  *, scorer: Scorer, generator, tokenizer, max_len: int, progress: bool = True,
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score `examples` of `task`; returns (metrics + examples + examples_per_s, predictions)."""
    start = time.perf_counter()
    prompts = contexts(task, examples, pool, pool_is_eval)
    if task.kind == "multiple_choice":
        result, preds = score_multiple_choice(task, examples, prompts, scorer, tokenizer, progress)
    else:
        result, preds = score_generation(task, examples, prompts, generator, tokenizer, max_len,
                                         progress)
    seconds = max(time.perf_counter() - start, 1e-9)
    log.info("task %s (%s): %d examples in %.1f s (%.2f examples/s): %s", task.name, task.lang,
             len(examples), seconds, len(examples) / seconds,
             ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return {**result, "examples": len(examples), "examples_per_s": len(examples) / seconds}, preds

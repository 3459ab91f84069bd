"""The engine tasks of `augment instruct-pt` and the plan they follow.

The driver scans the raw text into chunks (lepjax.data.prepare.scan: file, byte range, count),
picks the augmented texts (an index array saved as chains/chosen.npy, none when every text is
augmented) and cuts the work into tasks that *name* their inputs, each writing one shard:

  synth    synthesis shard s: chains s*C .. (s+1)*C-1 (C = chains_per_shard). For every round
           the task reads the range of raw texts its chains use, runs the rounds (persisted under
           chains/shard-NNNNN, see instruct_synth.ShardSynthesis; every request holds a lease of
           the teacher's cluster-wide semaphore, and the shards of the other workers keep the
           servers busy while this one waits for its slowest request), templifies its chains
           and writes augmented/ shard s.
  raw      raw shard i: the i-th `records_per_shard` texts that are not augmented.
  general  general shard i: the i-th `records_per_shard` records of synth.general_inputs.

A worker holds one shard's texts at a time; nothing of the corpus travels from the driver.
"""

from __future__ import annotations

import bisect
import math
import os
from itertools import islice
from typing import Any

import numpy as np

from lepjax import files
from lepjax.augment import instruct_data, shards
from lepjax.augment import instruct_format as fmt
from lepjax.augment.instruct_synth import Budget, ShardSynthesis, plan_chains
from lepjax.augment.teacher import worker_teacher
from lepjax.augment.teacher_api import Request
from lepjax.data import records, sources

CHOSEN = "chosen.npy"


def text_pieces(chunks: list[dict], ends: list[int], start: int, stop: int) -> list[dict]:
    """The pieces of the chunks (`ends`: their cumulative counts) holding texts [start, stop);
    each a chunk with `skip`, `take` and the index of its `first` text."""
    pieces = []
    i = bisect.bisect_right(ends, start)
    while start < stop:
        begin = ends[i - 1] if i else 0
        take = min(stop, ends[i]) - start
        pieces.append({**chunks[i], "skip": start - begin, "take": take, "first": start})
        start += take
        i += 1
    return pieces


def read_pieces(pieces: list[dict], fields: dict[str, str]):
    """(text index, text) of every text of `pieces`, in order (read where the task runs)."""
    for p in pieces:
        got = 0
        for k, ex in enumerate(islice(sources.read_chunk(p, fields), p["skip"],
                                      p["skip"] + p["take"])):
            got += 1
            yield p["first"] + k, ex["text"]
        if got != p["take"]:
            raise records.DataError(f"{p.get('path')} changed while being augmented (fewer texts "
                                    "than when scanned)")


def load_chosen(out: str) -> np.ndarray | None:
    """The augmented texts' indices (memory-mapped), or None when every text is augmented."""
    path = os.path.join(out, "chains", CHOSEN)
    return np.load(path, mmap_mode="r") if os.path.isfile(path) else None


def save_chosen(out: str, chosen: np.ndarray | None) -> None:
    """Save (atomically) the augmented texts' indices for the workers."""
    path = os.path.join(out, "chains", CHOSEN)
    if chosen is None:
        if os.path.isfile(path):
            os.remove(path)
        return
    with files.atomic_file(path, "wb") as f:
        np.save(f, chosen)


def raw_start(chosen: np.ndarray, q: int) -> int:
    """The index of the q-th text that is not augmented (0-based)."""
    lo, hi = q, q + len(chosen)  # it lies in [q, q + chosen]
    while lo < hi:  # the first t with t + 1 - (chosen <= t) > q
        mid = (lo + hi) // 2
        if mid + 1 - int(np.searchsorted(chosen, mid, side="right")) > q:
            hi = mid
        else:
            lo = mid + 1
    return lo


def synth_task_spec(chunks: list[dict], ends: list[int], chosen: np.ndarray | None, k: int,
                    rounds: int, start: int, stop: int) -> dict[str, Any]:
    """What synthesis task for chains [start, stop) reads: per round, the pieces of the range of
    raw texts its chains use there."""
    per_part = math.ceil(k / rounds)
    round_pieces = []
    for r in range(rounds):
        lo, hi = start + r * per_part, min(stop + r * per_part, k)
        if lo >= hi:
            break
        a, b = (lo, hi) if chosen is None else (int(chosen[lo]), int(chosen[hi - 1]) + 1)
        round_pieces.append(text_pieces(chunks, ends, a, b))
    return {"chains": [start, stop], "augmented": k, "round_pieces": round_pieces}


def synth_shard(cfg: Any, out: str, index: int, spec: dict, fields: dict, get_teacher=None
                ) -> dict[str, Any]:
    """Engine task: synthesis shard `index` (see the module docstring)."""
    sc = cfg.synth
    synth_tok = sc.synthesizer_tokenizer or cfg.teacher.path
    start, stop = spec["chains"]
    chosen = load_chosen(out)
    plan = plan_chains(spec["augmented"], sc.rounds, start, stop)
    plan = [[int(p) if chosen is None else int(chosen[p]) for p in chain] for chain in plan]
    texts: dict[int, str] = {}
    for r, pieces in enumerate(spec["round_pieces"]):
        wanted = {chain[r] for chain in plan if r < len(chain)}
        texts.update((t, text) for t, text in read_pieces(pieces, fields) if t in wanted)
    budget = Budget(shards.tokenizer(synth_tok), sc.context_tokens, sc.max_new_tokens,
                    cfg.teacher.add_bos)
    shard = ShardSynthesis(
        os.path.join(out, "chains", f"shard-{index:05d}"), [[texts[t] for t in c] for c in plan],
        [[f"chain {start + j}, round {r} (text {t})" for r, t in enumerate(c)]
         for j, c in enumerate(plan)], budget, sc)
    teacher = get_teacher if get_teacher is not None else (lambda: worker_teacher(cfg, synth_tok))
    try:
        entries, failed = shard.run(teacher, Request(max_new_tokens=sc.max_new_tokens,
                                                     temperature=0.0), sc.on_error == "skip")
    except shards.AugmentError as e:
        return {"error": str(e), "sent": shard.sent}
    docs = fmt.templify([{"index": start + j, "entries": es} for j, es in enumerate(entries)],
                        sc.seed)
    instruct_data.write_doc_shard(os.path.join(out, "augmented"), index, docs, "augmented",
                                  shards.tokenizer(sc.tokenizer), sc)
    flat = [e for es in entries for e in es]
    stats = {"texts": len(flat), "truncated": sum(e["truncated"] for e in flat),
             "pairs": sum(len(e["pairs"]) for e in flat),
             "without_pairs": sum(not e["pairs"] and e["output"] is not None for e in flat)}
    files.write_json(shard.report_path(), {"failed": failed, "stats": stats})
    return {"sent": shard.sent, "failed": failed, "stats": stats}


def raw_shard(cfg: Any, out: str, index: int, spec: dict, fields: dict, get_teacher=None
              ) -> dict[str, Any]:
    """Engine task: raw shard `index`, the texts of `spec["pieces"]` that are not augmented."""
    chosen = load_chosen(out)
    lo, hi = spec["range"]
    skip = set(np.asarray(chosen[np.searchsorted(chosen, lo):np.searchsorted(chosen, hi)])
               .tolist())
    docs = [text for t, text in read_pieces(spec["pieces"], fields) if t not in skip]
    instruct_data.write_doc_shard(os.path.join(out, "raw"), index, docs, "raw",
                                  shards.tokenizer(cfg.synth.tokenizer), cfg.synth)
    return {"sent": 0}


def general_shard(cfg: Any, out: str, index: int, spec: dict, fields: dict, get_teacher=None
                  ) -> dict[str, Any]:
    """Engine task: general shard `index`, "{question} {response}" of `spec["pieces"]`."""
    sc = cfg.synth
    rows = shards.read_jsonl_pieces(spec["pieces"], {"question": sc.question_field,
                                                     "response": sc.response_field})
    instruct_data.write_doc_shard(os.path.join(out, "general"), index,
                                  [f"{g['question']} {g['response']}" for g in rows], "general",
                                  shards.tokenizer(sc.tokenizer), sc)
    return {"sent": 0}


TASKS = {"synth": synth_shard, "raw": raw_shard, "general": general_shard}


def instruct_task(kind: str, cfg: Any, out: str, index: int, spec: dict, fields: dict, *,
                  get_teacher=None) -> dict[str, Any]:
    """Engine task: the `kind` task (synth | raw | general) of shard `index`."""
    try:
        got = TASKS[kind](cfg, out, index, spec, fields, get_teacher)
    except shards.AugmentError as e:  # bad input: the driver says so (a retry would not help)
        got = {"error": str(e), "sent": 0}
    return {"kind": kind, "index": index, **got}

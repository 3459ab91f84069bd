"""Instruction Pre-Training outputs: the augmented, raw and general-instruction sets as separate
token datasets (`<output_dir>/<source>/{text,tokens}`), mixed later by the loader by tokens.

Nothing is subsampled: `lepjax train --config.data.paths=... --config.data.weights=...` takes
every dataset whole, and the loader repeats the smaller ones so the token shares follow the
weights. The summary (and `mixture.json`) give those paths and weights, the tokens per source and
the epochs each source makes when every source is read at least once
(epochs_i = w_i * max_j(T_j / w_j) / T_i for token counts T and normalised weights w).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from lepjax.augment import instruct_format as fmt
from lepjax.augment import shards
from lepjax.data import records

SOURCES = ("augmented", "raw", "general")
CONTENT = "content.json"


def read_general(sc: Any) -> list[str]:
    """General instruction data as "{question} {response}" texts ([] when none is named)."""
    inputs = sc.general_inputs
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p.strip()]
    if not inputs:
        return []
    return [f"{g['question']} {g['response']}" for g in shards.read_jsonl_records(
        inputs, {"question": sc.question_field, "response": sc.response_field},
        what="synth.general_inputs")]


def epochs_per_source(tokens: Mapping[str, int], weights: Mapping[str, float]
                      ) -> dict[str, float]:
    """Epochs of each source when a token-weighted mix reads every source at least once."""
    active = {k: float(w) for k, w in weights.items() if w > 0 and tokens.get(k)}
    if not active:
        return {}
    total_w = sum(active.values())
    norm = {k: w / total_w for k, w in active.items()}
    total = max(tokens[k] / norm[k] for k in norm)
    return {k: round(norm[k] * total / tokens[k], 4) for k in norm}


def write_dataset(directory: str, docs: Sequence[str], source: str, tok: Any, sc: Any) -> dict:
    """Write `docs` as `directory`/text and `directory`/tokens (document records); a directory
    already holding exactly these documents is kept. Returns {"path", "documents", "tokens"}."""
    bos, eos = tok.bos_prefix(sc.add_bos), tok.eos_suffix(sc.add_eos)
    digest = shards.sha(repr(list(docs)) + tok.fingerprint() + repr((bos, eos,
                                                                      sc.records_per_shard)))
    content = os.path.join(directory, CONTENT)
    tok_dir = os.path.join(directory, "tokens")
    if os.path.isfile(content):
        with open(content, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("digest") == digest:
            return {"path": tok_dir, "documents": old["documents"], "tokens": old["tokens"]}
    if os.path.isdir(directory):
        shutil.rmtree(directory)  # other documents (a rerun retried prompts): rewrite
    os.makedirs(os.path.join(directory, "text"))
    os.makedirs(tok_dir)
    n = sc.records_per_shard
    num_shards = math.ceil(len(docs) / n)
    total = 0
    for index in range(num_shards):
        chunk = list(docs[index * n:(index + 1) * n])
        shards.write_text_shard(os.path.join(directory, "text"), index,
                                [{"source": source, "text": t} for t in chunk])
        writer = records.ShardWriter(tok_dir, index)
        for ids in tok.encode(chunk):
            writer.write(bos + ids + eos)
            total += len(bos) + len(ids) + len(eos)
        writer.close()
    shards.finish(directory, num_shards, text_kind="instruct_pt_text", token_kind="document",
                  tok=tok, add_bos=sc.add_bos, add_eos=sc.add_eos,
                  extra={"method": "instruct_pt", "source": source})
    records.write_json_atomic(content, {"digest": digest, "documents": len(docs),
                                        "tokens": total})
    return {"path": tok_dir, "documents": len(docs), "tokens": total}


def write_datasets(sc: Any, out: str, chains: list[dict], raw: list[str], general: list[str],
                   tok: Any, progress: bool = False) -> dict[str, Any]:
    """Templify the chains and write the augmented, raw and general datasets (each only when it
    has documents); the summary's `data` block is what `lepjax train` takes."""
    docs = {"augmented": fmt.templify(chains, sc.seed), "raw": raw, "general": general}
    written = {k: write_dataset(os.path.join(out, k), v, k, tok, sc)
               for k, v in docs.items() if v}
    for k in SOURCES:
        if k not in written and os.path.isdir(os.path.join(out, k)):
            shutil.rmtree(os.path.join(out, k))  # a dataset of an earlier run that is now empty
    weights = {k: float(sc.weights[k]) for k in SOURCES}
    for k, w in weights.items():
        if w > 0 and k not in written:
            raise shards.AugmentError(
                f"synth.weights.{k}={w} but there is no {k} text"
                + {"general": " (set synth.general_inputs)",
                   "raw": " (synth.augment_fraction=1 augments every text)"}.get(k, ""))
    tokens = {k: v["tokens"] for k, v in written.items()}
    used = [k for k in SOURCES if weights[k] > 0]
    epochs = epochs_per_source(tokens, weights)
    data = {"paths": [written[k]["path"] for k in used], "weights": [weights[k] for k in used]}
    mixture = {"datasets": {k: v["path"] for k, v in written.items()}, "tokens": tokens,
               "documents": {k: v["documents"] for k, v in written.items()},
               "weights": weights, "epochs_per_source": epochs, "data": data}
    records.write_json_atomic(os.path.join(out, "mixture.json"), mixture)
    return {"output_dir": out, **mixture, "complete": True}

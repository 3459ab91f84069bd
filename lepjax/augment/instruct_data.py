"""Instruction Pre-Training outputs: the augmented, raw and general-instruction sets as separate
token datasets (`<output_dir>/<source>/{text,tokens}`), mixed later by the loader by tokens.

Nothing is subsampled: `lepjax train --config.data.paths=... --config.data.weights=...` takes
every dataset whole, and the loader repeats the smaller ones so the token shares follow the
weights. The summary (and `mixture.json`) give those paths and weights, the tokens per source and
the epochs each source makes when every source is read at least once
(epochs_i = w_i * max_j(T_j / w_j) / T_i for token counts T and normalised weights w), all counted
from the shards' sidecars: nothing here holds a corpus in memory, a shard is written at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lepjax import files
from lepjax.augment import shards
from lepjax.data import records

SOURCES = ("augmented", "raw", "general")


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


def doc_shard_done(directory: str, index: int) -> bool:
    """Whether document shard `index` of the dataset at `directory` is complete (text and tokens)."""
    return shards.shard_done(directory, index)


def write_doc_shard(directory: str, index: int, docs: Sequence[str], source: str, tok: Any,
                    sc: Any) -> dict:
    """Write `docs` as shard `index` of `directory`/text and `directory`/tokens (document
    records, BOS/EOS as `sc.add_bos` / `sc.add_eos`); returns the token shard's sidecar."""
    bos, eos = tok.bos_prefix(sc.add_bos), tok.eos_suffix(sc.add_eos)
    text_dir, tok_dir = os.path.join(directory, "text"), os.path.join(directory, "tokens")
    os.makedirs(text_dir, exist_ok=True)
    os.makedirs(tok_dir, exist_ok=True)
    shards.write_text_shard(text_dir, index, [{"source": source, "text": t} for t in docs])
    writer = records.ShardWriter(tok_dir, index)
    for ids in tok.encode(list(docs)) if docs else []:
        writer.write(bos + ids + eos)
    return writer.close()


def finish_dataset(directory: str, num_shards: int, source: str, tok: Any, sc: Any) -> dict:
    """metadata.json of a dataset whose `num_shards` shards are complete; returns {"path",
    "documents", "tokens"} (counted from the shards' sidecars, not from the documents)."""
    shards.finish(directory, num_shards, text_kind="instruct_pt_text", token_kind="document",
                  tok=tok, add_bos=sc.add_bos, add_eos=sc.add_eos,
                  extra={"method": "instruct_pt", "source": source})
    tok_dir = os.path.join(directory, "tokens")
    infos = [records.shard_complete(tok_dir, i) for i in range(num_shards)]
    return {"path": tok_dir, "documents": sum(i["records"] for i in infos),
            "tokens": sum(i["tokens"] for i in infos)}


def check_weights(sc: Any, sources_present: Mapping[str, bool]) -> dict[str, float]:
    """The mixing weights; a positive weight on a source without text is an error naming it."""
    weights = {k: float(sc.weights[k]) for k in SOURCES}
    for k, w in weights.items():
        if w > 0 and not sources_present[k]:
            raise shards.AugmentError(
                f"synth.weights.{k}={w} but there is no {k} text"
                + {"general": " (set synth.general_inputs)",
                   "raw": " (synth.augment_fraction=1 augments every text)"}.get(k, ""))
    return weights


def write_mixture(out: str, written: Mapping[str, dict], weights: Mapping[str, float]
                  ) -> dict[str, Any]:
    """mixture.json: the datasets, their tokens and documents, the weights, the epochs per
    source and the `data` block `lepjax train` takes; returns the summary part."""
    tokens = {k: v["tokens"] for k, v in written.items()}
    used = [k for k in SOURCES if weights[k] > 0]
    data = {"paths": [written[k]["path"] for k in used], "weights": [weights[k] for k in used]}
    mixture = {"datasets": {k: v["path"] for k, v in written.items()}, "tokens": tokens,
               "documents": {k: v["documents"] for k, v in written.items()},
               "weights": dict(weights), "epochs_per_source": epochs_per_source(tokens, weights),
               "data": data}
    files.write_json(os.path.join(out, "mixture.json"), mixture)
    return {"output_dir": out, **mixture, "complete": True}

"""Resizing a checkpoint to a new vocabulary: `lepjax vocab init-embeddings`.

Reads a lepjax or Hugging Face model directory, builds the input embeddings and the LM head
(stored transposed, [hidden, vocab]; absent when tied) of the new vocabulary, each from its own
source rows (`lepjax.vocab.embedding_init`), pads the rows to a multiple of `pad_multiple`
(padding rows are zero and no tokenizer id reaches them) and writes a new model directory with
the new tokenizer files. Old rows are copied bit for bit; every other parameter is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lepjax.data.engine import Engine
from lepjax.vocab.config import OUTPUT_FORMATS
from lepjax.vocab.embedding_init import build_matrix, plan_rows
from lepjax.vocab.tokenizer import VocabTokenizer

log = logging.getLogger("lepjax.vocab")


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple


def check_vocab_match(checkpoint: str, rows: int, tok: VocabTokenizer, pad_multiple: int) -> None:
    """A clear error when a checkpoint's embedding rows do not fit the source tokenizer."""
    limit = round_up(tok.vocab_size, max(pad_multiple, 1024))
    if rows < tok.vocab_size or rows > limit:
        raise ValueError(
            f"tokenizer/checkpoint vocabulary mismatch: the source tokenizer {tok.source or ''} has "
            f"{tok.vocab_size} ids but checkpoint {checkpoint} has {rows} embedding rows "
            f"(expected {tok.vocab_size}..{limit}); pass the tokenizer this checkpoint was "
            "trained with")


def check_extension(source: VocabTokenizer, new: VocabTokenizer) -> bool:
    """True when `new` keeps every source piece at its id (an extension), else False."""
    return new.pieces[:source.vocab_size] == source.pieces


def init_embeddings(checkpoint: str, source: VocabTokenizer, new: VocabTokenizer,
                    new_tokenizer_dir: str, output_dir: str, *, method: str = "mean",
                    corpus: Sequence[str] = (), max_lines: int = 0, pad_multiple: int = 128,
                    seed: int = 0, output_format: str = "same", batch_size: int = 1000,
                    overwrite: bool = False, progress: bool = True,
                    engine: Engine | None = None) -> dict[str, Any]:
    """Write `output_dir`: the checkpoint with embeddings/LM head for `new`; returns a summary.
    align's corpus counts run on `engine` (None: in this process)."""
    import jax

    from lepjax import models
    from lepjax.models import io

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"init.output_format must be one of {', '.join(OUTPUT_FORMATS)}, got "
                         f"{output_format!r}")
    if pad_multiple < 1:
        raise ValueError(f"init.pad_multiple must be >= 1, got {pad_multiple}")
    fmt = models.detect_format(checkpoint)
    t0 = time.perf_counter()
    model, mc = models.load(checkpoint, **({"param_dtype": "float32"} if fmt == "hf" else {}))
    check_vocab_match(checkpoint, mc.vocab_size, source, pad_multiple)
    plan = plan_rows(source, new, method, corpus, max_lines, batch_size, progress, engine)
    rows_out = round_up(new.vocab_size, pad_multiple)
    special = set(source.special)
    stat_rows = np.array([i for i in range(source.vocab_size) if i not in special], np.int64)
    params = io.pure_params(model)
    embed = io.to_host(params["embed"])
    new_embed = build_matrix(embed, plan, rows_out, stat_rows, seed)
    new_head = None
    if "lm_head" in params:
        head = io.to_host(params["lm_head"]).T
        new_head = np.ascontiguousarray(build_matrix(head, plan, rows_out, stat_rows, seed + 1).T)
    changes: dict[str, Any] = {"vocab_size": rows_out}
    if not check_extension(source, new):
        changes.update(bos_token_id=new.bos_id, eos_token_id=new.eos_id)
    config = mc.replace(**changes)

    def make(path, struct, sharding):
        if path == ("embed",):
            return jax.device_put(new_embed, sharding)
        if path == ("lm_head",):
            return jax.device_put(new_head, sharding)
        node = params
        for k in path:
            node = node[k]
        return jax.device_put(node, sharding)

    resized = io.build_from_arrays(config, make)
    to = fmt if output_format == "same" else output_format
    save = models.save_hf if to == "hf" else models.save
    out = save(resized, output_dir, tokenizer_from=new_tokenizer_dir, overwrite=overwrite)
    summary = {"action": "init-embeddings", "checkpoint": checkpoint, "output": out,
               "format": to, "method": method, "source_vocab_size": source.vocab_size,
               "checkpoint_rows": mc.vocab_size, "new_vocab_size": new.vocab_size,
               "rows": rows_out, "extension": check_extension(source, new),
               "tied": "lm_head" not in params, "rows_by_origin": plan.counts,
               "seconds": round(time.perf_counter() - t0, 2)}
    log.info("initialised %d new rows (%s) in %.1fs -> %s", len(plan.targets()), method,
             summary["seconds"], out)
    return summary

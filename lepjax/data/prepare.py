"""`lepjax prepare`: tokenise text once, in parallel, into ArrayRecord shards.

Examples are read in a deterministic order and cut into shards of `records_per_shard` records;
shard i belongs to worker `i % num_workers`, so several hosts can each run a part
(`--num_workers N --worker_index K`). Within a worker, shards are tokenised by a process pool
(every core by default). Each shard is written to a temp file and renamed when complete, so a
rerun after a crash skips the finished shards and produces exactly the shards an uninterrupted run
would. Whichever worker finds every shard complete writes `metadata.json`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

from lepjax.data import records, sources
from lepjax.data.tokenizer import TextTokenizer, load_tokenizer

_WORKER_TOKENIZER: TextTokenizer | None = None


def default_config():
    """The `lepjax prepare` config.

    Keys:
      tokenizer: a tokenizer.json, a SentencePiece .model, or a model directory holding one.
      inputs: input files, globs or directories (tuple or comma-separated string).
      format: auto | text | jsonl | parquet | tfds (auto: from each file's extension).
      text_mode: text files: `line` (one document per line) or `paragraph` (blank-line separated).
      text_field: JSONL/Parquet/TFDS field holding a document.
      prompt_field, target_field: set both for prompt/target records (loss on the target only).
        prompt + target is tokenised as one text, so a separating space or newline is part of
        the prompt or the target string.
      tfds_name, tfds_split, tfds_data_dir: the TFDS dataset when format = tfds.
      output_dir: the dataset directory to write.
      records_per_shard: documents per shard.
      add_bos, add_eos: add the tokenizer's BOS / EOS around each document.
      num_proc: tokenising processes on this host (0 = every core).
      num_workers, worker_index: split shards across hosts (shard i goes to worker i % num_workers);
        also settable as --num_workers / --worker_index.
    """
    from ml_collections import ConfigDict

    return ConfigDict(dict(
        tokenizer="", inputs=(), format="auto", text_mode="line", text_field="text",
        prompt_field="", target_field="", tfds_name="", tfds_split="train", tfds_data_dir="",
        output_dir="", records_per_shard=10000, add_bos=True, add_eos=True, num_proc=0,
        num_workers=1, worker_index=0))


def _init_worker(tok: TextTokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tok


def tokenize_examples(tok: TextTokenizer, examples: list[dict[str, str]], add_bos: bool,
                      add_eos: bool) -> Iterator[tuple[list[int], list[int] | None]]:
    """(token ids, loss mask or None) per example, BOS/EOS added as configured."""
    bos = [tok.bos_id] if add_bos and tok.bos_id is not None else []
    eos = [tok.eos_id] if add_eos and tok.eos_id is not None else []
    if not examples:
        return
    if "text" in examples[0]:
        for ids in tok.encode_batch([ex["text"] for ex in examples]):
            yield bos + ids + eos, None
        return
    prompts = tok.encode_batch([ex["prompt"] for ex in examples])
    wholes = tok.encode_batch([ex["prompt"] + ex["target"] for ex in examples])
    for ex, p, w in zip(examples, prompts, wholes):
        # The target is what follows the prompt's own tokens in prompt + target encoded as one
        # text (as the model meets it at inference: the prompt alone, then its continuation);
        # where a token merges across the boundary, the target is encoded on its own.
        joint = w[:len(p)] == p and len(w) > len(p)
        t = w[len(p):] if joint else tok.encode_batch([ex["target"]])[0]
        p, t = bos + p, t + eos
        yield p + t, [0] * len(p) + [1] * len(t)


def write_shard(out: str, index: int, examples: list[dict[str, str]], add_bos: bool,
                add_eos: bool, tok: TextTokenizer | None = None) -> dict[str, int]:
    """Tokenise `examples` and write them as shard `index` (atomically)."""
    tok = tok or _WORKER_TOKENIZER
    writer = records.ShardWriter(out, index)
    for ids, mask in tokenize_examples(tok, examples, add_bos, add_eos):
        writer.write(ids, mask)
    return writer.close()


def _shards(cfg: Any) -> Iterator[tuple[int, list[dict[str, str]]]]:
    batch: list[dict[str, str]] = []
    index = 0
    for ex in sources.iterate(cfg):
        batch.append(ex)
        if len(batch) == cfg.records_per_shard:
            yield index, batch
            index, batch = index + 1, []
    if batch:
        yield index, batch


def prepare(cfg: Any, *, progress: bool = True) -> dict[str, Any]:
    """Run (this worker's part of) the preparation `cfg` describes; returns a summary."""
    from tqdm import tqdm

    if cfg.records_per_shard <= 0:
        raise ValueError("records_per_shard must be positive")
    if not 0 <= cfg.worker_index < cfg.num_workers:
        raise ValueError(f"worker_index {cfg.worker_index} is outside [0, {cfg.num_workers})")
    if not cfg.output_dir:
        raise ValueError("output_dir is not set")
    tok = load_tokenizer(cfg.tokenizer)
    out = os.path.abspath(cfg.output_dir)
    os.makedirs(out, exist_ok=True)
    num_proc = cfg.num_proc or os.cpu_count() or 1
    mine = lambda i: i % cfg.num_workers == cfg.worker_index  # noqa: E731
    records.remove_stale_temp_files(out, mine)

    bar = tqdm(desc=f"prepare {os.path.basename(out)}", unit="tok", unit_scale=True,
               disable=not progress)
    start = time.perf_counter()
    written = skipped = tokens_done = 0
    total_shards = 0
    kind = None

    def done(info):
        nonlocal written, tokens_done
        written += 1
        tokens_done += info["tokens"]
        bar.update(info["tokens"])
        bar.set_postfix(shards=written, tok_s=f"{tokens_done / (time.perf_counter() - start):.0f}")

    pool = None
    if num_proc > 1:
        pool = cf.ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker, initargs=(tok,))
    pending: set[cf.Future] = set()
    try:
        for index, examples in _shards(cfg):
            total_shards = index + 1
            shard_kind = "document" if "text" in examples[0] else "prompt_target"
            kind = kind or shard_kind
            if not mine(index):
                continue
            if records.shard_complete(out, index):
                skipped += 1
                continue
            if pool is None:
                done(write_shard(out, index, examples, cfg.add_bos, cfg.add_eos, tok))
                continue
            if len(pending) >= 2 * num_proc:
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
            pending.add(pool.submit(write_shard, out, index, examples, cfg.add_bos, cfg.add_eos))
        for f in cf.as_completed(pending):
            done(f.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    if total_shards == 0:
        raise records.DataError(f"no documents found in the inputs {list(cfg.inputs)}: the "
                                "dataset would be empty")
    seconds = time.perf_counter() - start
    summary = {"output_dir": out, "shards_written": written, "shards_skipped": skipped,
               "shards_total": total_shards, "tokens_written": tokens_done,
               "tokens_per_s": round(tokens_done / max(seconds, 1e-9)),
               "tokens_per_s_per_core": round(tokens_done / max(seconds, 1e-9) / num_proc),
               "complete": False}
    infos = [records.shard_complete(out, i) for i in range(total_shards)]
    if all(infos):
        from lepjax import config as config_lib

        records.write_metadata(out, {
            "kind": kind,
            "tokenizer": {**tok.describe(), "add_bos": cfg.add_bos, "add_eos": cfg.add_eos},
            "num_records": sum(i["records"] for i in infos),
            "num_tokens": sum(i["tokens"] for i in infos),
            "max_record_tokens": max(i["max_tokens"] for i in infos),
            "shards": [{"file": records.shard_name(i), **info} for i, info in enumerate(infos)],
            "sources": _describe_sources(cfg),
            "config": config_lib.to_dict(cfg),
        })
        summary["complete"] = True
        summary["num_tokens"] = sum(i["tokens"] for i in infos)
    return summary


def _describe_sources(cfg: Any) -> list[dict[str, Any]]:
    if cfg.format == "tfds":
        return [{"tfds": cfg.tfds_name, "split": cfg.tfds_split}]
    return [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)}
            for p in sources.expand_inputs(list(cfg.inputs))]

"""`lepjax prepare`: tokenise text once, on the preprocessing engine, into ArrayRecord shards.

    scan     one engine task per input file, 64 MiB segment of a file with one example per
             line, or TFDS index range cuts it into chunks: a byte range starting at a line, a
             Parquet row group, an index range; with the examples it holds and a content hash
    plan     the driver cuts the examples, in input order, into shards of `records_per_shard`
    check    a shard whose completion sidecar records the same inputs, tokenizer and settings is
             done; one that records others is refused (the message names what changed), unless
             `overwrite`
    write    one engine task per remaining shard reads its pieces of the inputs itself, tokenises
             them and writes the shard atomically (temp file, rename, then its sidecar)

The plan depends only on the inputs and the settings, so the shards are byte-identical whatever
the engine (`engine.kind`: synchronous, local, dask) and the number of workers or hosts. A rerun
after a crash writes only the missing shards. `metadata.json` is written from the sidecars, once
every shard is complete, so it never describes a shard that was not written.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

from lepjax.config import ConfigError
from lepjax.data import engine as engine_lib
from lepjax.data import records, sources

log = logging.getLogger("lepjax.prepare")

# Settings that define a shard (recorded in its sidecar; a rerun must use the same).
SETTINGS = ("format", "text_mode", "text_field", "prompt_field", "target_field", "tfds_name",
            "tfds_split", "records_per_shard", "add_bos", "add_eos")
REMOVED = {"num_proc": "engine.num_workers", "num_workers": "engine.kind / engine.num_workers",
           "worker_index": "engine.kind=dask (every host runs a Dask worker)"}
_OURS = re.compile(r"data-\d{5,}\.array_record(\.json)?(\.tmp\d+)?|metadata\.json(\.tmp\d+)?"
                   r"|resolved_config(\.\d+)?\.json")


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
      overwrite: rebuild an output_dir that was prepared from other inputs, another tokenizer or
        other settings (without it such a rerun is refused).
      engine: where the tasks run (lepjax.data.engine): kind = local (default: a worker process
        per core of this machine) | synchronous (in process) | dask (engine.scheduler or
        engine.scheduler_file); num_workers, retries, dashboard.
    """
    from ml_collections import ConfigDict

    return ConfigDict(dict(
        tokenizer="", inputs=(), format="auto", text_mode="line", text_field="text",
        prompt_field="", target_field="", tfds_name="", tfds_split="train", tfds_data_dir="",
        output_dir="", records_per_shard=10000, add_bos=True, add_eos=True, overwrite=False,
        engine=engine_lib.engine_section()))


def validate_config(cfg: Any) -> None:
    """Check a prepare config before anything is read or created (ConfigError names the key)."""
    for key, instead in REMOVED.items():
        if key in cfg:
            raise ConfigError(f"prepare: {key} was removed; preprocessing runs on the engine: "
                              f"set {instead} (see README 'Preprocessing a large corpus')")
    if not cfg.tokenizer:
        raise ConfigError("prepare: tokenizer is not set")
    if not cfg.output_dir:
        raise ConfigError("prepare: output_dir is not set")
    if cfg.records_per_shard <= 0:
        raise ConfigError(f"prepare: records_per_shard {cfg.records_per_shard} must be positive")
    if cfg.format not in sources.FORMATS:
        raise ConfigError(f"prepare: format {cfg.format!r}; expected one of "
                          f"{', '.join(sources.FORMATS)}")
    if cfg.text_mode not in ("line", "paragraph"):
        raise ConfigError(f"prepare: text_mode {cfg.text_mode!r}; expected line or paragraph")
    if bool(cfg.prompt_field) != bool(cfg.target_field):
        raise ConfigError("prepare: set both prompt_field and target_field, or neither")
    if cfg.format == "tfds" and not cfg.tfds_name:
        raise ConfigError("prepare: format=tfds needs tfds_name")
    if cfg.format != "tfds" and not cfg.inputs:
        raise ConfigError("prepare: inputs is empty")
    engine_lib.validate(cfg.engine)


# ---- tokenising and writing (engine tasks) ---------------------------------------------------


def tokenize_examples(tok: Any, examples: list[dict[str, str]], add_bos: bool,
                      add_eos: bool) -> Iterator[tuple[list[int], list[int] | None]]:
    """(token ids, loss mask or None) per example, BOS/EOS added as configured."""
    bos = tok.bos_prefix(add_bos)
    eos = tok.eos_suffix(add_eos)
    if not examples:
        return
    if "text" in examples[0]:
        for ids in tok.encode([ex["text"] for ex in examples]):
            yield bos + ids + eos, None
        return
    prompts = tok.encode([ex["prompt"] for ex in examples])
    wholes = tok.encode([ex["prompt"] + ex["target"] for ex in examples])
    for ex, p, w in zip(examples, prompts, wholes):
        # The target is what follows the prompt's own tokens in prompt + target encoded as one
        # text (as the model meets it at inference: the prompt alone, then its continuation);
        # where a token merges across the boundary, the target is encoded on its own.
        joint = w[:len(p)] == p and len(w) > len(p)
        t = w[len(p):] if joint else tok.encode(ex["target"])
        p, t = bos + p, t + eos
        yield p + t, [0] * len(p) + [1] * len(t)


def write_shard(out: str, index: int, examples: list[dict[str, str]], add_bos: bool,
                add_eos: bool, tok: Any, **sidecar: Any) -> dict[str, Any]:
    """Tokenise `examples` and write them as shard `index` (atomically); `sidecar` entries are
    added to its completion record."""
    writer = records.ShardWriter(out, index)
    for ids, mask in tokenize_examples(tok, examples, add_bos, add_eos):
        writer.write(ids, mask)
    return writer.close(**sidecar)


_TOKENIZERS: dict[tuple[str, str], Any] = {}


def _tokenizer(path: str, fingerprint: str) -> Any:
    """The tokenizer at `path` in this process (loaded once), checked against the driver's."""
    from lepjax.tokenizer import load_tokenizer

    if (path, fingerprint) in _TOKENIZERS:
        return _TOKENIZERS[path, fingerprint]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = load_tokenizer(path)
    if tok.fingerprint() != fingerprint:
        raise records.DataError(
            f"tokenizer {path} on host {os.uname().nodename} has fingerprint "
            f"{tok.fingerprint()}, the driver's has {fingerprint}: every host needs the same "
            "tokenizer files")
    _TOKENIZERS[path, fingerprint] = tok
    return tok


def scan_task(path: str, fmt: str, fields: dict[str, str], start: int,
              end: int) -> list[dict[str, Any]]:
    """Engine task: the chunks of one input file's byte range [start, end)."""
    return sources.scan_file(path, fmt, fields, start, end)


def shard_task(out: str, index: int, made_from: dict[str, Any]) -> dict[str, Any]:
    """Engine task: read shard `index`'s pieces of the inputs, tokenise them, write the shard."""
    settings, tok_info = made_from["settings"], made_from["tokenizer"]
    tok = _tokenizer(tok_info["path"], tok_info["fingerprint"])
    fields = {k: settings[k] for k in sources.FIELDS}
    examples: list[dict[str, str]] = []
    for piece in made_from["inputs"]:
        got = list(islice(sources.read_chunk(piece, fields), piece["skip"],
                          piece["skip"] + piece["take"]))
        if len(got) != piece["take"]:
            raise records.DataError(f"{piece.get('path', piece.get('tfds'))} changed while being "
                                    "prepared (fewer examples than when scanned)")
        examples.extend(got)
    kind = "document" if "text" in examples[0] else "prompt_target"
    return write_shard(out, index, examples, settings["add_bos"], settings["add_eos"], tok,
                       kind=kind, made_from=made_from)


# ---- the plan --------------------------------------------------------------------------------


def settings_of(cfg: Any) -> dict[str, Any]:
    """The settings that define a prepared dataset's shards."""
    return {k: cfg[k] for k in SETTINGS}


def scan(engine: engine_lib.Engine, cfg: Any) -> list[dict[str, Any]]:
    """Every chunk of the inputs, in input order (scanned in parallel on the engine)."""
    fields = {k: cfg[k] for k in sources.FIELDS}
    if cfg.format == "tfds":
        n = sources.tfds_size(cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir or None)
        tasks = [(cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir, s,
                  min(s + sources.TFDS_CHUNK, n), fields) for s in range(0, n, sources.TFDS_CHUNK)]
        fn = sources.scan_tfds
    else:
        tasks = [(path, fmt, fields, start, end) for path, fmt in sources.file_formats(cfg)
                 for start, end in sources.segments(path, fmt, fields)]
        fn = scan_task
    parts: list[list[dict[str, Any]]] = [[] for _ in tasks]
    for i, chunks in engine.map(fn, tasks, retries=0):
        parts[i] = chunks
    return [c for part in parts for c in part]


def plan_shards(chunks: list[dict[str, Any]], per_shard: int) -> list[list[dict[str, Any]]]:
    """The pieces of each shard: consecutive `per_shard` examples of the chunks, in order; a
    piece is a chunk with the examples to `skip` and to `take` from it."""
    shards: list[list[dict[str, Any]]] = [[]]
    room = per_shard
    for chunk in chunks:
        done = 0
        while done < chunk["count"]:
            if room == 0:
                shards.append([])
                room = per_shard
            take = min(room, chunk["count"] - done)
            shards[-1].append({**chunk, "skip": done, "take": take})
            done += take
            room -= take
    return shards if shards[0] else []


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a shard's recorded `made_from` and the planned one."""
    out = []
    diff = [f"{k} ({old['settings'].get(k)!r} -> {v!r})" for k, v in new["settings"].items()
            if old["settings"].get(k) != v]
    if diff:
        out.append("settings " + ", ".join(diff))
    ot, nt = old["tokenizer"], new["tokenizer"]
    if ot.get("fingerprint") != nt["fingerprint"]:
        out.append(f"tokenizer (fingerprint {ot.get('fingerprint')} of {ot.get('path')} -> "
                   f"{nt['fingerprint']} of {nt['path']})")
    if not diff:
        ident = lambda p: (p.get("path", p.get("tfds")), p.get("sha"))  # noqa: E731
        oi, ni = [ident(p) for p in old["inputs"]], [ident(p) for p in new["inputs"]]
        if [p for p, _ in oi] != [p for p, _ in ni]:
            out.append(f"inputs ({', '.join(sorted({str(p) for p, _ in oi}))} -> "
                       f"{', '.join(sorted({str(p) for p, _ in ni}))})")
        elif oi != ni:
            changed = sorted({str(a[0]) for a, b in zip(oi, ni) if a != b})
            out.append(f"inputs (the content of {', '.join(changed)} changed)")
        elif old["inputs"] != new["inputs"]:
            out.append("inputs (the shard now covers other examples of them)")
    return out


def check_output_dir(out: str, made: list[dict[str, Any]], overwrite: bool) -> set[int]:
    """The shards of `out` already complete for this plan; refuses a directory that holds other
    files, or shards made from other inputs, tokenizer or settings (unless `overwrite`)."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise NotADirectoryError(f"output_dir {out} exists and is not a directory")
        return set()
    names = sorted(os.listdir(out))
    foreign = [n for n in names if not _OURS.fullmatch(n)]
    if foreign:
        raise FileExistsError(f"output_dir {out} holds files that are not part of a lepjax "
                              f"dataset ({', '.join(foreign[:3])}); choose another output_dir")
    if overwrite:
        return set()
    done, problems = set(), []
    for name in names:
        m = re.fullmatch(r"data-(\d+)\.array_record\.json", name)
        if not m:
            continue
        i = int(m.group(1))
        info = records.shard_complete(out, i)
        if info is None:
            continue
        if i >= len(made):
            problems.append(f"it holds shard {i} but these inputs make {len(made)} shards "
                            "(other inputs or settings)")
            break
        if "made_from" not in info:
            problems.append(f"shard {i} has no record of what made it (an older lepjax)")
            break
        changes = _changes(info["made_from"], made[i])
        if changes:
            problems.append(f"shard {i} was made from other " + "; ".join(changes))
            break
        done.add(i)
    if not problems and not done and os.path.exists(os.path.join(out, records.METADATA)):
        problems.append(f"it holds a {records.METADATA} but no shard records")
    if problems:
        raise records.DataError(f"output_dir {out} was prepared differently: {problems[0]}; "
                                "choose another output_dir, or set --config.overwrite=True to "
                                "rebuild it")
    return done


def _clear(out: str) -> None:
    for name in os.listdir(out):
        if _OURS.fullmatch(name) and not name.startswith("resolved_config"):
            os.remove(os.path.join(out, name))


def _make_output_dir(out: str) -> None:
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output_dir {out}: its parent directory {parent} does not exist")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"output_dir {out} cannot be created ({e.strerror})") from None
    probe = os.path.join(out, f"data-00000.array_record.tmp{os.getpid()}")
    try:
        open(probe, "wb").close()
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"output_dir {out} is not writable ({e.strerror})") from None


def _metadata(out: str, num_shards: int) -> dict[str, Any]:
    """metadata.json's content, from the shards' sidecars alone."""
    infos = [records.shard_complete(out, i) for i in range(num_shards)]
    made = [info["made_from"] for info in infos]
    files: dict[str, dict[str, Any]] = {}
    for m in made:
        for p in m["inputs"]:
            key = p.get("path") or f"tfds:{p['tfds']}[{p['split']}]"
            files.setdefault(key, {"path": p["path"], "bytes": p["bytes"]} if "path" in p else
                             {"tfds": p["tfds"], "split": p["split"]})
    settings = made[0]["settings"]
    return {
        "kind": infos[0]["kind"],
        "tokenizer": {**made[0]["tokenizer"], "add_bos": settings["add_bos"],
                      "add_eos": settings["add_eos"]},
        "num_records": sum(i["records"] for i in infos),
        "num_tokens": sum(i["tokens"] for i in infos),
        "max_record_tokens": max(i["max_tokens"] for i in infos),
        "shards": [{"file": records.shard_name(i), "records": info["records"],
                    "tokens": info["tokens"], "max_tokens": info["max_tokens"]}
                   for i, info in enumerate(infos)],
        "sources": list(files.values()),
        "settings": settings,
    }


# ---- the driver ------------------------------------------------------------------------------


def prepare(cfg: Any, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the preparation `cfg` describes on its engine; returns a summary."""
    from tqdm import tqdm

    from lepjax.tokenizer import load_tokenizer

    validate_config(cfg)
    out = os.path.abspath(cfg.output_dir)
    tok = load_tokenizer(cfg.tokenizer)
    tok_info = tok.describe()
    _TOKENIZERS[tok_info["path"], tok_info["fingerprint"]] = tok  # in-process tasks reuse it
    if cfg.format != "tfds":
        for path, _ in sources.file_formats(cfg):
            if os.path.realpath(path).startswith(os.path.realpath(out) + os.sep):
                raise ValueError(f"input {path} is inside output_dir {out}")
    settings = settings_of(cfg)
    start = time.perf_counter()
    with engine_lib.open_engine(cfg.engine) as engine:
        scan_start = time.perf_counter()
        chunks = scan(engine, cfg)
        plan = plan_shards(chunks, cfg.records_per_shard)
        if not plan:
            raise records.DataError(f"no documents found in the inputs {list(cfg.inputs)}: the "
                                    "dataset would be empty")
        made = [{"inputs": pieces, "tokenizer": tok_info, "settings": settings}
                for pieces in plan]
        done = check_output_dir(out, made, cfg.overwrite)
        if cfg.overwrite and os.path.isdir(out):
            _clear(out)
        _make_output_dir(out)
        records.remove_stale_temp_files(out)
        todo = [i for i in range(len(plan)) if i not in done]
        workers = engine.num_workers
        log.info("prepare %s: %d examples in %d chunks scanned in %.1f s; %d shards, %d already "
                 "complete, %d to write on %d worker(s)", out, sum(c["count"] for c in chunks),
                 len(chunks), time.perf_counter() - scan_start, len(plan), len(done), len(todo),
                 workers)
        bar = tqdm(desc=f"prepare {os.path.basename(out)}", total=len(plan), initial=len(done),
                   unit="shard", disable=not progress)
        tokens_done = 0
        write_start = time.perf_counter()
        try:
            for _, info in engine.map(shard_task, [(out, i, made[i]) for i in todo]):
                tokens_done += info["tokens"]
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens_done / (time.perf_counter() - write_start):.0f}")
        finally:
            bar.close()
    records.remove_stale_temp_files(out)
    seconds = time.perf_counter() - write_start
    metadata = _metadata(out, len(plan))
    records.write_metadata(out, metadata)
    rate = tokens_done / max(seconds, 1e-9)
    log.info("prepare %s: wrote %d shards, %d tokens in %.1f s (%.0f tok/s, %.0f per worker)",
             out, len(todo), tokens_done, seconds, rate, rate / workers)
    return {"output_dir": out, "shards_written": len(todo), "shards_skipped": len(done),
            "shards_total": len(plan), "tokens_written": tokens_done,
            "tokens_per_s": round(rate), "tokens_per_s_per_worker": round(rate / workers),
            "workers": workers, "seconds": round(time.perf_counter() - start, 3),
            "num_tokens": metadata["num_tokens"], "complete": True}


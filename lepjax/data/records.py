"""The one record schema of lepjax datasets, and its ArrayRecord shards.

A prepared dataset is a directory:

    metadata.json                   schema version, kind, tokenizer, counts, shards, sources, config
    data-00000.array_record         shards of records (ArrayRecord, group_size 1 for random access)
    data-00000.array_record.json    per-shard completion record (records, tokens, max_tokens, and
                                    for `prepare` what made the shard: inputs, tokenizer, settings)
    ...

Every record is one document, encoded as bytes:

    offset 0   b"LJ"      magic
    offset 2   uint8      schema version (1)
    offset 3   uint8      kind: 0 = document, 1 = prompt/target
    offset 4   uint32 LE  n, the number of tokens
    offset 8   int32 LE   n token ids (BOS/EOS included as the tokenizer expects)
    then       uint8      n loss-mask flags, only for prompt/target records: 1 where the token is
                          part of the target (trained), 0 for the prompt

A `document` dataset trains on every next token; a `prompt_target` dataset only on target tokens.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepjax import files

SCHEMA = "lepjax-records"
SCHEMA_VERSION = 1
MAGIC = b"LJ"
KINDS = ("document", "prompt_target")
METADATA = "metadata.json"
_HEADER = struct.Struct("<2sBBI")


class DataError(ValueError):
    """A dataset, shard or record that cannot be used (the message names it)."""


def encode(tokens: Sequence[int] | np.ndarray, loss_mask: Sequence[int] | np.ndarray | None = None) -> bytes:
    """Serialise one record (a document, or a prompt/target pair when `loss_mask` is given)."""
    ids = np.asarray(tokens, dtype="<i4")
    kind = 0 if loss_mask is None else 1
    out = _HEADER.pack(MAGIC, SCHEMA_VERSION, kind, ids.size) + ids.tobytes()
    if loss_mask is not None:
        mask = np.asarray(loss_mask, dtype=np.uint8)
        if mask.shape != ids.shape:
            raise ValueError(f"loss mask has {mask.size} entries for {ids.size} tokens")
        out += mask.tobytes()
    return out


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """Parse one record: {"tokens": int32[n], "loss_mask": uint8[n]} (mask all ones for documents)."""
    if len(blob) < _HEADER.size:
        raise DataError(f"record of {len(blob)} bytes is too short")
    magic, version, kind, n = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise DataError("not a lepjax record (bad magic)")
    if version != SCHEMA_VERSION:
        raise DataError(f"record schema version {version}; this lepjax reads {SCHEMA_VERSION}")
    expected = _HEADER.size + 4 * n + (n if kind == 1 else 0)
    if len(blob) != expected:
        raise DataError(f"record length {len(blob)} does not match its header ({expected})")
    tokens = np.frombuffer(blob, dtype="<i4", count=n, offset=_HEADER.size).astype(np.int32)
    if kind == 1:
        mask = np.frombuffer(blob, dtype=np.uint8, count=n, offset=_HEADER.size + 4 * n)
    else:
        mask = np.ones(n, np.uint8)
    return {"tokens": tokens, "loss_mask": mask}


def shard_name(index: int) -> str:
    return f"data-{index:05d}.array_record"


class ShardWriter:
    """Writes one shard atomically: records go to a temp file, renamed with its sidecar on close."""

    def __init__(self, directory: str, index: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = os.path.join(directory, shard_name(index))
        self.tmp = self.path + f".tmp{os.getpid()}"
        self._writer = ArrayRecordWriter(self.tmp, "group_size:1")
        self.records = 0
        self.tokens = 0
        self.max_tokens = 0

    def write(self, tokens, loss_mask=None) -> None:
        """Append one token record (and its loss mask, for prompt/target records)."""
        self.write_bytes(encode(tokens, loss_mask), len(tokens))

    def write_bytes(self, blob: bytes, tokens: int = 0) -> None:
        """Append one record as it is (e.g. a JSON text record); `tokens` counts toward stats."""
        self._writer.write(blob)
        self.records += 1
        self.tokens += tokens
        self.max_tokens = max(self.max_tokens, tokens)

    def close(self, **extra: Any) -> dict[str, Any]:
        """Finish the shard: data renamed into place first, then its completion sidecar (the
        counts, plus `extra`, e.g. what made the shard)."""
        self._writer.close()
        os.replace(self.tmp, self.path)
        info = {"records": self.records, "tokens": self.tokens, "max_tokens": self.max_tokens,
                **extra}
        files.write_json(self.path + ".json", info)
        return info


def shard_complete(directory: str, index: int) -> dict[str, Any] | None:
    """The sidecar of a finished shard, or None if the shard is missing or unfinished."""
    path = os.path.join(directory, shard_name(index))
    side = path + ".json"
    if not (os.path.isfile(path) and os.path.isfile(side)):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, OSError):
        return None


def remove_stale_temp_files(directory: str) -> None:
    """Delete shard temp files a killed writer left in `directory`; finished shards are kept."""
    import re

    for name in os.listdir(directory):
        if re.fullmatch(r"data-(\d+)\.array_record(\.json)?\.tmp\d+", name):
            os.remove(os.path.join(directory, name))


def write_metadata(directory: str, metadata: dict[str, Any]) -> str:
    """Write metadata.json atomically (it marks the dataset complete)."""
    path = os.path.join(directory, METADATA)
    files.write_json(path, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **metadata})
    return path


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset: its directory, metadata and shard paths."""

    path: str
    metadata: dict[str, Any]

    @property
    def shard_paths(self) -> list[str]:
        return [os.path.join(self.path, s["file"]) for s in self.metadata["shards"]]

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def num_records(self) -> int:
        return int(self.metadata["num_records"])

    @property
    def num_tokens(self) -> int:
        return int(self.metadata["num_tokens"])


def open_dataset(
    path: str, *, vocab_size: int | None = None, fingerprint: str | None = None,
    verify_shards: bool = True,
) -> Dataset:
    """Open and check a prepared dataset.

    Errors name the culprit: a directory without metadata.json, a missing, truncated or corrupt
    shard, an empty dataset, a tokenizer fingerprint that differs from `fingerprint`, or token
    ids that do not fit a model with `vocab_size` embedding rows.
    """
    meta_path = os.path.join(path, METADATA)
    if not os.path.isfile(meta_path):
        raise DataError(f"{path}: no {METADATA}; not a prepared dataset, or `lepjax prepare` has "
                        "not finished (rerun it to complete the missing shards)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: corrupt JSON ({e})") from None
    if meta.get("schema") != SCHEMA:
        raise DataError(f"{meta_path}: not a lepjax dataset (schema={meta.get('schema')!r})")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{meta_path}: schema version {meta.get('schema_version')}; this lepjax "
                        f"reads version {SCHEMA_VERSION}")
    if meta.get("kind") not in KINDS:
        hint = f"; its token records are in {meta['tokens']}" if meta.get("tokens") else ""
        raise DataError(f"{path}: holds {meta.get('kind')!r} records, not token records "
                        f"({' or '.join(KINDS)}){hint}")
    if int(meta.get("num_records", 0)) == 0 or int(meta.get("num_tokens", 0)) == 0:
        raise DataError(f"{path}: the dataset is empty (0 records)")
    tok = meta.get("tokenizer", {})
    if fingerprint is not None and tok.get("fingerprint") != fingerprint:
        raise DataError(
            f"{path}: tokenizer fingerprint {tok.get('fingerprint')} ({tok.get('path')}) does not "
            f"match the model's tokenizer ({fingerprint}); prepare the data with the model's "
            "tokenizer")
    if vocab_size is not None and int(tok.get("vocab_size", 0)) > vocab_size:
        raise DataError(
            f"{path}: prepared with a tokenizer of {tok.get('vocab_size')} tokens "
            f"({tok.get('path')}), but the model has only {vocab_size} embedding rows")
    ds = Dataset(os.path.abspath(path), meta)
    if verify_shards:
        for shard, info in zip(ds.shard_paths, meta["shards"]):
            verify_shard(shard, info["records"])
    return ds


def verify_shard(path: str, records: int) -> None:
    """Check a shard exists, holds `records` records, and its first and last records decode."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not os.path.isfile(path):
        raise DataError(f"shard {path} is missing")
    try:
        reader = ArrayRecordReader(path)
        n = reader.num_records()
        if n != records:
            raise DataError(f"shard {path} is truncated or corrupt: it holds {n} records, "
                            f"metadata says {records}")
        for blob in reader.read([0, n - 1]):
            decode(blob)
        reader.close()
    except DataError as e:
        if str(e).startswith("shard "):
            raise
        raise DataError(f"shard {path} is corrupt: {e}") from None
    except RuntimeError as e:
        raise DataError(f"shard {path} is corrupt: {e}") from None

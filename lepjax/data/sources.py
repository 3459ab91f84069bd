"""Text inputs for `lepjax prepare`: plain text, JSONL, Parquet and TFDS.

Each source yields examples in a fixed, deterministic order: `{"text": str}` for documents, or
`{"prompt": str, "target": str}` for prompt/target pairs.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

FORMATS = ("auto", "text", "jsonl", "parquet", "tfds")


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand globs and directories into a sorted, de-duplicated list of files."""
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            matches = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                             if os.path.isfile(os.path.join(spec, f)))
        else:
            matches = sorted(glob.glob(spec))
        if not matches:
            raise FileNotFoundError(f"input {spec!r} matches no file")
        files.extend(m for m in matches if m not in files)
    return files


def detect_format(path: str) -> str:
    """The format of a file from its extension."""
    ext = path.lower().rsplit(".", 1)[-1]
    return {"txt": "text", "text": "text", "jsonl": "jsonl", "json": "jsonl",
            "parquet": "parquet"}.get(ext, "text")


def read_text(path: str, mode: str = "line") -> Iterator[dict[str, str]]:
    """Documents of a text file: one per line (`line`) or separated by blank lines (`paragraph`)."""
    if mode not in ("line", "paragraph"):
        raise ValueError(f"text mode {mode!r}; expected 'line' or 'paragraph'")
    with open(path, encoding="utf-8") as f:
        if mode == "line":
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield {"text": line}
            return
        block: list[str] = []
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield {"text": "\n".join(block)}
                block = []
        if block:
            yield {"text": "\n".join(block)}


def _pick(record: dict[str, Any], where: str, text_field: str, prompt_field: str,
          target_field: str) -> dict[str, str] | None:
    if prompt_field or target_field:
        missing = [f for f in (prompt_field, target_field) if f not in record]
        if missing:
            raise ValueError(f"{where}: no field {missing[0]!r} (fields: {sorted(record)})")
        return {"prompt": str(record[prompt_field]), "target": str(record[target_field])}
    if text_field not in record:
        raise ValueError(f"{where}: no field {text_field!r} (fields: {sorted(record)}); set "
                       "text_field")
    text = record[text_field]
    return {"text": str(text)} if text and str(text).strip() else None


def read_jsonl(path: str, text_field: str = "text", prompt_field: str = "",
               target_field: str = "") -> Iterator[dict[str, str]]:
    """Records of a JSONL file: a text field, or prompt and target fields."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
            ex = _pick(record, f"{path}:{n}", text_field, prompt_field, target_field)
            if ex:
                yield ex


def read_parquet(path: str, text_field: str = "text", prompt_field: str = "",
                 target_field: str = "") -> Iterator[dict[str, str]]:
    """Rows of a Parquet file, read in record batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from None
    columns = [c for c in (prompt_field, target_field) if c] or [text_field]
    pf = pq.ParquetFile(path)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=columns):
        for row in batch.to_pylist():
            ex = _pick(row, path, text_field, prompt_field, target_field)
            if ex:
                yield ex


def read_tfds(name: str, split: str = "train", data_dir: str | None = None, text_field: str = "text",
              prompt_field: str = "", target_field: str = "") -> Iterator[dict[str, str]]:
    """Examples of a TFDS dataset through `tfds.data_source` (needs the `tfds` extra)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("TFDS sources need the tfds extra: pip install 'lepjax[tfds]'") from None
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    for i in range(len(source)):
        record = {k: (v.decode("utf-8") if isinstance(v, bytes) else v)
                  for k, v in source[i].items()}
        ex = _pick(record, f"tfds:{name}[{i}]", text_field, prompt_field, target_field)
        if ex:
            yield ex


def iterate(cfg: Any) -> Iterator[dict[str, str]]:
    """All examples of the inputs a `prepare` config names, in a deterministic order."""
    fields = dict(text_field=cfg.text_field, prompt_field=cfg.prompt_field,
                  target_field=cfg.target_field)
    if cfg.format == "tfds":
        yield from read_tfds(cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir or None, **fields)
        return
    if cfg.format not in FORMATS:
        raise ValueError(f"format {cfg.format!r}; expected one of {FORMATS}")
    for path in expand_inputs(list(cfg.inputs)):
        fmt = detect_format(path) if cfg.format == "auto" else cfg.format
        if fmt == "text":
            if cfg.prompt_field or cfg.target_field:
                raise ValueError(f"{path}: prompt/target fields need JSONL or Parquet input")
            yield from read_text(path, cfg.text_mode)
        elif fmt == "jsonl":
            yield from read_jsonl(path, **fields)
        else:
            yield from read_parquet(path, **fields)

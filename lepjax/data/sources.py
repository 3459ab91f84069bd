"""Text inputs for `lepjax prepare`: plain text, JSONL, Parquet and TFDS, cut into chunks.

Each source yields examples in a fixed, deterministic order: `{"text": str}` for documents, or
`{"prompt": str, "target": str}` for prompt/target pairs.

For parallel preparation an input is first *scanned* into chunks: a chunk names a piece of one
input (a byte range of a text or JSONL file starting at a line, a Parquet row group, a TFDS index
range), the number of examples in it, and a hash of its content. `read_chunk` reads exactly those
examples back, so a task that is handed a chunk reads its input itself. Text files are read as
UTF-8 lines split at b"\\n" (a trailing "\\r" is dropped); an undecodable byte is an error naming
the file, the byte offset and the line (files with one example per line are scanned in parallel
segments of SEGMENT_BYTES; past the first segment the line number is not known, the byte is).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from lepjax.data.records import DataError

FORMATS = ("auto", "text", "jsonl", "parquet", "tfds")
FIELDS = ("text_mode", "text_field", "prompt_field", "target_field")
CHUNK_BYTES = 1 << 20  # input bytes per chunk of a text / JSONL file
SEGMENT_BYTES = 64 << 20  # a line-per-example file is scanned in segments of this size
TFDS_CHUNK = 10000  # examples per chunk of a TFDS split


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


# ---- text and JSONL: lines -------------------------------------------------------------------


def _where(path: str, pos: int, n: int | None) -> str:
    return f"{path}:{n}" if n else f"{path} (byte {pos})"


def _lines(path: str, start: int, end: int,
           first_line: int | None) -> Iterator[tuple[int, int | None, str]]:
    """(byte offset, line number, text without its line break) of the lines starting in
    [start, end) of a file; `start` is a line start, `first_line` its number (None: unknown)."""
    with open(path, "rb") as f:
        f.seek(start)
        pos, n = start, first_line
        while pos < end:
            raw = f.readline()
            if not raw:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                at = f" (line {n})" if n else ""
                raise DataError(f"{path}: not UTF-8 text at byte {pos + e.start}{at}: "
                                f"{raw[e.start:e.start + 4]!r}") from None
            line = line[:-1] if line.endswith("\n") else line
            yield pos, n, line[:-1] if line.endswith("\r") else line
            pos, n = pos + len(raw), n + 1 if n else None


def json_object(line: str, where: str, error: type[Exception] = DataError) -> dict[str, Any]:
    """One JSONL line as a JSON object; anything else raises `error` naming `where` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def jsonl_objects(path: str, error: type[Exception] = DataError
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSONL file. A line that is not UTF-8
    (DataError), not JSON or not an object (`error`) is an error naming the file and the line."""
    for _, n, line in _lines(path, 0, os.path.getsize(path), 1):
        if line.strip():
            yield n, json_object(line, f"{path}:{n}", error)


def line_start(path: str, offset: int) -> int:
    """The offset of the first line of a file that starts at or after `offset`."""
    if offset == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(offset - 1)
        f.readline()
        return f.tell()


class _LineParser:
    """Examples of consecutive lines of one file, in one format (`feed`, then `flush`)."""

    def __init__(self, path: str, fmt: str, fields: dict[str, str]):
        mode = fields.get("text_mode", "line")
        if fmt == "text" and mode not in ("line", "paragraph"):
            raise ValueError(f"text mode {mode!r}; expected 'line' or 'paragraph'")
        if fmt == "text" and (fields.get("prompt_field") or fields.get("target_field")):
            raise ValueError(f"{path}: prompt/target fields need JSONL or Parquet input")
        self.path, self.fmt, self.fields = path, fmt, fields
        self.paragraphs = fmt == "text" and mode == "paragraph"
        self.block: list[str] = []

    def feed(self, where: str, line: str) -> list[dict[str, str]]:
        """The examples the line at `where` (file:line, or file and byte) completes."""
        blank = not line.strip()
        if self.paragraphs:
            if not blank:
                self.block.append(line)
                return []
            return self.flush()
        if blank:
            return []
        if self.fmt == "text":
            return [{"text": line}]
        record = json_object(line, where, ValueError)
        ex = _pick(record, where, self.fields.get("text_field", "text"),
                   self.fields.get("prompt_field", ""), self.fields.get("target_field", ""))
        return [ex] if ex else []

    def flush(self) -> list[dict[str, str]]:
        """The example still open (a paragraph), if any."""
        out = [{"text": "\n".join(self.block)}] if self.block else []
        self.block = []
        return out


def _scan_lines(path: str, fmt: str, fields: dict[str, str], start: int,
                end: int) -> list[dict[str, Any]]:
    parser = _LineParser(path, fmt, fields)
    size = os.path.getsize(path)
    start = line_start(path, start)
    if start >= end:
        return []
    chunks: list[dict[str, Any]] = []
    chunk = {"start": start, "line": 1 if start == 0 else None, "count": 0}
    h = hashlib.blake2b(digest_size=16)
    prev_blank = True

    def close(end: int) -> None:
        chunks.append({"path": path, "format": fmt, "bytes": size, **chunk, "end": end,
                       "sha": h.hexdigest()})

    for pos, n, line in _lines(path, start, end, chunk["line"]):
        blank = not line.strip()
        boundary = pos - chunk["start"] >= CHUNK_BYTES and (
            not parser.paragraphs or (prev_blank and not blank))
        if boundary:
            chunk["count"] += len(parser.flush())
            close(pos)
            chunk = {"start": pos, "line": n, "count": 0}
            h = hashlib.blake2b(digest_size=16)
        h.update(line.encode("utf-8") + b"\n")
        chunk["count"] += len(parser.feed(_where(path, pos, n), line))
        prev_blank = blank
    chunk["count"] += len(parser.flush())
    close(end)
    return chunks


def read_text(path: str, mode: str = "line") -> Iterator[dict[str, str]]:
    """Documents of a text file: one per line (`line`) or separated by blank lines (`paragraph`)."""
    yield from _read_lines(path, "text", {"text_mode": mode}, 0, os.path.getsize(path), 1)


def read_jsonl(path: str, text_field: str = "text", prompt_field: str = "",
               target_field: str = "") -> Iterator[dict[str, str]]:
    """Records of a JSONL file: a text field, or prompt and target fields."""
    fields = {"text_field": text_field, "prompt_field": prompt_field, "target_field": target_field}
    yield from _read_lines(path, "jsonl", fields, 0, os.path.getsize(path), 1)


def _read_lines(path: str, fmt: str, fields: dict[str, str], start: int, end: int,
                first_line: int) -> Iterator[dict[str, str]]:
    parser = _LineParser(path, fmt, fields)
    for pos, n, line in _lines(path, start, end, first_line):
        yield from parser.feed(_where(path, pos, n), line)
    yield from parser.flush()


# ---- Parquet: row groups ---------------------------------------------------------------------


def _parquet(path: str, fields: dict[str, str]):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from None
    columns = [fields[c] for c in ("prompt_field", "target_field") if fields.get(c)] or [
        fields.get("text_field", "text")]
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {pf.schema_arrow.names})")
    return pf, columns


def _row_group(path: str, fields: dict[str, str], group: int) -> tuple[list[dict], Any]:
    pf, columns = _parquet(path, fields)
    try:
        rows = pf.read_row_group(group, columns=columns).to_pylist()
    except Exception as e:
        raise DataError(f"{path}: row group {group} cannot be read ({e})") from None
    examples = [_pick(row, f"{path} (row group {group})", fields.get("text_field", "text"),
                      fields.get("prompt_field", ""), fields.get("target_field", ""))
                for row in rows]
    return [ex for ex in examples if ex], rows


def _scan_parquet(path: str, fields: dict[str, str]) -> list[dict[str, Any]]:
    pf, _ = _parquet(path, fields)
    chunks = []
    for g in range(pf.num_row_groups):
        examples, rows = _row_group(path, fields, g)
        sha = hashlib.blake2b(json.dumps(rows, sort_keys=True, default=str).encode(),
                              digest_size=16).hexdigest()
        chunks.append({"path": path, "format": "parquet", "bytes": os.path.getsize(path),
                       "row_group": g, "count": len(examples), "sha": sha})
    return chunks


def read_parquet(path: str, text_field: str = "text", prompt_field: str = "",
                 target_field: str = "") -> Iterator[dict[str, str]]:
    """Rows of a Parquet file, read a row group at a time."""
    fields = {"text_field": text_field, "prompt_field": prompt_field, "target_field": target_field}
    pf, _ = _parquet(path, fields)
    for g in range(pf.num_row_groups):
        yield from _row_group(path, fields, g)[0]


# ---- TFDS: index ranges ----------------------------------------------------------------------


def _tfds_source(name: str, split: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("TFDS sources need the tfds extra: pip install 'lepjax[tfds]'") from None
    return tfds.data_source(name, split=split, data_dir=data_dir or None)


def tfds_size(name: str, split: str = "train", data_dir: str | None = None) -> int:
    """Number of examples of a TFDS split."""
    return len(_tfds_source(name, split, data_dir))


def _tfds_range(name: str, split: str, data_dir: str | None, start: int, end: int,
                fields: dict[str, str]) -> tuple[list[dict], list[dict]]:
    source = _tfds_source(name, split, data_dir)
    records, examples = [], []
    for i in range(start, end):
        record = {k: (v.decode("utf-8") if isinstance(v, bytes) else v)
                  for k, v in source[i].items()}
        records.append(record)
        ex = _pick(record, f"tfds:{name}[{i}]", fields.get("text_field", "text"),
                   fields.get("prompt_field", ""), fields.get("target_field", ""))
        if ex:
            examples.append(ex)
    return examples, records


def scan_tfds(name: str, split: str, data_dir: str, start: int, end: int,
              fields: dict[str, str]) -> list[dict[str, Any]]:
    """The chunk of TFDS examples [start, end)."""
    examples, recs = _tfds_range(name, split, data_dir, start, end, fields)
    sha = hashlib.blake2b(json.dumps(recs, sort_keys=True, default=str).encode(),
                          digest_size=16).hexdigest()
    return [{"tfds": name, "split": split, "data_dir": data_dir, "format": "tfds",
             "start": start, "end": end, "count": len(examples), "sha": sha}]


def read_tfds(name: str, split: str = "train", data_dir: str | None = None, text_field: str = "text",
              prompt_field: str = "", target_field: str = "") -> Iterator[dict[str, str]]:
    """Examples of a TFDS dataset through `tfds.data_source` (needs the `tfds` extra)."""
    fields = {"text_field": text_field, "prompt_field": prompt_field, "target_field": target_field}
    n = tfds_size(name, split, data_dir)
    for start in range(0, n, TFDS_CHUNK):
        yield from _tfds_range(name, split, data_dir, start, min(start + TFDS_CHUNK, n),
                               fields)[0]


# ---- chunks ----------------------------------------------------------------------------------


def segments(path: str, fmt: str, fields: dict[str, str]) -> list[tuple[int, int]]:
    """The byte ranges a file is scanned in: segments of SEGMENT_BYTES for files with one
    example per line (text in line mode, JSONL), else the whole file."""
    size = os.path.getsize(path)
    if fmt == "parquet" or (fmt == "text" and fields.get("text_mode") == "paragraph"):
        return [(0, size)]
    return [(s, min(s + SEGMENT_BYTES, size)) for s in range(0, max(size, 1), SEGMENT_BYTES)]


def scan_file(path: str, fmt: str, fields: dict[str, str], start: int = 0,
              end: int | None = None) -> list[dict[str, Any]]:
    """The chunks of one input file (`fmt` text, jsonl or parquet), in order: of the lines that
    start in [start, end) for text and JSONL (a range from `segments`)."""
    if fmt == "parquet":
        return _scan_parquet(path, fields)
    return _scan_lines(path, fmt, fields, start, os.path.getsize(path) if end is None else end)


def read_chunk(chunk: dict[str, Any], fields: dict[str, str]) -> Iterator[dict[str, str]]:
    """The examples of a chunk `scan_file` / `scan_tfds` made, in order."""
    if chunk["format"] == "parquet":
        yield from _row_group(chunk["path"], fields, chunk["row_group"])[0]
    elif chunk["format"] == "tfds":
        yield from _tfds_range(chunk["tfds"], chunk["split"], chunk["data_dir"], chunk["start"],
                               chunk["end"], fields)[0]
    else:
        if os.path.getsize(chunk["path"]) != chunk["bytes"]:
            raise DataError(f"{chunk['path']} changed size while being prepared "
                            f"({chunk['bytes']} bytes when scanned)")
        yield from _read_lines(chunk["path"], chunk["format"], fields, chunk["start"],
                               chunk["end"], chunk["line"])


def file_formats(cfg: Any) -> list[tuple[str, str]]:
    """(absolute path, format) of every input file a `prepare`-style config names, in order."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format {cfg.format!r}; expected one of {', '.join(FORMATS)}")
    return [(os.path.abspath(p), detect_format(p) if cfg.format == "auto" else cfg.format)
            for p in expand_inputs(list(cfg.inputs))]


def iterate(cfg: Any) -> Iterator[dict[str, str]]:
    """All examples of the inputs a `prepare` config names, in a deterministic order."""
    fields = {k: cfg[k] for k in FIELDS}
    if cfg.format == "tfds":
        yield from read_tfds(cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir or None,
                             fields["text_field"], fields["prompt_field"], fields["target_field"])
        return
    for path, fmt in file_formats(cfg):
        if fmt == "parquet":
            pf, _ = _parquet(path, fields)
            for g in range(pf.num_row_groups):
                yield from _row_group(path, fields, g)[0]
        else:
            yield from _read_lines(path, fmt, fields, 0, os.path.getsize(path), 1)

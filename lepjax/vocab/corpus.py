"""Target-language text for vocabulary work: plain text files, one sentence or document per line.

Read as a stream (never held in memory whole); blank lines are skipped. `check_corpus` fails
early, naming the file, when an input is missing or holds no text. For the engine
(lepjax.data.engine), `plan_chunks` cuts the corpus into byte ranges that start at line starts;
a task reads its range itself (`chunk_batches`), and the chunks' lines, in order, are exactly
those of `iter_lines`.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterator, Sequence

from lepjax.data.sources import line_start

CHUNK_BYTES = 64 << 20  # corpus bytes per engine task

Chunk = tuple[str, int, int, int]  # (path, start byte, end byte, lines to take; 0 = all)


def expand_paths(paths: Sequence[str] | str) -> list[str]:
    """Files named by paths, globs or directories (sorted); a comma-separated string is allowed."""
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p)
                              if os.path.isfile(os.path.join(p, f))))
        elif any(c in p for c in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"corpus pattern {p!r} matches no file")
            out.extend(found)
        else:
            out.append(p)
    return out


def check_corpus(paths: Sequence[str] | str, what: str = "corpus") -> list[str]:
    """The corpus files, after checking each exists and that they hold some text."""
    files = expand_paths(paths)
    if not files:
        raise ValueError(f"no {what} given: set the {what} key to one or more text files")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{what} file {f!r} does not exist")
    if next(iter_lines(files), None) is None:
        raise ValueError(f"{what} is empty: {', '.join(files)} hold no non-blank line")
    return files


def iter_lines(files: Sequence[str], max_lines: int = 0) -> Iterator[str]:
    """Non-blank lines (stripped of the newline and surrounding spaces), at most `max_lines` (0 = all)."""
    n = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            try:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    yield line
                    n += 1
                    if max_lines and n >= max_lines:
                        return
            except UnicodeDecodeError:
                raise ValueError(_not_utf8(f)) from None


def _not_utf8(path: str) -> str:
    """Where a file stops being UTF-8: its name, the byte offset and the line."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}: not UTF-8 text at byte {offset + e.start} (line {n})"
            offset += len(raw)
    return f"{path}: not UTF-8 text"


def count_lines(files: Sequence[str], max_lines: int = 0) -> int:
    """Number of non-blank lines (for progress bars)."""
    return sum(1 for _ in iter_lines(files, max_lines))


def _text_lines(text: str) -> Iterator[str]:
    """The non-blank lines of a text, split and stripped as `iter_lines` reads a file."""
    for line in io.StringIO(text, newline=None):
        line = line.strip()
        if line:
            yield line


def plan_chunks(files: Sequence[str], max_lines: int = 0) -> list[Chunk]:
    """The corpus as chunks of about CHUNK_BYTES, in order: (path, start, end, take), each range
    starting at a line start; `take` limits the non-blank lines read from the last chunk when
    `max_lines` is set (its files are then read up to that line here, without tokenising)."""
    chunk_bytes = CHUNK_BYTES
    chunks: list[Chunk] = []
    if not max_lines:
        for path in files:
            size = os.path.getsize(path)
            starts = sorted({line_start(path, s) for s in range(0, size, chunk_bytes)})
            chunks.extend((path, a, b, 0) for a, b in zip(starts, starts[1:] + [size]) if a < b)
        return chunks
    n = 0  # non-blank lines before the current chunk
    for path in files:
        with open(path, "rb") as f:
            start = pos = in_chunk = 0
            for raw in f:
                pos += len(raw)
                in_chunk += sum(1 for _ in _text_lines(raw.decode("utf-8", "replace")))
                if n + in_chunk >= max_lines:
                    chunks.append((path, start, pos, max_lines - n))
                    return chunks
                if pos - start >= chunk_bytes:
                    chunks.append((path, start, pos, 0))
                    start, n, in_chunk = pos, n + in_chunk, 0
            if pos > start:
                chunks.append((path, start, pos, 0))
                n += in_chunk
    return chunks


def chunk_lines(chunk: Chunk) -> Iterator[str]:
    """The non-blank lines of a chunk (read where the task runs); a byte that is not UTF-8 is
    an error naming the file and its offset."""
    path, start, end, take = chunk
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text at byte {start + e.start}") from None
    for n, line in enumerate(_text_lines(text), 1):
        yield line
        if n == take:
            return


def chunk_batches(chunk: Chunk, batch_size: int) -> Iterator[list[str]]:
    """A chunk's lines in lists of `batch_size`."""
    batch: list[str] = []
    for line in chunk_lines(chunk):
        batch.append(line)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def progress_bar(progress: bool, total_bytes: int, desc: str):
    """A tqdm bar over corpus bytes (a no-op one without `progress`)."""
    from tqdm import tqdm

    return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, mininterval=1.0,
                disable=not progress)

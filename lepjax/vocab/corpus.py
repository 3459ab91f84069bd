"""Target-language text for vocabulary work: plain text files, one sentence or document per line.

Read as a stream (never held in memory whole); blank lines are skipped. `check_corpus` fails
early, naming the file, when an input is missing or holds no text.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence


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
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                yield line
                n += 1
                if max_lines and n >= max_lines:
                    return


def iter_batches(files: Sequence[str], batch_size: int, max_lines: int = 0) -> Iterator[list[str]]:
    """Lines in lists of `batch_size`."""
    batch: list[str] = []
    for line in iter_lines(files, max_lines):
        batch.append(line)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_lines(files: Sequence[str], max_lines: int = 0) -> int:
    """Number of non-blank lines (for progress bars)."""
    return sum(1 for _ in iter_lines(files, max_lines))

"""Atomic writes: a file or directory is either absent, its old version, or complete.

Every file lepjax writes for others to read (metadata, sidecars, records, reports, model
directories) goes through here: the content is written to a temporary name beside the target,
flushed, and renamed over it (`os.replace` is atomic on POSIX filesystems), so a kill or a full
disk never leaves a half-written file that a later run would trust.

    with atomic_file(path) as f:        # text by default; mode="wb" for bytes
        f.write(...)
    write_json(path, obj)               # indent 2, UTF-8
    commit_dir(tmp_dir, path)           # a finished directory replaces `path`
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import IO, Any


def temp_path(path: str, suffix: str = "") -> str:
    """A temporary name beside `path`, private to this process (`suffix` keeps an extension
    that a writer such as matplotlib reads, e.g. ".png")."""
    return f"{path}.tmp{os.getpid()}{suffix}"


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` when the block ends without an
    error (and is removed when it raises)."""
    tmp = temp_path(path)
    binary = "b" in mode
    try:
        with open(tmp, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, data: Any, *, sort_keys: bool = True) -> None:
    """Write `data` as indented UTF-8 JSON to `path`, atomically."""
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys, ensure_ascii=False)


def commit_dir(tmp: str, path: str) -> str:
    """Move the finished directory `tmp` to `path`, replacing what was there; returns `path`.
    (The old directory is removed first: the gap is one rename, never a partial directory.)"""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path

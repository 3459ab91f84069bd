"""The stage runner of `lepjax adapt`: each stage runs once, keyed by a hash of its settings.

A stage records its outputs and the hash in `run_dir/stages/<stage>.json`. On a rerun a stage
whose record is complete and current is skipped, so a rerun after a crash continues where it
stopped; a stage whose settings changed runs again from scratch, and so does every stage after it.
With several processes, process 0 decides and keeps the records; see `Stages`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from lepjax import files
from lepjax.parallel import ProcessGroup

log = logging.getLogger("lepjax.adapt")


def settings_hash(settings: Any) -> str:
    """A short, order-independent hash of JSON-serialisable `settings`."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Stages:
    """Runs stages once: a completed stage's record is reused on later runs.

    Each record keeps a hash of the settings the stage ran with. A stage runs again when its
    record or an output is missing (a crash: its work directory is kept, so training resumes from
    its checkpoint), when its settings changed, or when a stage before it ran in this invocation;
    in the last two cases its `reset` paths are deleted first, so nothing stale is resumed.

    With several processes (`group`), process 0 decides whether a stage runs, resets its paths
    and writes its record; the others follow its decision and return its record. A stage runs
    `on="all"` processes (device work on the global mesh; its host-side steps go through
    `group.on_leader`) or `on="leader"` (host-side work: process 0 runs it, the others wait).
    """

    def __init__(self, run_dir: str, group: ProcessGroup):
        self.dir = os.path.join(run_dir, "stages")
        self.group = group
        group.on_leader("stages", lambda: os.makedirs(self.dir, exist_ok=True))
        self.upstream_ran = False

    def run(self, name: str, fn: Callable[[], dict[str, Any]], settings: Any = None,
            reset: tuple[str, ...] = (), on: str = "all") -> dict[str, Any]:
        """The record of stage `name`, running `fn` unless a complete, current one exists."""
        key = settings_hash(settings)
        decision = self.group.on_leader(f"{name}/decide", lambda: self._decide(name, key, reset))
        if decision["skip"]:
            return decision["record"]
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        record = fn() if on == "all" else self.group.on_leader(f"{name}/run", fn)
        return self.group.on_leader(f"{name}/record", lambda: self._write(name, record, key, t0))

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")

    def _decide(self, name: str, key: str, reset: tuple[str, ...]) -> dict[str, Any]:
        path = self._path(name)
        record = None
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
        if record is not None and not self.upstream_ran and record.get("settings") == key and \
                all(os.path.exists(p) for p in record.get("outputs", {}).values()):
            log.info("stage %s: complete, skipped", name)
            return {"skip": True, "record": record}
        if self.upstream_ran or (record is not None and record.get("settings") != key):
            if record is not None:
                why = "an earlier stage ran again" if self.upstream_ran else "its settings changed"
                log.warning("stage %s: running again (%s)", name, why)
            for p in reset:
                shutil.rmtree(p, ignore_errors=True)
        if record is not None:
            os.remove(path)
        self.upstream_ran = True
        return {"skip": False}

    def _write(self, name: str, record: dict[str, Any], key: str, t0: float) -> dict[str, Any]:
        record["seconds"] = round(time.perf_counter() - t0, 1)
        record["settings"] = key
        path = self._path(name)
        files.write_json(path, record, sort_keys=False)
        return record

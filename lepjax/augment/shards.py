"""Resumable, sharded outputs of the augmentation methods (FIAT, instruction synthesis).

An augmentation writes two datasets side by side under its `output_dir`:

    text/     ArrayRecord shards of JSON records (one UTF-8 JSON object per record, sorted keys),
              with the same file names, completion sidecars and metadata.json as lepjax datasets
    tokens/   the matching tokenised records (`lepjax prepare` schema): what `lepjax train` reads

Work is cut into fixed shards; shard i is done when both `text/` and `tokens/` hold a complete
shard i, so a rerun skips finished shards and redoes an interrupted one. `augment.json` holds a
fingerprint of the inputs and settings: rerunning into a directory made from different inputs is
an error instead of a silent mix.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lepjax import files
from lepjax.data import records, sources
from lepjax.tokenizer import Tokenizer

FINGERPRINT = "augment.json"


log = logging.getLogger("lepjax.augment")

class AugmentError(ValueError):
    """Bad augmentation input or a failed teacher call (the message names file, line or shard)."""


def _record(path: str, n: int, obj: Mapping[str, Any], fields: Mapping[str, str],
            optional: set[str]) -> dict[str, str]:
    """One JSONL object as {name: str(value)} plus "source" (file:line); errors name the line."""
    rec = {"source": f"{os.path.basename(path)}:{n}"}
    for name, key in fields.items():
        if key not in obj:
            if name in optional:
                continue
            raise AugmentError(f"{path}:{n}: no field {key!r} (the {name} field; fields on this "
                               f"line: {sorted(obj)})")
        value = obj[key]
        rec[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return rec


def _decode(raw: bytes, path: str, n: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AugmentError(f"{path}:{n}: not UTF-8 text at byte {e.start} of the line: "
                           f"{raw[e.start:e.start + 4]!r}") from None


def input_files(inputs: Sequence[str] | str, what: str) -> list[str]:
    """The absolute paths of JSONL `inputs` (files, globs, directories; `what` names the key)."""
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p.strip()]
    if not inputs:
        raise AugmentError(f"{what} is empty: name the JSONL files to read")
    return [os.path.abspath(p) for p in sources.expand_inputs(list(inputs))]


def read_jsonl_records(inputs: Sequence[str], fields: Mapping[str, str],
                       optional: Iterable[str] = (), what: str = "inputs") -> list[dict[str, str]]:
    """Records of JSONL files: {name: str(value of JSON key)} per line, plus "source" (file:line).

    `fields` maps names to JSON keys; a line without a (non-optional) key is an error naming the
    file, the line and the key.
    """
    optional = set(optional)
    out: list[dict[str, str]] = []
    for path in input_files(inputs, what):
        for n, obj in sources.jsonl_objects(path, AugmentError):
            out.append(_record(path, n, obj, fields, optional))
    if not out:
        raise AugmentError(f"{what} {list(inputs)} hold no records")
    return out


def plan_jsonl(inputs: Sequence[str] | str, fields: Mapping[str, str], per_shard: int,
               optional: Iterable[str] = (), what: str = "inputs"
               ) -> tuple[int, str, list[list[list]]]:
    """Stream the JSONL records once (each checked as `read_jsonl_records` does) into a shard
    plan: (records, digest of their fields, pieces per shard), a piece [path, start byte, end
    byte, first line number] naming the lines of shard i that one file holds, which
    `read_jsonl_pieces` reads back on any host. Memory: the plan, not the records."""
    import hashlib

    optional = set(optional)
    digest = hashlib.sha256()
    plan: list[list[list]] = []
    count = 0
    for path in input_files(inputs, what):
        with open(path, "rb") as f:
            pos, n, piece = 0, 0, None
            for raw in f:
                n += 1
                start, pos = pos, pos + len(raw)
                line = _decode(raw, path, n)
                if not line.strip():
                    continue
                rec = _record(path, n, sources.json_object(line, f"{path}:{n}", AugmentError),
                              fields, optional)
                digest.update(repr(tuple(rec.get(k, "") for k in (*fields, "source"))).encode())
                if count % per_shard == 0:
                    plan.append([])
                    piece = None
                if piece is None:
                    piece = [path, start, pos, n]
                    plan[-1].append(piece)
                piece[2] = pos
                count += 1
    if not count:
        raise AugmentError(f"{what} {list(inputs) if not isinstance(inputs, str) else inputs} "
                           "hold no records")
    return count, digest.hexdigest()[:16], plan


def read_jsonl_pieces(pieces: Sequence[Sequence], fields: Mapping[str, str],
                      optional: Iterable[str] = ()) -> list[dict[str, str]]:
    """The records of the pieces of one shard of a `plan_jsonl` plan (read where the task runs)."""
    optional = set(optional)
    out = []
    for path, start, end, first_line in pieces:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        for k, raw in enumerate(data.split(b"\n")):
            n = first_line + k
            line = _decode(raw, path, n)
            if line.strip():
                out.append(_record(path, n, sources.json_object(line, f"{path}:{n}", AugmentError),
                                   fields, optional))
    return out


_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(path: str) -> Tokenizer:
    """The tokenizer at `path`, loaded once per process (engine workers run many shards)."""
    from lepjax.tokenizer import load_tokenizer

    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


class TextShardWriter(records.ShardWriter):
    """A shard of JSON text records, written atomically like token shards."""

    def write_json(self, obj: Mapping[str, Any]) -> None:
        """Append one record (UTF-8 JSON with sorted keys)."""
        self.write_bytes(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def write_text_shard(directory: str, index: int, rows: Sequence[Mapping[str, Any]]) -> dict:
    """Write `rows` as text shard `index`; returns its sidecar info."""
    writer = TextShardWriter(directory, index)
    for row in rows:
        writer.write_json(row)
    return writer.close()


def read_text_shard(directory: str, index: int) -> list[dict[str, Any]]:
    """The JSON records of a complete text shard."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(os.path.join(directory, records.shard_name(index)))
    try:
        return [json.loads(b) for b in reader.read(list(range(reader.num_records())))]
    finally:
        reader.close()


def shard_done(out: str, index: int) -> bool:
    """Whether shard `index` is complete in both text/ and tokens/."""
    return bool(records.shard_complete(os.path.join(out, "text"), index)
                and records.shard_complete(os.path.join(out, "tokens"), index))


def prepare_output(out: str, fingerprint: Mapping[str, Any],
                   subdirs: Sequence[str] = ("text", "tokens"),
                   teacher: Mapping[str, Any] | None = None) -> list[str]:
    """Create `subdirs` under `out`, check the run fingerprint, drop stale temp files.

    The teacher is not part of the fingerprint (a run may move from a local checkpoint to a
    server of the same model); `augment.json` lists every teacher that worked on `out`, and a
    rerun with a new one says so in a warning."""
    dirs = [os.path.join(out, d) for d in subdirs]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(out, FINGERPRINT)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("fingerprint") != digest:
            changed = sorted(k for k in set(old.get("settings", {})) | set(fingerprint)
                             if old.get("settings", {}).get(k) != fingerprint.get(k))
            raise AugmentError(
                f"{out} holds shards of a different augmentation (changed: {', '.join(changed)}); "
                "use another output_dir, or delete this one to start over")
        teachers = old.get("teachers", [])
        if teacher is not None and dict(teacher) not in teachers:
            if teachers:
                log.warning("%s was written by teacher %s; this run continues with %s (both are "
                            "listed in %s)", out, teachers[-1], dict(teacher), FINGERPRINT)
            files.write_json(path, {**old, "teachers": teachers + [dict(teacher)]})
    else:
        files.write_json(path, {"fingerprint": digest, "settings": dict(fingerprint),
                                         "teachers": [dict(teacher)] if teacher else []})
    for d in dirs:
        records.remove_stale_temp_files(d)  # left by a killed run; finished shards are kept
    return dirs


def sha(text: str) -> str:
    """A short hash of a text (for fingerprints)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def finish(out: str, num_shards: int, *, text_kind: str, token_kind: str, tok: Tokenizer,
           add_bos: bool, add_eos: bool, extra: Mapping[str, Any]) -> bool:
    """Write both metadata.json files once every shard is complete; returns whether it did."""
    text_dir, tok_dir = os.path.join(out, "text"), os.path.join(out, "tokens")
    text_infos = [records.shard_complete(text_dir, i) for i in range(num_shards)]
    tok_infos = [records.shard_complete(tok_dir, i) for i in range(num_shards)]
    if not (all(text_infos) and all(tok_infos)):
        return False
    records.write_metadata(text_dir, {
        "kind": text_kind, "format": "json",
        "num_records": sum(i["records"] for i in text_infos), "num_tokens": 0,
        "shards": [{"file": records.shard_name(i), **info} for i, info in enumerate(text_infos)],
        "tokens": tok_dir, **extra})
    records.write_metadata(tok_dir, {
        "kind": token_kind,
        "tokenizer": {**tok.describe(), "add_bos": add_bos, "add_eos": add_eos},
        "num_records": sum(i["records"] for i in tok_infos),
        "num_tokens": sum(i["tokens"] for i in tok_infos),
        "max_record_tokens": max(i["max_tokens"] for i in tok_infos),
        "shards": [{"file": records.shard_name(i), **info} for i, info in enumerate(tok_infos)],
        "text": text_dir, **extra})
    return True


def complete_shard(teacher: Any, prompts: Sequence[Any], request: Any, index: int,
                   names: Sequence[str], skip_failed: bool = False,
                   errors: dict[int, str] | None = None,
                   on_result: Any = None) -> list[str | None]:
    """`teacher.complete(prompts)` for shard `index`; a failure names the shard and the failed
    prompts (`names[i]` describes prompt i, e.g. "record 12 (train.jsonl:13)"). With
    `skip_failed`, failed prompts come back as None (logged; their messages go to `errors`) and the
    others are kept; a shard where every prompt failed raises either way (the teacher is likely
    down)."""
    from lepjax.augment.teacher_api import TeacherError

    try:
        return teacher.complete(prompts, request, on_result=on_result)
    except TeacherError as e:
        failed = list(e.failed or range(len(prompts)))
        where = ", ".join(names[i] for i in failed[:10]) + (", ..." if len(failed) > 10 else "")
        if skip_failed and e.completed:
            log.warning("shard %d: skipping %d prompts the teacher failed on (%s): %s", index,
                        len(failed), where, e.last_error)
            if errors is not None:
                errors.update({i: e.errors.get(i, e.last_error) for i in failed})
            return [e.completed.get(i) for i in range(len(prompts))]
        raise AugmentError(
            f"teacher failed on shard {index} ({len(failed)} of {len(prompts)} prompts: {where}): "
            f"{e}. Shards before {index} are complete and kept; rerun to resume from shard "
            f"{index}") from e

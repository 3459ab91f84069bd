"""Teacher backends and the factory that builds one from a config: something that completes prompts.

  local   a lepjax or Hugging Face checkpoint decoded by `lepjax.generate.Generator` (default;
          lepjax.augment.local_teacher);
  openai  any OpenAI-compatible completions endpoint (a vLLM server, `lepjax serve`, ...;
          lepjax.augment.openai_client).

Both take prompts as text (or text and special-token parts, see lepjax.augment.teacher_api) and
return completions as text, so augmentation code does not care where the teacher runs. Greedy
decoding (temperature 0) gives the same completions from both when they serve the same checkpoint.
The backends import only `teacher_api`; this module imports them (no cycle).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ml_collections import ConfigDict

from lepjax.augment.teacher_api import Teacher

log = logging.getLogger("lepjax.augment")


def teacher_section() -> ConfigDict:
    """The `teacher` config section.

    Keys:
      backend: local | openai.
      path: (local) the checkpoint directory (lepjax or Hugging Face, with its tokenizer).
      dtype: (local) compute dtype.
      batch_size, length_bucket: (local) decoding batch and prompt-length padding multiple.
      add_bos: (local) prepend the tokenizer's BOS to each prompt.
      urls: (openai) the servers' base URLs (a tuple, or comma-separated), e.g.
        http://127.0.0.1:8000/v1; one vLLM server per accelerator host. Requests are spread
        evenly over them.
      model: (openai) the model name sent with each request.
      api: (openai) completions | chat: post each prompt to /v1/completions, or as the one user
        message to /v1/chat/completions (the server applies its chat template; special prompt
        parts are sent as their strings inside the message).
      api_key_env: (openai) environment variable holding the API key ("" = none).
      max_in_flight: (openai) requests in flight at once across the whole engine (every worker
        together: each request holds a lease of a cluster-wide semaphore); e.g. the server
        slots of the pool (vLLM's max_num_seqs times the number of servers).
      timeout_s: (openai) seconds before a request is abandoned and retried.
      max_retries: (openai) retries per request before giving up.
      backoff_s: (openai) first retry delay; doubles on every retry.
      tokenizer: (openai) tokenizer whose BOS/EOS strings stand for the special-token parts of a
        prompt ("" = the synthesizer's tokenizer where the method has one, else teacher.path).
      special_text.bos, special_text.eos: (openai) strings sent for those parts instead ("" =
        the tokenizer's).
    """
    return ConfigDict(dict(
        backend="local", path="", dtype="bfloat16", batch_size=16, length_bucket=64,
        add_bos=True, urls=(), model="", api="completions", api_key_env="", max_in_flight=8,
        timeout_s=120.0, max_retries=4, backoff_s=1.0, tokenizer="",
        special_text=dict(bos="", eos="")))


def special_strings(tokenizer: Any) -> dict[str, str]:
    """{"bos", "eos"} -> the tokenizer's strings of its BOS / EOS tokens (absent if it has none)."""
    vocab = tokenizer.pieces
    return {name: vocab[tid] for name, tid in (("bos", tokenizer.bos_id),
                                                ("eos", tokenizer.eos_id)) if tid is not None}


def _special_text(section: Any, tokenizer: Any = None) -> dict[str, str]:
    """The strings of special parts: teacher.special_text, else those of teacher.tokenizer, else of
    `tokenizer`, else of teacher.path's tokenizer (when it exists); missing ones fail at use."""
    text = {k: v for k, v in dict(section.get("special_text", {})).items() if v}
    path = section.get("tokenizer", "")
    if not path and tokenizer is None and section.path and os.path.exists(section.path):
        path = section.path
    if path:
        from lepjax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path)
    return {**(special_strings(tokenizer) if tokenizer is not None else {}), **text}


def make_teacher(cfg: Any, *, tokenizer: Any = None) -> Teacher:
    """The teacher `cfg.teacher` describes, on the mesh of `cfg.mesh` (when `cfg` has one).

    `tokenizer`: the method's view of the teacher's tokenizer (the synthesizer's), used by the
    openai backend for the strings of special prompt parts when teacher.tokenizer is not set.
    """
    section = cfg.teacher
    if section.backend == "local":
        from lepjax import parallel
        from lepjax.augment.local_teacher import LocalTeacher

        mesh, rules = parallel.mesh_from_config(cfg.mesh) if "mesh" in cfg else (None, None)
        return LocalTeacher(section.path, dtype=section.dtype, batch_size=section.batch_size,
                            length_bucket=section.length_bucket, add_bos=section.add_bos,
                            mesh=mesh, rules=rules)
    if section.backend == "openai":
        from lepjax.augment.openai_client import OpenAITeacher

        return OpenAITeacher(section.urls, model=section.model, api=section.api,
                             api_key_env=section.api_key_env,
                             max_in_flight=section.max_in_flight, timeout_s=section.timeout_s,
                             max_retries=section.max_retries, backoff_s=section.backoff_s,
                             special_text=_special_text(section, tokenizer))
    raise ValueError(f"teacher.backend={section.backend!r}: expected 'local' or 'openai'")


def describe_teacher(cfg: Any) -> dict[str, Any]:
    """What metadata.json records about the teacher."""
    t = cfg.teacher
    if t.backend == "local":
        return {"backend": "local", "path": os.path.abspath(t.path) if t.path else ""}
    urls = t.urls.split(",") if isinstance(t.urls, str) else list(t.urls)
    return {"backend": t.backend, "urls": [u.strip() for u in urls if u.strip()],
            "model": t.model, "api": t.api}


_WORKER_TEACHERS: dict[str, Teacher] = {}


def worker_teacher(cfg: Any, tokenizer_path: str = "") -> Teacher:
    """The teacher `cfg.teacher` describes, made once per engine worker process
    (`tokenizer_path`: the method's view of its tokenizer, as `make_teacher`'s `tokenizer`)."""
    key = json.dumps([cfg.teacher.to_dict(), tokenizer_path], sort_keys=True, default=str)
    if key not in _WORKER_TEACHERS:
        from lepjax.augment.shards import tokenizer

        tok = tokenizer(tokenizer_path) if tokenizer_path else None
        _WORKER_TEACHERS[key] = make_teacher(cfg, tokenizer=tok)
    return _WORKER_TEACHERS[key]


def run_shard_tasks(cfg: Any, fn: Callable[..., Any], tasks: Sequence[tuple], *,
                    teacher: Teacher | None = None, tokenizer: Any = None
                    ) -> Iterator[tuple[int, Any]]:
    """`fn(*task, get_teacher=...)` for every task (one per missing output shard) on the engine
    `cfg.engine` describes; yields (task index, result) as tasks finish.

    A given `teacher` object, and the local JAX teacher (`teacher.backend=local`, which holds the
    accelerators of this process), run every task in this process: the engine kind is forced to
    in-process. Elsewhere each worker makes its own OpenAI-compatible client once, and
    `teacher.max_in_flight` holds across all of them (a cluster-wide semaphore).
    """
    from lepjax.data.engine import Engine, open_engine

    if not tasks:
        return
    if teacher is not None or cfg.teacher.backend == "local":
        if teacher is None and cfg.engine.kind != "synchronous":
            log.info("teacher.backend=local: the teacher runs in this process, so the %d shard "
                     "tasks do too (engine.kind=%s is not used)", len(tasks), cfg.engine.kind)
        held = [teacher]

        def get_teacher() -> Teacher:
            if held[0] is None:
                held[0] = make_teacher(cfg, tokenizer=tokenizer)
            return held[0]

        def in_process(*task: Any) -> Any:
            return fn(*task, get_teacher=get_teacher)

        in_process.__name__ = fn.__name__
        yield from Engine(None, retries=0).map(in_process, tasks)
        return
    with open_engine(cfg.engine) as engine:
        yield from engine.map(fn, tasks)

"""Teacher backends: something that completes text prompts.

  local   a lepjax or Hugging Face checkpoint decoded by `lepjax.generate.Generator` (default);
  openai  any OpenAI-compatible completions endpoint (a vLLM server, `lepjax serve`, ...).

Both take prompts as text and return completions as text, so augmentation code does not care
where the teacher runs. Greedy decoding (temperature 0) gives the same completions from both when
they serve the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from ml_collections import ConfigDict

log = logging.getLogger("lepjax.augment.teacher")


def teacher_section() -> ConfigDict:
    """The `teacher` config section.

    Keys:
      backend: local | openai.
      path: (local) the checkpoint directory (lepjax or Hugging Face, with its tokenizer).
      dtype: (local) compute dtype.
      batch_size, length_bucket: (local) decoding batch and prompt-length padding multiple.
      add_bos: (local) prepend the tokenizer's BOS to each prompt.
      url: (openai) the server's base URL, e.g. http://127.0.0.1:8000/v1.
      model: (openai) the model name sent with each request.
      api_key_env: (openai) environment variable holding the API key ("" = none).
      concurrency: (openai) requests in flight at once.
      timeout_s: (openai) seconds before a request is abandoned and retried.
      max_retries: (openai) retries per request before giving up.
      backoff_s: (openai) first retry delay; doubles on every retry.
    """
    return ConfigDict(dict(
        backend="local", path="", dtype="bfloat16", batch_size=16, length_bucket=64,
        add_bos=True, url="", model="", api_key_env="", concurrency=8, timeout_s=120.0,
        max_retries=4, backoff_s=1.0))


@dataclasses.dataclass(frozen=True)
class Request:
    """What to generate for each prompt; temperature 0 = greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


class TeacherError(RuntimeError):
    """Some prompts got no completion (any backend). `completed`: index -> text of those that did; `failed`:
    indices without one (in order); `url`; `last_error`: the last failure's message."""

    def __init__(self, message: str, *, completed: dict[int, str], failed: list[int], url: str,
                 last_error: str):
        super().__init__(message)
        self.completed, self.failed, self.url, self.last_error = completed, failed, url, last_error


class Teacher(Protocol):
    """Completes text prompts."""

    def complete(self, prompts: Sequence[str], request: Request = Request(),
                 progress: bool = False) -> list[str]:
        """One completion per prompt, in order (stop strings and EOS cut off). Raises
        `TeacherError` (carrying the completions that did succeed) when some prompts fail."""
        ...


class LocalTeacher:
    """A checkpoint decoded in this process by `lepjax.generate.Generator` over the mesh."""

    def __init__(self, path: str, *, dtype: str = "bfloat16", batch_size: int = 16,
                 length_bucket: int = 64, add_bos: bool = True, mesh=None, rules=None):
        from lepjax import models, parallel
        from lepjax.data.tokenizer import load_tokenizer
        from lepjax.generate import Generator

        if not path:
            raise ValueError("teacher.path is not set (the local teacher's checkpoint)")
        rules = rules if rules is not None else parallel.DEFAULT_RULES
        self.model, _ = models.load(path, dtype=dtype, mesh=mesh, rules=rules)
        self.tokenizer = load_tokenizer(path)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(f"tokenizer of {path} has {self.tokenizer.vocab_size} tokens but the "
                             f"model only {self.model.config.vocab_size} embedding rows")
        self.add_bos, self.path = add_bos, path
        self.generator = Generator(self.model, mesh=mesh, rules=rules, batch_size=batch_size,
                                   length_bucket=length_bucket)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of `prompts` as the teacher sees them (BOS first when add_bos)."""
        bos = [self.tokenizer.bos_id] if self.add_bos and self.tokenizer.bos_id is not None else []
        return [bos + ids for ids in self.tokenizer.encode_batch(list(prompts))]

    def complete(self, prompts: Sequence[str], request: Request = Request(),
                 progress: bool = False) -> list[str]:
        """Completions of `prompts` (see `Teacher.complete`)."""
        from lepjax.generate import SamplingParams

        if not prompts:
            return []
        eos = (self.tokenizer.eos_id,) if self.tokenizer.eos_id is not None else ()
        params = SamplingParams(max_new_tokens=request.max_new_tokens,
                                temperature=request.temperature, top_p=request.top_p,
                                seed=request.seed, eos_ids=eos, stop=tuple(request.stop))
        encoded = self.encode(prompts)
        context = self.model.config.max_position_embeddings
        fits = [i for i, ids in enumerate(encoded) if len(ids) + request.max_new_tokens <= context]
        outs = self.generator.generate([encoded[i] for i in fits], params,
                                       tokenizer=self.tokenizer, progress=progress) if fits else []
        completed = {i: o.text or "" for i, o in zip(fits, outs)}
        if len(fits) < len(prompts):
            failed = [i for i in range(len(prompts)) if i not in completed]
            error = (f"prompt {failed[0]} has {len(encoded[failed[0]])} tokens; with "
                     f"max_new_tokens={request.max_new_tokens} it exceeds the model's context of "
                     f"{context}")
            raise TeacherError(f"{len(failed)} of {len(prompts)} prompts do not fit the context "
                               f"of {self.path} (indices {failed[:20]}): {error}",
                               completed=completed, failed=failed, url=self.path,
                               last_error=error)
        return [completed[i] for i in range(len(prompts))]


def make_teacher(section: Any, *, mesh=None, rules=None) -> Teacher:
    """The teacher a `teacher` config section describes."""
    if section.backend == "local":
        return LocalTeacher(section.path, dtype=section.dtype, batch_size=section.batch_size,
                            length_bucket=section.length_bucket, add_bos=section.add_bos,
                            mesh=mesh, rules=rules)
    if section.backend == "openai":
        from lepjax.augment.openai_client import OpenAITeacher

        return OpenAITeacher.from_config(section)
    raise ValueError(f"teacher.backend={section.backend!r}: expected 'local' or 'openai'")

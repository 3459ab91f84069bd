"""The `local` teacher: a checkpoint decoded in this process by `lepjax.generate.Generator`.

Prompts are encoded part by part: text parts with the checkpoint's tokenizer (no special tokens),
`BOS`/`EOS` parts as the tokenizer's BOS/EOS ids, never as the strings `<s>`/`</s>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lepjax.augment.teacher_api import OnResult, Prompt, Request, Special, TeacherError, parts


def encode_prompt(tokenizer, prompt: Prompt, add_bos: bool = True) -> list[int]:
    """Token ids of a prompt: BOS first when `add_bos`, text parts encoded, special parts as ids."""
    ids = tokenizer.bos_prefix(add_bos)
    pieces = parts(prompt)
    texts = [p for p in pieces if isinstance(p, str)]
    encoded = iter(tokenizer.encode(texts)) if texts else iter(())
    for p in pieces:
        if isinstance(p, Special):
            tid = tokenizer.bos_id if p.name == "bos" else tokenizer.eos_id
            if tid is None:
                raise ValueError(f"the prompt holds a {p.name.upper()} token but tokenizer "
                                 f"{tokenizer.path} has no {p.name.upper()} id")
            ids.append(int(tid))
        else:
            ids.extend(next(encoded))
    return ids


class LocalTeacher:
    """A checkpoint decoded in this process by `lepjax.generate.Generator` over the mesh."""

    def __init__(self, path: str, *, dtype: str = "bfloat16", batch_size: int = 16,
                 length_bucket: int = 64, add_bos: bool = True, mesh=None, rules=None):
        from lepjax import models, parallel
        from lepjax.tokenizer import load_tokenizer
        from lepjax.generate import Generator

        if not path:
            raise ValueError("teacher.path is not set (the local teacher's checkpoint)")
        rules = rules if rules is not None else parallel.DEFAULT_RULES
        self.model, _ = models.load(path, dtype=dtype, mesh=mesh, rules=rules)
        self.tokenizer = load_tokenizer(path)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(f"tokenizer of {path} has {self.tokenizer.vocab_size} tokens but the "
                             f"model only {self.model.config.vocab_size} embedding rows")
        self.add_bos, self.path, self.batch_size = add_bos, path, batch_size
        self.generator = Generator(self.model, mesh=mesh, rules=rules, batch_size=batch_size,
                                   length_bucket=length_bucket,
                                   vocab_limit=self.tokenizer.vocab_size)

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of `prompts` as the teacher sees them (see `encode_prompt`)."""
        return [encode_prompt(self.tokenizer, p, self.add_bos) for p in prompts]

    def complete(self, prompts: Sequence[Prompt], request: Request = Request(),
                 progress: bool = False, on_result: OnResult | None = None) -> list[str]:
        """Completions of `prompts` (see `Teacher.complete`); `on_result` after each batch."""
        from lepjax.generate import SamplingParams

        if not prompts:
            return []
        params = SamplingParams(max_new_tokens=request.max_new_tokens,
                                temperature=request.temperature, top_p=request.top_p,
                                seed=request.seed, eos_ids=self.tokenizer.stop_ids,
                                stop=tuple(request.stop))
        encoded = self.encode(prompts)
        context = self.model.config.max_position_embeddings
        fits = [i for i, ids in enumerate(encoded) if len(ids) + request.max_new_tokens <= context]
        fits.sort(key=lambda i: len(encoded[i]))  # batches of similar lengths, as one call would
        completed: dict[int, str] = {}
        for b in range(0, len(fits), self.batch_size):
            idx = fits[b:b + self.batch_size]
            outs = self.generator.generate([encoded[i] for i in idx], params,
                                           tokenizer=self.tokenizer, progress=progress)
            for i, o in zip(idx, outs):
                completed[i] = o.text or ""
                if on_result is not None:
                    on_result(i, completed[i])
        if len(completed) < len(prompts):
            failed = [i for i in range(len(prompts)) if i not in completed]
            error = (f"prompt {failed[0]} has {len(encoded[failed[0]])} tokens; with "
                     f"max_new_tokens={request.max_new_tokens} it exceeds the model's context of "
                     f"{context}")
            raise TeacherError(f"{len(failed)} of {len(prompts)} prompts do not fit the context "
                               f"of {self.path} (indices {failed[:20]}): {error}",
                               completed=completed, failed=failed, url=self.path,
                               last_error=error)
        return [completed[i] for i in range(len(prompts))]

"""The synthesis rounds of `augment instruct-pt` (Cheng et al. 2024): the chain plan, the
synthesizer's exact token budget, and one shard of chains run round by round with every round
persisted (see lepjax.augment.instruct_pt for the method, lepjax.augment.instruct_tasks for the
engine tasks that run these)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from lepjax import files
from lepjax.augment import shards
from lepjax.augment import instruct_format as fmt
from lepjax.augment.teacher_api import Part, Request, Special, Teacher, TeacherError

log = logging.getLogger("lepjax.augment.instruct_pt")


def plan_chains(num_texts: int, rounds: int, start: int = 0, stop: int | None = None
                ) -> list[list[int]]:
    """Positions (in the augmented texts) of chains `start`..`stop`: the texts split into
    `rounds` parts, chain j = the j-th of each part."""
    if rounds <= 0:
        raise shards.AugmentError("synth.rounds must be positive")
    per_part = math.ceil(num_texts / rounds)
    stop = per_part if stop is None else min(stop, per_part)
    return [[j + r * per_part for r in range(rounds) if j + r * per_part < num_texts]
            for j in range(start, stop)]


class Budget:
    """Counts prompt tokens exactly with the synthesizer's tokenizer (text parts encoded as the
    local teacher does, one token per special part, BOS if the teacher adds it)."""

    def __init__(self, tokenizer: Any, context_tokens: int, max_new_tokens: int,
                 add_bos: bool = True):
        self.tok, self.context, self.max_new = tokenizer, context_tokens, max_new_tokens
        self.bos = 1 if add_bos else 0
        if self.count([fmt.synth_prompt("")]) + max_new_tokens > context_tokens:
            raise shards.AugmentError(
                f"synth.context_tokens={context_tokens} leaves no room for a text after "
                f"max_new_tokens={max_new_tokens}")

    def count(self, parts: Sequence[Part], bos: bool = True) -> int:
        """Tokens the synthesizer sees for these prompt parts."""
        texts = [p for p in parts if isinstance(p, str)]
        n = sum(map(len, self.tok.encode(texts))) if texts else 0
        return n + sum(isinstance(p, Special) for p in parts) + (self.bos if bos else 0)

    def fits(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` and the new tokens fit the context."""
        return tokens + self.max_new <= self.context

    def fit_text(self, text: str) -> tuple[str, bool]:
        """`text`, cut (by tokens) until its prompt fits alone; and whether it was cut."""
        if self.fits(self.count([fmt.synth_prompt(text)])):
            return text, False
        ids = self.tok.encode([text])[0]
        keep = self.context - self.max_new - self.count([fmt.synth_prompt("")])
        while keep > 0:
            cut = self.tok.decode(ids[:keep])
            excess = self.count([fmt.synth_prompt(cut)]) + self.max_new - self.context
            if excess <= 0:
                return cut, True
            keep -= max(1, excess)
        return "", True


class ShardSynthesis:
    """The rounds of one shard of chains, each round persisted under chains/shard-NNNNN/."""

    def __init__(self, directory: str, chain_texts: Sequence[Sequence[str]],
                 names: Sequence[Sequence[str]], budget: Budget, sc: Any):
        self.dir, self.texts, self.names, self.budget, self.sc = directory, chain_texts, names, \
            budget, sc
        self.sent = 0  # prompts sent to the teacher by this run
        os.makedirs(directory, exist_ok=True)

    def _path(self, r: int) -> str:
        return os.path.join(self.dir, f"round-{r}.json")

    def report_path(self) -> str:
        return os.path.join(self.dir, "report.json")

    def run(self, get_teacher, request: Request, skip: bool) -> tuple[list[list[dict]], list]:
        """(entries per chain, failed prompts): runs the rounds not yet persisted and retries
        failed prompts of those that are."""
        entries: list[list[dict[str, Any]]] = [[] for _ in self.texts]
        context: list[tuple[list[Part], int] | None] = [None] * len(self.texts)
        failed_all: list[dict[str, Any]] = []
        sep = [fmt.EOS, fmt.BOS] if self.sc.separator == "eos_bos" else [self.sc.separator_text]
        for r in range(max(map(len, self.texts), default=0)):
            active = [c for c in range(len(self.texts)) if r < len(self.texts[c])]
            stored = self._load(r)
            prompts, info = [], []
            for c in active:
                text, truncated = self.budget.fit_text(self.texts[c][r])
                own = [fmt.synth_prompt(text)]
                own_n = self.budget.count(own, bos=False)
                if stored is not None:
                    linked = stored[c]["linked"]
                else:
                    linked = context[c] is not None and self.budget.fits(
                        context[c][1] + self.budget.count(sep, bos=False) + own_n)
                if linked:
                    parts = [*context[c][0], *sep, *own]
                    n = context[c][1] + self.budget.count(sep, bos=False) + own_n
                else:
                    parts, n = own, self.budget.bos + own_n
                prompts.append(parts)
                info.append({"text": self.texts[c][r], "linked": linked, "truncated": truncated,
                             "prompt_tokens": n})
            outputs = [stored[c]["output"] if stored else None for c in active]
            errors = {k: stored[c].get("error", "") for k, c in enumerate(active)
                      if stored and outputs[k] is None}
            todo = [k for k, o in enumerate(outputs) if o is None]
            if todo:
                self.sent += len(todo)
                outputs, errors = self._complete(get_teacher(), prompts, todo, outputs, request,
                                                 [self.names[active[k]][r] for k in
                                                  range(len(active))], skip, r, info, active)
            self._save(r, active, info, outputs, errors)
            for k, c in enumerate(active):
                pairs = fmt.parse_pairs(outputs[k]) if outputs[k] is not None else []
                entries[c].append({**info[k], "pairs": [list(p) for p in pairs],
                                   "output": outputs[k]})
                if outputs[k] is None:
                    failed_all.append({"name": self.names[c][r], "chain": c, "round": r,
                                       "error": errors.get(k, "")})
                context[c] = ((prompts[k] + [fmt.format_pairs(pairs)],
                               info[k]["prompt_tokens"]
                               + self.budget.count([fmt.format_pairs(pairs)], bos=False))
                              if pairs else None)  # a pairless text ends the chain
        return entries, failed_all

    def _complete(self, teacher: Teacher, prompts, todo, outputs, request, names, skip, r, info,
                  active):
        errors: dict[int, str] = {}
        outputs = list(outputs)
        try:
            got = teacher.complete([prompts[k] for k in todo], request)
            for k, text in zip(todo, got):
                outputs[k] = text
        except TeacherError as e:
            for j, text in e.completed.items():
                outputs[todo[j]] = text
            errors = {todo[j]: e.errors.get(j, e.last_error) for j in e.failed}
            where = ", ".join(names[k] for k in sorted(errors)[:10])
            if not skip or (not e.completed and len(todo) > 1):  # the teacher is down
                self._save(r, active, info, outputs, errors)  # keep what did succeed
                raise shards.AugmentError(
                    f"teacher failed on {len(errors)} of {len(todo)} prompts ({where}) in "
                    f"{self.dir}: {e.last_error}. Completed prompts are kept; a rerun retries "
                    "only the failed ones" + ("" if skip else " (or set synth.on_error=skip)")
                ) from e
            log.warning("%s round %d: skipping %d prompts the teacher failed on (%s): %s",
                        self.dir, r, len(errors), where, e.last_error)
        return outputs, errors

    def _load(self, r: int) -> dict[int, dict[str, Any]] | None:
        if not os.path.isfile(self._path(r)):
            return None
        with open(self._path(r), encoding="utf-8") as f:
            return {e["chain"]: e for e in json.load(f)["entries"]}

    def _save(self, r, active, info, outputs, errors) -> None:
        files.write_json(self._path(r), {"entries": [
            {"chain": c, "linked": info[k]["linked"], "output": outputs[k],
             "error": errors.get(k) if outputs[k] is None else None}
            for k, c in enumerate(active)]})

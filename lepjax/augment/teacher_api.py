"""What every teacher backend shares: prompts made of text and special-token parts, the request,
the error carrying partial results, and the `Teacher` protocol.

A prompt is either a string or a sequence of parts, each a string or a `Special` token (`BOS`,
`EOS`). The Instruction Pre-Training synthesizer was trained on examples chained as
`...</END></s><s> <CON> ...`: its EOS and BOS *tokens* between examples. A local teacher encodes
`Special` parts to the tokenizer's ids (the strings `</s>`/`<s>` would be split by SentencePiece
into ordinary pieces); an OpenAI-compatible server takes the tokenizer's special strings, which
its own tokenizer maps back to the ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, Union


@dataclasses.dataclass(frozen=True)
class Special:
    """A special token of the teacher's tokenizer inside a prompt ("bos" or "eos")."""

    name: str

    def __post_init__(self):
        if self.name not in ("bos", "eos"):
            raise ValueError(f"special prompt part {self.name!r}: expected 'bos' or 'eos'")


BOS, EOS = Special("bos"), Special("eos")
Part = Union[str, Special]
Prompt = Union[str, Sequence[Part]]


def parts(prompt: Prompt) -> list[Part]:
    """The parts of a prompt (a string is one text part)."""
    return [prompt] if isinstance(prompt, str) else list(prompt)


def render(prompt: Prompt, special_text: Mapping[str, str]) -> str:
    """The prompt as one string, special parts written as `special_text[name]`."""
    out = []
    for p in parts(prompt):
        if isinstance(p, Special):
            if not special_text.get(p.name):
                raise ValueError(f"the prompt holds a {p.name.upper()} token but no string is set "
                                 f"for it (teacher.special_text.{p.name}, or teacher.tokenizer to "
                                 "take it from the tokenizer)")
            out.append(special_text[p.name])
        else:
            out.append(p)
    return "".join(out)


def text_of(prompt: Prompt) -> str:
    """The text parts only, joined (for hashing and messages)."""
    return "".join(p if isinstance(p, str) else f"<{p.name}>" for p in parts(prompt))


@dataclasses.dataclass(frozen=True)
class Request:
    """What to generate for each prompt; temperature 0 = greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


class TeacherError(RuntimeError):
    """Some prompts got no completion (any backend). `completed`: index -> text of those that did;
    `failed`: indices without one (in order); `errors`: index -> message of each failure; `url`;
    `last_error`: the last failure's message."""

    def __init__(self, message: str, *, completed: dict[int, str], failed: list[int], url: str,
                 last_error: str, errors: dict[int, str] | None = None):
        super().__init__(message)
        self.completed, self.failed, self.url, self.last_error = completed, failed, url, last_error
        self.errors = errors or {i: last_error for i in failed}


OnResult = Callable[[int, str], None]


class Teacher(Protocol):
    """Completes prompts (strings or sequences of text and `Special` parts)."""

    def complete(self, prompts: Sequence[Prompt], request: Request = Request(),
                 progress: bool = False, on_result: OnResult | None = None) -> list[str]:
        """One completion per prompt, in order (stop strings and EOS cut off). `on_result(i, text)`
        is called as each completion arrives. Raises `TeacherError` (carrying the completions that
        did succeed) when some prompts fail."""
        ...

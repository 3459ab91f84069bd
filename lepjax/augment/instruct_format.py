"""Instruction Pre-Training text formats (Cheng et al. 2024): the synthesizer's prompt, parsing its
instruction-response pairs, and turning a chain of texts + pairs into natural pre-training text.

Synthesizer prompt: ` <CON> {text} </CON>\\n\\n`; its output: blocks `<QUE> {q} <ANS> {a} </END>`
separated by blank lines. Chained examples end with the synthesizer's EOS and the next starts with
its BOS (`...</END></s><s> <CON> ...`), as it was trained (see `chain_prompt`).

Templify follows what the synthesizer wrote, never inventing formats: a question carrying an
options block (`\\nOptions:\\n- ...`) is rendered as multiple choice with labelled options and the
label as the answer; an answer written as `Let's think step by step. ... \\nTherefore, the answer
is X` is rendered as its reasoning followed by "the answer is X"; every other pair is plain QA.
Templates come from lepjax.augment.instruct_templates, chosen by a random generator seeded per
document. A text without pairs is never part of a document and ends its chain.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from typing import Any

from lepjax.augment import instruct_templates as T
from lepjax.augment.teacher_api import BOS, EOS, Part

CON_PROMPT = " <CON> {text} </CON>\n\n"
SEPARATORS = ("eos_bos", "text")
OPTIONS_MARK = re.compile(r"\n\s*options\s*:\s*\n", re.IGNORECASE)
COT_START = re.compile(r"let'?s think step by step\.?", re.IGNORECASE)
COT_END = re.compile(r"\n\s*therefore,?\s+the answer is\s*:?", re.IGNORECASE)


def synth_prompt(text: str) -> str:
    """The synthesizer's prompt for one text."""
    return CON_PROMPT.format(text=text)


def format_pairs(pairs: Sequence[Sequence[str]]) -> str:
    """Pairs in the synthesizer's own output format (ends with `</END>`)."""
    return "\n\n".join(f"<QUE> {q} <ANS> {a} </END>" for q, a in pairs)


def chain_prompt(context: Sequence[Part] | None, text: str, separator: str = "eos_bos",
                 separator_text: str = "\n\n") -> list[Part]:
    """The prompt parts for `text` after `context` (the previous example: its prompt parts and
    pairs, or None). `separator`: eos_bos (the synthesizer's EOS and BOS tokens between examples)
    or text (`separator_text`)."""
    if separator not in SEPARATORS:
        raise ValueError(f"synth.separator={separator!r}: expected one of {SEPARATORS}")
    if not context:
        return [synth_prompt(text)]
    sep: list[Part] = [EOS, BOS] if separator == "eos_bos" else [separator_text]
    return [*context, *sep, synth_prompt(text)]


def parse_pairs(output: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a synthesizer output.

    Split on `</END>`; the piece after the last `</END>` is an incomplete (or empty) trailing
    block and is dropped. A block needs exactly one `<QUE>` followed by exactly one `<ANS>`, a
    non-empty question and a non-empty answer; a question already seen (case-insensitively) is
    dropped.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for block in output.split("</END>")[:-1]:
        if block.count("<QUE>") != 1 or block.count("<ANS>") != 1:
            continue
        before, answer = block.split("<ANS>")
        if "<QUE>" not in before:
            continue
        question = before.split("<QUE>", 1)[1].strip()
        answer = answer.strip()
        key = " ".join(question.casefold().split())
        if not question or not answer or key in seen:
            continue
        seen.add(key)
        pairs.append((question, answer))
    return pairs


@dataclasses.dataclass(frozen=True)
class Pair:
    """A pair as the synthesizer wrote it: the question (stem), its options block (if any), the
    reasoning (if written as chain of thought) and the (final) answer."""

    question: str
    answer: str
    options: tuple[str, ...] = ()
    reasoning: str = ""

    @property
    def kind(self) -> str:
        """qa | options | cot | options_cot."""
        return {(False, False): "qa", (True, False): "options", (False, True): "cot",
                (True, True): "options_cot"}[(bool(self.options), bool(self.reasoning))]


def _norm(s: str) -> str:
    return " ".join(s.casefold().strip().rstrip(".").split())


def classify(question: str, answer: str) -> Pair:
    """What the synthesizer wrote: an options block (two or more `- ` lines after `Options:` at
    the end of the question) and chain of thought (`Let's think step by step.` then
    `\\nTherefore, the answer is ...`); neither is ever guessed."""
    options: tuple[str, ...] = ()
    m = OPTIONS_MARK.search(question)
    if m:
        lines = question[m.end():].split("\n")
        opts = [ln.strip()[2:].strip() for ln in lines if ln.strip()]
        if len(opts) >= 2 and all(ln.strip().startswith("- ") for ln in lines if ln.strip()):
            question, options = question[:m.start()].strip(), tuple(opts)
    reasoning = ""
    start, end = COT_START.search(answer), COT_END.search(answer)
    if start and end and start.end() <= end.start():
        r, final = answer[start.end():end.start()].strip(), answer[end.end():].strip()
        if r and final:
            reasoning, answer = r, final.rstrip(".").strip() or final
    return Pair(question, answer, options, reasoning)


def _render_options(pair: Pair, labels, inline: bool) -> tuple[str, str]:
    """(the labelled options, the answer: its option's label, or the answer as written when it
    matches no option)."""
    if len(pair.options) > len(labels[1]):
        labels = T.LABELS[0]
    _, names, fmt, answer_fmt = labels
    lines = [fmt.format(l=names[k], o=o) for k, o in enumerate(pair.options)]
    hits = [k for k, o in enumerate(pair.options) if _norm(o) == _norm(pair.answer)]
    answer = answer_fmt.format(l=names[hits[0]]) if len(hits) == 1 else pair.answer
    return (" ".join(lines) if inline else "\n".join(lines)), answer


def render_text(text: str, raw_pairs: Sequence[Sequence[str]], rng: random.Random,
                used: set[str] | None = None) -> str:
    """One text and its pairs in templates chosen by `rng` (ids of the patterns used go to
    `used`)."""
    pairs = [classify(q, a) for q, a in raw_pairs]
    style = rng.choice(T.STYLES)
    labels = rng.choice(T.LABELS)
    rendered = []
    for n, pair in enumerate(pairs, 1):
        patterns = T.PAIRS[(pair.kind, style)]
        k = rng.randrange(len(patterns))
        options, answer = ("", pair.answer)
        if pair.options:
            options, answer = _render_options(pair, labels, style == "inline")
            _mark(used, f"labels.{labels[0]}")
        rendered.append(patterns[k].format(q=pair.question, a=answer, r=pair.reasoning,
                                           options=options, n=n))
        _mark(used, f"{pair.kind}.{style}.{k}")
    qa = T.JOINERS[style].join(rendered)
    ordering = rng.choice(sorted(T.ORDERINGS))
    k = rng.randrange(len(T.ORDERINGS[ordering]))
    _mark(used, f"{ordering}.{k}")
    questions = "\n".join(f"{n}. {p.question}" for n, p in enumerate(pairs, 1))
    return T.ORDERINGS[ordering][k].format(text=text, qa=qa, questions=questions)


def _mark(used: set[str] | None, pattern_id: str) -> None:
    if used is not None:
        used.add(pattern_id)


def split_documents(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A chain's entries cut into documents. A document continues only through entries the
    synthesizer saw after the previous one (`linked`); an entry without pairs is in no document
    and ends the one before it."""
    docs: list[list[dict[str, Any]]] = []
    open_doc = False
    for e in entries:
        if not e.get("pairs"):
            open_doc = False
            continue
        if open_doc and e.get("linked"):
            docs[-1].append(e)
        else:
            docs.append([e])
        open_doc = True
    return docs


def templify(chains: Sequence[dict[str, Any]], seed: int,
             used: set[str] | None = None) -> list[str]:
    """Pre-training documents of chains ({"index", "entries"}); the templates depend only on
    `seed`, the chain's index and the document's position in it."""
    docs = []
    for chain in chains:
        for d, entries in enumerate(split_documents(chain["entries"])):
            rng = random.Random(f"{seed}:{int(chain['index'])}:{d}")
            docs.append("\n\n".join(render_text(e["text"], e["pairs"], rng, used)
                                    for e in entries))
    return docs

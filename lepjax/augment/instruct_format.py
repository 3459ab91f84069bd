"""Instruction Pre-Training text formats (Cheng et al. 2024): the synthesizer's prompt, parsing its
instruction-response pairs, and turning a chain of texts + pairs into natural pre-training text.

Synthesizer prompt: ` <CON> {text} </CON>\\n\\n`; its output: blocks `<QUE> {q} <ANS> {a} </END>`
separated by blank lines.

Templify: each document picks a template family with a seeded random choice, then each text's
pairs a template of that family:
  plain      "Question: ...\\nAnswer: ..." and variants;
  options    multiple choice, the other answers of the same text as distractors (needs at least
             two pairs with short answers; otherwise the text's pairs are written as plain QA);
  reasoning  the answer introduced as reasoning ("Let's think step by step. ...").
A text with no pairs stays raw text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

CON_PROMPT = " <CON> {text} </CON>\n\n"
FAMILIES = ("plain", "options", "reasoning")

# (intro before a text's questions, one QA) per family; {q}, {a}, {options} placeholders.
_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "plain": [
        ("", "Question: {q}\nAnswer: {a}"),
        ("Answer the questions based on the text above.\n\n", "Q: {q}\nA: {a}"),
        ("Here are some questions about the text, with answers.\n\n", "{q}\n{a}"),
        ("Read the passage and answer.\n\n", "Question: {q}\nResponse: {a}"),
    ],
    "options": [
        ("", "Question: {q}\nOptions:\n{options}\nAnswer: {a}"),
        ("Choose the correct option for each question about the text.\n\n",
         "{q}\n{options}\nThe correct option is: {a}"),
        ("Test your understanding of the passage.\n\n",
         "Q: {q}\nPick one of:\n{options}\nA: {a}"),
    ],
    "reasoning": [
        ("", "Question: {q}\nLet's think step by step. {a}"),
        ("Answer the questions about the text, explaining the reasoning.\n\n",
         "{q}\nReasoning and answer: {a}"),
        ("Think about the passage to answer the following.\n\n",
         "Q: {q}\nA: Based on the text, {a}"),
    ],
}
MAX_OPTION_CHARS = 120


def synth_prompt(text: str) -> str:
    """The synthesizer's prompt for one text."""
    return CON_PROMPT.format(text=text)


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


def format_pairs(pairs: Sequence[Sequence[str]]) -> str:
    """Pairs in the synthesizer's own output format (the context of the next round)."""
    return "".join(f"<QUE> {q} <ANS> {a} </END>\n\n" for q, a in pairs)


def _qa_block(pairs: Sequence[Sequence[str]], family: str, rng: random.Random) -> str:
    answers = [a for _, a in pairs]
    if family == "options" and (len(pairs) < 2 or max(map(len, answers)) > MAX_OPTION_CHARS):
        family = "plain"
    intro, qa = rng.choice(_TEMPLATES[family])
    parts = []
    for q, a in pairs:
        options = ""
        if family == "options":
            choices = list(dict.fromkeys(answers))
            rng.shuffle(choices)
            options = "\n".join(f"- {c}" for c in choices)
        parts.append(qa.format(q=q, a=a, options=options))
    return intro + "\n\n".join(parts)


def templify_entries(entries: Sequence[dict[str, Any]], family: str, rng: random.Random) -> str:
    """One document: each text followed by its pairs in `family`'s templates (raw if none)."""
    texts = []
    for e in entries:
        pairs = e.get("pairs") or []
        texts.append(e["text"] if not pairs else e["text"] + "\n\n" + _qa_block(pairs, family, rng))
    return "\n\n".join(texts)


def split_documents(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A chain's entries cut into documents: a new one starts at each entry the synthesizer saw
    without the previous context (`linked` false)."""
    docs: list[list[dict[str, Any]]] = []
    for e in entries:
        if docs and e.get("linked"):
            docs[-1].append(e)
        else:
            docs.append([e])
    return docs


def templify(chains: Sequence[dict[str, Any]], seed: int,
             families: Sequence[str] = FAMILIES) -> list[str]:
    """Pre-training documents of chains ({"index", "entries"}); the template choice depends only
    on `seed` and each chain's index."""
    unknown = [f for f in families if f not in _TEMPLATES]
    if unknown or not families:
        raise ValueError(f"instruct_pt.families {list(families)}: expected some of {FAMILIES}")
    docs = []
    for chain in chains:
        rng = random.Random(seed * 1_000_003 + int(chain["index"]))
        for entries in split_documents(chain["entries"]):
            docs.append(templify_entries(entries, rng.choice(list(families)), rng))
    return docs

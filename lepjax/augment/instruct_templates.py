"""lepjax's own template inventory for Instruction Pre-Training documents (written for lepjax,
following the rules of Cheng et al. 2024, not their strings).

A pair is rendered by its *kind*, which only the synthesizer's output decides
(lepjax.augment.instruct_format.classify): `qa` (plain), `options` (the question carried an
options block), `cot` (the answer was written as step-by-step reasoning ending in "the answer
is"), `options_cot` (both). Each text's pairs share one *style*: `block` (labelled lines),
`numbered` (numbered questions), `dialogue` (turns) or `inline` (few-shot lines). A text and its
pairs are put together by an *ordering*: text first (openers that name the text) or questions
first (the questions listed before the text, answered after it).

Placeholders: {q} question (the stem, for options), {a} answer (for options, the option label),
{r} reasoning, {options} the labelled options, {n} the pair's number, {text} the raw text, {qa}
the rendered pairs, {questions} the numbered question list.
"""

from __future__ import annotations

KINDS = ("qa", "options", "cot", "options_cot")
STYLES = ("block", "numbered", "dialogue", "inline")

# (kind, style) -> patterns. CoT patterns put {r} before "the answer is"; qa and options patterns
# never mention reasoning; qa and cot patterns never mention options.
PAIRS: dict[tuple[str, str], tuple[str, ...]] = {
    ("qa", "block"): (
        "Question: {q}\nAnswer: {a}",
        "Q: {q}\nA: {a}",
        "{q}\n{a}",
        "Query: {q}\nReply: {a}",
        "Asked: {q}\nResponse: {a}",
    ),
    ("qa", "numbered"): (
        "Question {n}: {q}\nAnswer {n}: {a}",
        "{n}. {q}\n{a}",
        "Q{n}. {q}\nA{n}. {a}",
        "#{n} {q}\n=> {a}",
    ),
    ("qa", "dialogue"): (
        "User: {q}\nAssistant: {a}",
        "Student: {q}\nTeacher: {a}",
        "Person A: {q}\nPerson B: {a}",
        "Reader: {q}\nAuthor: {a}",
    ),
    ("qa", "inline"): (
        "Q: {q} A: {a}",
        "{q} -- {a}",
        "Question: {q} Answer: {a}",
        "{q} => {a}",
    ),
    ("options", "block"): (
        "Question: {q}\n{options}\nAnswer: {a}",
        "{q}\nChoose one:\n{options}\nCorrect choice: {a}",
        "Q: {q}\nOptions:\n{options}\nA: {a}",
        "{q}\nSelect the right option.\n{options}\nSelected: {a}",
    ),
    ("options", "numbered"): (
        "Question {n}: {q}\n{options}\nAnswer {n}: {a}",
        "{n}. {q}\n{options}\nChoice: {a}",
        "Q{n}. {q}\nPossible answers:\n{options}\nA{n}. {a}",
        "#{n} {q}\n{options}\n=> {a}",
    ),
    ("options", "dialogue"): (
        "User: {q}\nWhich of these is it?\n{options}\nAssistant: {a}",
        "Student: {q} The choices are:\n{options}\nTeacher: {a}",
        "Person A: {q}\n{options}\nPerson B: It is {a}.",
        "Reader: {q} Options:\n{options}\nAuthor: {a}",
    ),
    ("options", "inline"): (
        "Q: {q} Options: {options} A: {a}",
        "{q} ({options}) -- {a}",
        "Question: {q} Choices: {options} Answer: {a}",
        "{q} Pick from {options} => {a}",
    ),
    ("cot", "block"): (
        "Question: {q}\nLet's think step by step. {r}\nTherefore, the answer is {a}",
        "Q: {q}\nA: {r} So the answer is {a}",
        "{q}\nReasoning: {r}\nHence the answer is {a}",
        "Query: {q}\nWorking it out: {r}\nThus the answer is {a}",
    ),
    ("cot", "numbered"): (
        "Question {n}: {q}\nStep by step: {r}\nAnswer {n}: the answer is {a}",
        "{n}. {q}\n{r} Therefore, the answer is {a}",
        "Q{n}. {q}\nA{n}. Let's reason. {r} So the answer is {a}",
        "#{n} {q}\nThinking: {r}\n=> the answer is {a}",
    ),
    ("cot", "dialogue"): (
        "User: {q}\nAssistant: Let's think it through. {r} Therefore, the answer is {a}",
        "Student: {q}\nTeacher: {r} So the answer is {a}",
        "Person A: {q}\nPerson B: Step by step: {r} That means the answer is {a}",
        "Reader: {q}\nAuthor: My reasoning: {r} Hence the answer is {a}",
    ),
    ("cot", "inline"): (
        "Q: {q} A: {r} So the answer is {a}",
        "{q} -- {r} Therefore, the answer is {a}",
        "Question: {q} Reasoning: {r} Thus the answer is {a}",
        "{q} => {r} The answer is {a}",
    ),
    ("options_cot", "block"): (
        "Question: {q}\n{options}\nLet's think step by step. {r}\nTherefore, the answer is {a}",
        "Q: {q}\nOptions:\n{options}\nA: {r} So the answer is {a}",
        "{q}\nChoose one:\n{options}\nReasoning: {r}\nHence the answer is {a}",
        "{q}\nSelect the right option.\n{options}\nWorking it out: {r} Thus the answer is {a}",
    ),
    ("options_cot", "numbered"): (
        "Question {n}: {q}\n{options}\nStep by step: {r}\nAnswer {n}: the answer is {a}",
        "{n}. {q}\n{options}\n{r} Therefore, the answer is {a}",
        "Q{n}. {q}\nPossible answers:\n{options}\nA{n}. {r} So the answer is {a}",
        "#{n} {q}\n{options}\nThinking: {r}\n=> the answer is {a}",
    ),
    ("options_cot", "dialogue"): (
        "User: {q}\nWhich of these is it?\n{options}\nAssistant: {r} Therefore, the answer is {a}",
        "Student: {q} The choices are:\n{options}\nTeacher: {r} So the answer is {a}",
        "Person A: {q}\n{options}\nPerson B: Step by step: {r} That means the answer is {a}",
        "Reader: {q} Options:\n{options}\nAuthor: My reasoning: {r} Hence the answer is {a}",
    ),
    ("options_cot", "inline"): (
        "Q: {q} Options: {options} A: {r} So the answer is {a}",
        "{q} ({options}) -- {r} Therefore, the answer is {a}",
        "Question: {q} Choices: {options} Reasoning: {r} Thus the answer is {a}",
        "{q} Pick from {options} => {r} The answer is {a}",
    ),
}

# How the pairs of one text are joined, per style.
JOINERS = {"block": "\n\n", "numbered": "\n\n", "dialogue": "\n", "inline": "\n"}

# Option labels: (name, labels, how a label is written before its option, how it is the answer).
LABELS: tuple[tuple[str, str, str, str], ...] = (
    ("upper_dot", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "{l}. {o}", "{l}"),
    ("upper_paren", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "({l}) {o}", "({l})"),
    ("upper_half", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "{l}) {o}", "{l}"),
    ("lower_dot", "abcdefghijklmnopqrstuvwxyz", "{l}. {o}", "{l}"),
    ("bracket", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "[{l}] {o}", "[{l}]"),
    ("roman", ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii"),
     "{l}) {o}", "{l}"),
)

# Text first: openers that name the text, then the pairs.
TEXT_FIRST: tuple[str, ...] = (
    "{text}\n\n{qa}",
    "Read the article below and answer the questions that follow.\n\n{text}\n\n{qa}",
    "Passage:\n{text}\n\nQuestions about the passage:\n\n{qa}",
    "Here is a document.\n\n{text}\n\nRespond to these prompts using the document.\n\n{qa}",
    "Excerpt: {text}\n\nBased on the excerpt:\n\n{qa}",
    "{text}\n\nWhat can we learn from the text above?\n\n{qa}",
    "Article:\n{text}\n\n{qa}",
    "Consider this text.\n{text}\n\nNow the questions.\n\n{qa}",
)

# Questions first: the questions are listed before the text, answered after it.
QUESTIONS_FIRST: tuple[str, ...] = (
    "Questions:\n{questions}\n\nRead the text below to find the answers.\n\n{text}\n\n{qa}",
    "Keep these questions in mind while reading:\n{questions}\n\nText:\n{text}\n\nAnswers:\n\n"
    "{qa}",
    "{questions}\n\nThe passage that answers them:\n{text}\n\n{qa}",
    "Answer from the article that follows:\n{questions}\n\nArticle: {text}\n\n{qa}",
)
ORDERINGS = {"text_first": TEXT_FIRST, "questions_first": QUESTIONS_FIRST}


def inventory() -> dict[str, str]:
    """Every pattern by id: pair patterns `kind.style.k`, orderings `ordering.k`, option labels
    `labels.name`."""
    out = {f"{kind}.{style}.{k}": p for (kind, style), ps in PAIRS.items()
           for k, p in enumerate(ps)}
    out.update({f"{name}.{k}": p for name, ps in ORDERINGS.items() for k, p in enumerate(ps)})
    out.update({f"labels.{name}": fmt for name, _, fmt, _ in LABELS})
    return out

"""Prompt tasks: task config files, JSONL examples (errors name file and line), few-shot prompts.

A task config is a Python file whose `get_config()` returns a ConfigDict with the keys of
`TASK_KEYS` (see configs/eval/xnli.py for a documented one). A task is read for one language: its
template for that language formats each JSONL example's fields into a prompt; the answer is
appended after the template's delimiter (" " by default, "" for languages without spaces).

Few-shot examples come from a separate file when given, else from the evaluated file itself
(never the example being asked). Which ones is fixed by the seed and the example's index alone,
so the prompts do not depend on batch size, order of evaluation or `max_examples`.
"""

from __future__ import annotations

import dataclasses
import os
import random
import string
from typing import Any

from lepjax.data import sources

KINDS = ("multiple_choice", "generation")
METRICS = {"multiple_choice": ("acc", "acc_norm"),
           "generation": ("exact_match", "f1", "rouge_l", "chrf")}
TASK_KEYS = ("name", "kind", "answer_field", "labels", "choices_field", "templates", "fewshot",
             "fewshot_seed", "fewshot_separator", "target_delimiter", "metrics", "max_new_tokens",
             "stop", "truncate_field", "max_field_chars")
TEMPLATE_KEYS = ("prompt", "choices", "delimiter")


class TaskError(ValueError):
    """A task config or task file that cannot be used (the message names file and line or key)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task config, resolved for one language."""

    path: str
    name: str
    kind: str
    lang: str
    prompt: str
    choices: tuple[str, ...]
    delimiter: str
    answer_field: str
    labels: tuple[str, ...] = ()
    choices_field: str = ""
    fewshot: int = 0
    fewshot_seed: int = 1234
    fewshot_separator: str = "\n\n"
    metrics: tuple[str, ...] = ()
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ("\n",)
    truncate_field: str = ""
    max_field_chars: int = 0

    @property
    def fields(self) -> list[str]:
        """JSONL fields every example must have."""
        names = [f for _, f, _, _ in string.Formatter().parse(self.prompt) if f]
        extra = [self.answer_field] + ([self.choices_field] if self.choices_field else [])
        return list(dict.fromkeys(names + extra))


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: its fields, where it came from, and its answer (gold texts or choice index)."""

    fields: dict[str, Any]
    source: str
    line: int
    golds: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    label: int = -1


def load_task(path: str, lang: str, **overrides: Any) -> Task:
    """Read a task config file and resolve it for language `lang` (keys may be overridden)."""
    from lepjax import config as config_lib

    cfg = config_lib.load_file(path).to_dict()
    unknown = sorted(set(cfg) - set(TASK_KEYS))
    if unknown:
        raise TaskError(f"{path}: unknown task config key(s) {unknown}; valid: {list(TASK_KEYS)}")
    for key in ("name", "kind", "answer_field", "templates"):
        if not cfg.get(key):
            raise TaskError(f"{path}: task config key {key!r} is missing or empty")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    kind = cfg["kind"]
    if kind not in KINDS:
        raise TaskError(f"{path}: kind {kind!r}; expected one of {KINDS}")
    if lang not in cfg["templates"]:
        raise TaskError(f"{path}: no template for language {lang!r} (templates: "
                        f"{', '.join(sorted(cfg['templates']))})")
    tpl = dict(cfg["templates"][lang])
    bad = sorted(set(tpl) - set(TEMPLATE_KEYS))
    if bad or "prompt" not in tpl:
        raise TaskError(f"{path}: templates.{lang} needs 'prompt' and may hold {TEMPLATE_KEYS}; "
                        f"got {sorted(tpl)}")
    try:
        list(string.Formatter().parse(tpl["prompt"]))
    except ValueError as e:
        raise TaskError(f"{path}: templates.{lang}.prompt is not a valid format string "
                        f"({e})") from None
    metrics = tuple(cfg.get("metrics") or METRICS[kind])
    wrong = [m for m in metrics if m not in METRICS[kind]]
    if wrong:
        raise TaskError(f"{path}: metrics {wrong} do not apply to {kind} (use {METRICS[kind]})")
    choices = tuple(tpl.get("choices") or ())
    if kind == "multiple_choice" and not choices and not cfg.get("choices_field"):
        raise TaskError(f"{path}: a multiple-choice task needs templates.{lang}.choices or "
                        "choices_field")
    delimiter = tpl.get("delimiter", cfg.get("target_delimiter", " "))
    keys = {f.name for f in dataclasses.fields(Task)}
    extra = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
             for k, v in cfg.items() if k in keys and k not in ("templates", "metrics")}
    return Task(**{**extra, "path": path, "lang": lang, "prompt": tpl["prompt"],
                   "choices": choices, "delimiter": delimiter, "metrics": metrics})


def _answer(task: Task, row: dict, where: str) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    value = row[task.answer_field]
    if task.kind == "generation":
        if isinstance(value, dict) and "text" in value:  # SQuAD: {"text": [...], ...}
            value = value["text"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a numeric answer is compared as text
        golds = [value] if isinstance(value, str) else value
        if not isinstance(golds, list) or not golds or not all(isinstance(g, str) for g in golds):
            raise TaskError(f"{where}: field {task.answer_field!r} must be a string or a non-empty "
                            f"list of strings, got {value!r}")
        return tuple(golds), (), -1
    choices = task.choices
    if task.choices_field:
        choices = row[task.choices_field]
        if not isinstance(choices, list) or len(choices) < 2 or not all(
                isinstance(c, str) and c for c in choices):
            raise TaskError(f"{where}: field {task.choices_field!r} must be a list of at least "
                            f"two non-empty strings, got {choices!r}")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TaskError(f"{where}: field {task.answer_field!r} must be a choice index or label, "
                        f"got {value!r}")
    if isinstance(value, str):
        names = task.labels or tuple(choices)
        if value not in names:
            raise TaskError(f"{where}: answer {value!r} is not one of {list(names)}")
        value = list(names).index(value)
    if not 0 <= value < len(choices):
        raise TaskError(f"{where}: answer index {value} outside the {len(choices)} choices")
    return (), tuple(choices), value


def read_examples(task: Task, path: str, max_examples: int = 0) -> list[Example]:
    """Examples of a JSONL file; a bad line is an error naming the file, the line and the field."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"task {task.name}: data file {path!r} does not exist")
    out: list[Example] = []
    for n, row in sources.jsonl_objects(path, TaskError):
        where = f"{path}:{n}"
        missing = [k for k in task.fields if k not in row]
        if missing:
            raise TaskError(f"{where}: missing field {missing[0]!r} (task {task.name} needs "
                            f"{', '.join(task.fields)})")
        golds, choices, label = _answer(task, row, where)
        out.append(Example(row, path, n, golds, choices, label))
        if max_examples and len(out) >= max_examples:
            break
    if not out:
        raise TaskError(f"{path}: no examples (the file holds no non-blank line)")
    return out


def format_prompt(task: Task, ex: Example) -> str:
    """The task's prompt for one example (the truncated field cut to `max_field_chars`)."""
    fields = dict(ex.fields)
    if task.truncate_field and task.max_field_chars and task.truncate_field in fields:
        fields[task.truncate_field] = str(fields[task.truncate_field])[:task.max_field_chars]
    try:
        return task.prompt.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise TaskError(f"{ex.source}:{ex.line}: template of {task.name} ({task.lang}) cannot be "
                        f"filled: {e!r}") from None


def answer_text(ex: Example) -> str:
    """The gold answer as a solved few-shot example shows it."""
    return ex.choices[ex.label] if ex.choices else ex.golds[0]


def build_context(task: Task, ex: Example, index: int, pool: list[Example],
                  pool_is_eval: bool) -> str:
    """Few-shot examples (each prompt, delimiter, answer) then the example's prompt."""
    shots = []
    if task.fewshot > 0:
        candidates = [i for i in range(len(pool)) if not (pool_is_eval and i == index)]
        if len(candidates) < task.fewshot:
            raise TaskError(f"task {task.name}: {task.fewshot} few-shot examples asked, "
                            f"{len(candidates)} available")
        rng = random.Random(f"{task.fewshot_seed}:{index}")
        for i in rng.sample(candidates, task.fewshot):
            shots.append(format_prompt(task, pool[i]) + task.delimiter + answer_text(pool[i]))
    return task.fewshot_separator.join(shots + [format_prompt(task, ex)])

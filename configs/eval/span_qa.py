"""Extractive (span) question answering: greedy generation scored by exact match and token F1.

Templates follow the setting of Yamaguchi, Villavicencio & Aletras (2024) (span QA in the target
language) in English, Russian and the paper's languages; the wording is lepjax's own. Data: JSONL
rows with `context`, `question` and `answers` (a string, a list of acceptable strings, or
SQuAD's {"text": [...], "answer_start": [...]}). Three solved examples precede each question by
default (drawn with `fewshot_seed` from the same file, never the question itself, or from
`tasks.<name>.fewshot_data`); this default is lepjax's choice, set fewshot as your comparison
needs.

    lepjax eval --config=configs/eval/example.py --config.tasks.span_qa.data=/data/sberquad.jsonl

Keys: as in configs/eval/xnli.py (documented there); here kind=generation, answer_field=answers.
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(dict(
        name="span_qa",
        kind="generation",
        answer_field="answers",
        labels=(),
        choices_field="",
        target_delimiter=" ",
        fewshot=3,
        fewshot_seed=1234,
        fewshot_separator="\n\n",
        metrics=("exact_match", "f1"),
        max_new_tokens=32,
        stop=("\n",),
        truncate_field="context",
        max_field_chars=3000,
        templates=dict(
            en=dict(prompt="Context: {context}\nQuestion: {question}\nAnswer:"),
            ru=dict(prompt="Контекст: {context}\nВопрос: {question}\nОтвет:"),
            ar=dict(prompt="السياق: {context}\nالسؤال: {question}\nالإجابة:"),
            de=dict(prompt="Kontext: {context}\nFrage: {question}\nAntwort:"),
            el=dict(prompt="Κείμενο: {context}\nΕρώτηση: {question}\nΑπάντηση:"),
            hi=dict(prompt="संदर्भ: {context}\nप्रश्न: {question}\nउत्तर:"),
            ja=dict(prompt="文脈：{context}\n質問：{question}\n答え：", delimiter=""),
            sw=dict(prompt="Muktadha: {context}\nSwali: {question}\nJibu:"),
            th=dict(prompt="บริบท: {context}\nคำถาม: {question}\nคำตอบ:"),
        ),
    ))

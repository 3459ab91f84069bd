"""XNLI-style natural language inference: multiple choice over entailment / neutral / contradiction.

Templates follow the setting of Yamaguchi, Villavicencio & Aletras (2024) (NLI scored as multiple
choice by log-likelihood) in English, Russian and the paper's languages (Arabic, German, Greek,
Hindi, Japanese, Swahili, Thai); the wording is lepjax's own. Data: JSONL rows with `premise`,
`hypothesis` and `label` (0/1/2 or "entailment"/"neutral"/"contradiction", as XNLI has them).

    lepjax eval --config=configs/eval/example.py --config.tasks.xnli.data=/data/xnli_ru_test.jsonl

Keys (every task config has them; see lepjax/eval/tasks.py):
  name: task name in the report.
  kind: multiple_choice (scored by log-likelihood) | generation (greedy decoding).
  answer_field: JSONL field with the gold answer: for multiple choice a choice index or one of
    `labels`; for generation a string, a list of strings, or SQuAD's {"text": [...]}.
  labels: names of the choices in order, for string answers.
  choices_field: field holding each example's own choices (empty = templates.<lang>.choices).
  templates.<lang>.prompt: str.format template over the example's fields.
  templates.<lang>.choices: the verbalised choices in label order (multiple choice).
  templates.<lang>.delimiter: text between prompt and answer (default: target_delimiter).
  target_delimiter: " " (languages without spaces override it with "").
  fewshot, fewshot_seed, fewshot_separator: solved examples before each prompt, the seed that
    picks them, and the text between examples.
  metrics: acc, acc_norm (multiple choice) | exact_match, f1, rouge_l, chrf (generation).
  max_new_tokens, stop: generation limit and stop strings (generation only).
  truncate_field, max_field_chars: cut one long field (e.g. an article) to this many characters.
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(dict(
        name="xnli",
        kind="multiple_choice",
        answer_field="label",
        labels=("entailment", "neutral", "contradiction"),
        choices_field="",
        target_delimiter=" ",
        fewshot=0,
        fewshot_seed=1234,
        fewshot_separator="\n\n",
        metrics=("acc", "acc_norm"),
        max_new_tokens=1,
        stop=(),
        truncate_field="",
        max_field_chars=0,
        templates=dict(
            en=dict(prompt='{premise}\nQuestion: Does this mean that "{hypothesis}"? '
                           "Yes, maybe or no?\nAnswer:",
                    choices=("Yes", "Maybe", "No")),
            ru=dict(prompt="{premise}\nВопрос: Следует ли из этого, что «{hypothesis}»? "
                           "Да, возможно или нет?\nОтвет:",
                    choices=("Да", "Возможно", "Нет")),
            ar=dict(prompt='{premise}\nسؤال: هل يعني هذا أن "{hypothesis}"؟ '
                           "نعم أم ربما أم لا؟\nالإجابة:",
                    choices=("نعم", "ربما", "لا")),
            de=dict(prompt="{premise}\nFrage: Folgt daraus, dass „{hypothesis}“? "
                           "Ja, vielleicht oder nein?\nAntwort:",
                    choices=("Ja", "Vielleicht", "Nein")),
            el=dict(prompt="{premise}\nΕρώτηση: Σημαίνει αυτό ότι «{hypothesis}»; "
                           "Ναι, ίσως ή όχι;\nΑπάντηση:",
                    choices=("Ναι", "Ίσως", "Όχι")),
            hi=dict(prompt='{premise}\nप्रश्न: क्या इसका अर्थ है कि "{hypothesis}"? '
                           "हाँ, शायद या नहीं?\nउत्तर:",
                    choices=("हाँ", "शायद", "नहीं")),
            ja=dict(prompt="{premise}\n質問：これは「{hypothesis}」ということですか？"
                           "はい、どちらとも言えない、いいえのどれですか？\n答え：",
                    choices=("はい", "どちらとも言えない", "いいえ"), delimiter=""),
            sw=dict(prompt='{premise}\nSwali: Je, hii inamaanisha kwamba "{hypothesis}"? '
                           "Ndiyo, labda au hapana?\nJibu:",
                    choices=("Ndiyo", "Labda", "Hapana")),
            th=dict(prompt='{premise}\nคำถาม: ข้อความนี้หมายความว่า "{hypothesis}" ใช่หรือไม่ '
                           "ใช่ อาจจะ หรือ ไม่ใช่\nคำตอบ:",
                    choices=("ใช่", "อาจจะ", "ไม่ใช่")),
        ),
    ))

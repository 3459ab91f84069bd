"""XL-Sum-style abstractive summarisation: greedy generation scored by ROUGE-L (and chrF).

Templates follow the setting of Yamaguchi, Villavicencio & Aletras (2024) (one-sentence news
summaries) in English, Russian and the paper's languages; the wording is lepjax's own. Data:
JSONL rows with `text` (the article) and `summary` (XL-Sum's field names). Articles are cut to
`max_field_chars` characters; prompts still too long lose tokens on the left.

    lepjax eval --config=configs/eval/example.py --config.tasks.xlsum.data=/data/xlsum_ru_test.jsonl

Keys: as in configs/eval/xnli.py (documented there); here kind=generation, answer_field=summary.
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(dict(
        name="xlsum",
        kind="generation",
        answer_field="summary",
        labels=(),
        choices_field="",
        target_delimiter=" ",
        fewshot=0,
        fewshot_seed=1234,
        fewshot_separator="\n\n",
        metrics=("rouge_l", "chrf"),
        max_new_tokens=64,
        stop=("\n",),
        truncate_field="text",
        max_field_chars=4000,
        templates=dict(
            en=dict(prompt="Article: {text}\n\nSummarise the article above in one sentence.\n"
                           "Summary:"),
            ru=dict(prompt="Статья: {text}\n\nКратко изложите статью в одном предложении.\n"
                           "Краткое содержание:"),
            ar=dict(prompt="المقال: {text}\n\nلخّص المقال أعلاه في جملة واحدة.\nالملخص:"),
            de=dict(prompt="Artikel: {text}\n\nFasse den Artikel oben in einem Satz zusammen.\n"
                           "Zusammenfassung:"),
            el=dict(prompt="Άρθρο: {text}\n\nΣυνόψισε το παραπάνω άρθρο σε μία πρόταση.\n"
                           "Περίληψη:"),
            hi=dict(prompt="लेख: {text}\n\nऊपर दिए गए लेख का सारांश एक वाक्य में लिखिए।\nसारांश:"),
            ja=dict(prompt="記事：{text}\n\n上の記事を一文で要約してください。\n要約：",
                    delimiter=""),
            sw=dict(prompt="Makala: {text}\n\nFupisha makala hii kwa sentensi moja.\nMuhtasari:"),
            th=dict(prompt="บทความ: {text}\n\nสรุปบทความข้างต้นในหนึ่งประโยค\nสรุป:"),
        ),
    ))

"""Translation from English into the target language (FLORES-style): generation scored by chrF.

Not one of the vocabulary-expansion paper's tasks; shipped for the chrF metric. Data: JSONL rows
with `source` (English) and `target` (the reference translation). The template of language L
translates English into L (so there is no `en` template).

    lepjax eval --config=configs/eval/example.py \
        --config.tasks.translation.data=/data/flores_ru.jsonl

Keys: as in configs/eval/xnli.py (documented there); here kind=generation, answer_field=target.
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(dict(
        name="translation",
        kind="generation",
        answer_field="target",
        labels=(),
        choices_field="",
        target_delimiter=" ",
        fewshot=0,
        fewshot_seed=1234,
        fewshot_separator="\n\n",
        metrics=("chrf",),
        max_new_tokens=128,
        stop=("\n",),
        truncate_field="",
        max_field_chars=0,
        templates=dict(
            ru=dict(prompt="Переведите с английского на русский.\nEnglish: {source}\nРусский:"),
            ar=dict(prompt="ترجم من الإنجليزية إلى العربية.\nEnglish: {source}\nالعربية:"),
            de=dict(prompt="Übersetze aus dem Englischen ins Deutsche.\nEnglish: {source}\n"
                           "Deutsch:"),
            el=dict(prompt="Μετάφρασε από τα αγγλικά στα ελληνικά.\nEnglish: {source}\nΕλληνικά:"),
            hi=dict(prompt="अंग्रेज़ी से हिंदी में अनुवाद कीजिए।\nEnglish: {source}\nहिंदी:"),
            ja=dict(prompt="英語から日本語に翻訳してください。\nEnglish: {source}\n日本語：",
                    delimiter=""),
            sw=dict(prompt="Tafsiri kutoka Kiingereza kwenda Kiswahili.\nEnglish: {source}\n"
                           "Kiswahili:"),
            th=dict(prompt="แปลจากภาษาอังกฤษเป็นภาษาไทย\nEnglish: {source}\nภาษาไทย:"),
        ),
    ))

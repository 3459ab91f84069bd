"""A full evaluation: source vs adapted checkpoint on held-out text, tokenizer efficiency, the
vocabulary-expansion paper's tasks (NLI, summarisation, span QA) in Russian, and the decoding
speedup. Paths are given as overrides; a task whose data is empty is skipped.

    lepjax eval --config=configs/eval/example.py \
        --config.checkpoints=source=/models/Mistral-7B-v0.1,adapted=runs/adapt/ru/export \
        --config.output_dir=runs/eval/ru \
        --config.heldout=/data/ru/heldout.txt,/data/ru/heldout_shards \
        --config.efficiency.files=/data/flores/rus_Cyrl.devtest \
        --config.efficiency.english=/data/flores/eng_Latn.devtest \
        --config.tasks.xnli.data=/data/xnli/ru_test.jsonl \
        --config.tasks.xlsum.data=/data/xlsum/russian_test.jsonl \
        --config.tasks.span_qa.data=/data/sberquad/dev.jsonl \
        --config.speed.prompts=/data/ru/prompts.txt

Another language: set --config.tasks.<name>.lang=de (any language the task config has).
Keys: see lepjax/eval/evaluate.py default_config (checkpoints, output_dir, dtype, batch_size,
length_bucket, padding, max_len, max_examples, heldout, efficiency.*, tasks.<name>.{config, data,
lang, fewshot, fewshot_data, max_new_tokens}, speed.*, mesh.*).
"""

import os

from lepjax.eval.evaluate import default_config, task_entry

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    cfg = default_config()
    cfg.dtype = "bfloat16"
    cfg.batch_size = 16
    cfg.max_examples = 0
    for name in ("xnli", "xlsum", "span_qa", "translation"):
        entry = task_entry()
        entry.config = os.path.join(HERE, f"{name}.py")
        entry.lang = "ru"
        cfg.tasks[name] = entry
    cfg.speed.max_new_tokens = 128
    cfg.speed.stop = ()
    return cfg

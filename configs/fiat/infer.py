"""FIAT inference: the teacher writes a rationale r for each input x, then the LoRA-tuned student
answers I_τ + x + r; predictions go to a JSONL file (exact match, accuracy and token F1
reported when targets exist). The rationales are engine tasks (`engine.*`), one per shard of
`fiat.records_per_shard` inputs; rationales and predictions are appended to
OUTPUT.rationales/shard-NNNNN.jsonl and OUTPUT.predictions.jsonl as they arrive, so a killed run
keeps them and a rerun sends only the rest.

    lepjax augment fiat-infer --config=configs/fiat/infer.py \
        --config.teacher.path=TEACHER_DIR --config.fiat.inputs=test.jsonl \
        --config.fiat.infer.student=runs/fiat/student --config.fiat.tokenizer=STUDENT_DIR \
        --config.fiat.infer.output=runs/fiat/predictions.jsonl

Keys: those of configs/fiat/augment.py (the same I_β, I_τ and template as the training data:
keep them identical), plus
  fiat.infer.student: a `lepjax train` run directory (LoRA merged on load) or a model directory.
  fiat.infer.tokenizer: the student's tokenizer ("" = fiat.tokenizer, else the student dir).
  fiat.infer.output: the predictions JSONL.
  fiat.infer.max_new_tokens, stop: the answer's length limit and stop strings (greedy).
  fiat.infer.dtype, batch_size, length_bucket: how the student is decoded.
  fiat.infer.lang: the language of the answer normalisation (accuracy, token F1).
"""

import os

from lepjax.config import load_file


def get_config():
    cfg = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "augment.py"))
    cfg.fiat.infer.max_new_tokens = 16
    cfg.fiat.infer.stop = ("\n",)
    cfg.fiat.infer.batch_size = 32
    return cfg

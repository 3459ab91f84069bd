"""FIAT augmentation: the teacher (θ_β) writes a chain-of-thought rationale for every (x, y) example;
text/ and tokenised prompt/target shards (tokens/) for LoRA-tuning the student come out.

    lepjax augment fiat --config=configs/fiat/augment.py \
        --config.teacher.path=TEACHER_DIR --config.fiat.tokenizer=STUDENT_DIR \
        --config.fiat.inputs=train.jsonl --config.fiat.output_dir=runs/fiat/train

Then tune the student on runs/fiat/train/tokens with configs/fiat/lora_tune.py.

Keys (all overridable with --config.section.key=value):
  teacher.*: the frozen teacher (backend local | openai, path / url, batch_size, ...); see
    lepjax.augment.teacher.teacher_section.
  fiat.inputs, input_field, target_field: the (x, y) JSONL records and their keys.
  fiat.reasoning_prompt: I_β, the reasoning instruction + few-shot CoT exemplars with {input}
    (default: configs/fiat/reasoning_prompt.txt, an attributed-QA example; write your task's own).
  fiat.task_instruction: I_τ, the student's task instruction.
  fiat.task_template, target_prefix: the student's input (I_τ + x + r) and what precedes y.
  fiat.max_new_tokens, stop: rationale length limit and stop strings (greedy decoding).
  fiat.tokenizer, add_bos, add_eos: the student's tokenizer and special tokens of tokens/.
  fiat.output_dir, records_per_shard: where text/ and tokens/ go; shard size (resume unit).
  fiat.seq_len, on_long: the student's row length (= lora_tune's data.seq_len) and what a record
    that does not fit gets: truncate (x cut, never I_τ, r or y) | error.
  fiat.on_error: fail | skip records the teacher fails on.
  mesh.*: devices a local teacher is placed on; progress: progress bars.
See lepjax/augment/fiat.py (fiat_section) for every key.
"""

import os

from lepjax.augment.config import default_config


def get_config():
    cfg = default_config()
    cfg.teacher.backend = "local"
    cfg.teacher.batch_size = 32
    cfg.fiat.reasoning_prompt = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "reasoning_prompt.txt")
    cfg.fiat.task_instruction = ("Decide whether the passage answers the question. Answer "
                                 "\"yes\" or \"no\".")
    cfg.fiat.max_new_tokens = 256
    cfg.fiat.stop = ("\n\nInput:",)
    cfg.fiat.records_per_shard = 1000
    cfg.fiat.seq_len = 2048  # keep equal to configs/fiat/lora_tune.py data.seq_len
    cfg.fiat.on_long = "truncate"
    return cfg

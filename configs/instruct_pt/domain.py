"""Instruction Pre-Training for domain continued pre-training (Cheng et al. 2024): every domain
text is augmented by the instruction synthesizer with M=3 rounds (greedy, 400 new tokens, context
4096), templified, and mixed 1:1 by tokens with general instruction data.

    lepjax augment instruct-pt --config=configs/instruct_pt/domain.py \
        --config.teacher.path=SYNTHESIZER_DIR --config.instruct_pt.inputs=domain/*.txt \
        --config.instruct_pt.general_inputs=general_instructions.jsonl \
        --config.instruct_pt.tokenizer=STUDENT_DIR --config.instruct_pt.output_dir=runs/ipt

Then train on runs/ipt/tokens (document records) with `lepjax train`.

Keys (see lepjax/augment/instruct_pt.py instruct_pt_section for all):
  teacher.*: the instruction synthesizer (local checkpoint or an OpenAI-compatible server).
  instruct_pt.inputs, format, text_mode, text_field: the raw domain text.
  instruct_pt.general_inputs, question_field, response_field: general instruction JSONL,
    formatted as "{question} {response}".
  instruct_pt.rounds (M), max_new_tokens, context_tokens: synthesis settings of the paper.
  instruct_pt.synthesizer_tokenizer: counts the context budget ("" = teacher.path).
  instruct_pt.families, seed: template families and the seed of their random choice.
  instruct_pt.mixture.augmented / raw / general: token ratio of the output (1:0:1 here).
  instruct_pt.tokenizer, add_bos, add_eos: the student's tokenizer for tokens/.
  instruct_pt.output_dir, chains_per_shard, records_per_shard: outputs and shard sizes.
"""

from lepjax.augment.cli import default_config


def get_config():
    cfg = default_config()
    cfg.teacher.backend = "local"
    cfg.teacher.batch_size = 32
    ic = cfg.instruct_pt
    ic.rounds = 3
    ic.max_new_tokens = 400
    ic.context_tokens = 4096
    ic.families = ("plain", "options", "reasoning")
    ic.mixture.augmented = 1.0
    ic.mixture.raw = 0.0
    ic.mixture.general = 1.0
    ic.text_mode = "paragraph"
    ic.chains_per_shard = 256
    ic.records_per_shard = 10000
    return cfg

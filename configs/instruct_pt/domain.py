"""Instruction Pre-Training for domain continued pre-training (Cheng et al. 2024): every domain
text is augmented by the instruction synthesizer with M=3 rounds (greedy, 400 new tokens, context
4096, chained examples joined by the synthesizer's EOS + BOS tokens), templified, and written
beside the general instruction data as separate token datasets, to be mixed 1:1 by tokens.

    lepjax augment instruct-pt --config=configs/instruct_pt/domain.py \
        --config.teacher.path=SYNTHESIZER_DIR --config.synth.inputs=domain/*.txt \
        --config.synth.general_inputs=general_instructions.jsonl \
        --config.synth.tokenizer=STUDENT_DIR --config.synth.output_dir=runs/ipt

Then train with the summary's `data` block (also in runs/ipt/mixture.json):
`lepjax train --config.data.paths=runs/ipt/augmented/tokens,runs/ipt/general/tokens
--config.data.weights=1,1` (the loader repeats the smaller dataset; nothing is dropped).

Keys (see lepjax/augment/instruct_pt.py synth_section for all):
  teacher.*: the instruction synthesizer (local checkpoint or an OpenAI-compatible server).
  synth.inputs, format, text_mode, text_field: the raw domain text.
  synth.augment_fraction: share of the texts augmented (1.0: all; the rest form raw/).
  synth.general_inputs, question_field, response_field: general instruction JSONL,
    formatted as "{question} {response}".
  synth.rounds (M), max_new_tokens, context_tokens: synthesis settings of the paper.
  synth.separator (eos_bos | text), separator_text: between chained examples.
  synth.synthesizer_tokenizer: counts the context budget ("" = teacher.path).
  synth.on_error: fail | skip prompts the teacher fails on (recorded; a rerun retries them).
  synth.seed: text selection and template choice.
  synth.weights.augmented / raw / general: token weights of the suggested mix (1:0:1 here).
  synth.tokenizer, add_bos, add_eos: the student's tokenizer for the token datasets.
  synth.output_dir, chains_per_shard, records_per_shard: outputs and shard sizes.
"""

from lepjax.augment.config import default_config


def get_config():
    cfg = default_config()
    cfg.teacher.backend = "local"
    cfg.teacher.batch_size = 32
    sc = cfg.synth
    sc.augment_fraction = 1.0
    sc.rounds = 3
    sc.max_new_tokens = 400
    sc.context_tokens = 4096
    sc.separator = "eos_bos"
    sc.weights.augmented = 1.0
    sc.weights.raw = 0.0
    sc.weights.general = 1.0
    sc.text_mode = "paragraph"
    sc.chains_per_shard = 256
    sc.records_per_shard = 10000
    return cfg

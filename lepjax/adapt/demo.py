"""The demo model family of `lepjax adapt` (configs/demo.py): built on the spot, on CPU.

A SentencePiece tokenizer trained on English text, a tiny base model pre-trained briefly on it,
and an instruct sibling (chat tokens and a chat template added) tuned briefly from it on English
prompt/response pairs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from ml_collections import ConfigDict

from lepjax.adapt.runs import prepare_data, read_lines, run_training, train_config
from lepjax.parallel import ProcessGroup
from lepjax.train.run import export_run

CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                 "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def demo_section() -> ConfigDict:
    """The `demo` section of `lepjax adapt`.

    Keys:
      enabled: build the family (then `base` and `instruct` are set by this stage).
      english_text: English text files (tokenizer, pre-training, instruct pairs).
      vocab_size: SentencePiece vocabulary size (embedding rows are padded to 128).
      preset: architecture of the tiny models (`lepjax.models.PRESETS`).
      base_steps, base_lr: pre-training of the base.
      instruct_steps, instruct_lr: tuning of the instruct sibling.
      warmup_steps: warm-up of both trainings (they use adapt's model, mesh, data, optim and
        train sections otherwise, with trainable=all and no LoRA).
      seq_len, batch_size: rows of both trainings.
    """
    return ConfigDict(dict(enabled=False, english_text=(), vocab_size=2000, preset="tiny_llama2",
                           base_steps=150, base_lr=3e-3, instruct_steps=40, instruct_lr=1e-3,
                           warmup_steps=10, seq_len=128, batch_size=8))


def _training(cfg: ConfigDict, steps: int, lr: float) -> dict[str, Any]:
    d = cfg.demo
    return {"train.steps": steps, "optim.lr": lr, "optim.warmup_steps": min(d.warmup_steps, steps),
            "train.trainable": "all", "train.lora.rank": 0, "train.mtp": False,
            "train.stop_at_step": 0, "data.seq_len": d.seq_len, "data.batch_size": d.batch_size}


def build_demo_family(cfg: ConfigDict, root: str, group: ProcessGroup) -> dict[str, Any]:
    """Build the family under `root`; returns the stage record (outputs base, instruct).

    The tokenizers and datasets are made on process 0 (`group.on_leader`); the two trainings
    and their exports run on every process."""
    d = cfg.demo
    tok_dir = os.path.join(root, "tokenizer")
    english = group.on_leader("demo/english", lambda: _english_data(cfg, tok_dir, root))
    vocab = -(-d.vocab_size // 128) * 128
    run_training(train_config(cfg, path="", data=english, run_dir=os.path.join(root, "base_run"),
                              changes={**_training(cfg, d.base_steps, d.base_lr),
                                       "model.preset": d.preset, "model.vocab_size": vocab}))
    base = export_run(os.path.join(root, "base_run"), os.path.join(root, "base"), "hf",
                      tokenizer_from=tok_dir, overwrite=True)
    start, chat_data = group.on_leader("demo/chat", lambda: _chat_data(cfg, tok_dir, base, root))
    run_training(train_config(cfg, path=start, data=chat_data,
                              run_dir=os.path.join(root, "instruct_run"),
                              changes=_training(cfg, d.instruct_steps, d.instruct_lr)))
    instruct = export_run(os.path.join(root, "instruct_run"), os.path.join(root, "instruct"),
                          "hf", tokenizer_from=os.path.join(root, "instruct_tokenizer"),
                          overwrite=True)
    group.on_leader("demo/exported", lambda: None)  # process 0 has written `instruct`
    return {"outputs": {"base": base, "instruct": instruct}}


def _english_data(cfg: ConfigDict, tok_dir: str, root: str) -> str:
    """The SentencePiece tokenizer trained on the English text, and that text prepared."""
    import sentencepiece as spm

    d = cfg.demo
    os.makedirs(tok_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(d.english_text), model_prefix=os.path.join(tok_dir, "tokenizer"),
        vocab_size=d.vocab_size, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=2, minloglevel=2)
    return prepare_data(cfg, tok_dir, d.english_text, os.path.join(root, "data_en"))


def _chat_data(cfg: ConfigDict, tok_dir: str, base: str, root: str) -> tuple[str, str]:
    """The instruct tokenizer (chat tokens + template), English prompt/response pairs prepared
    with it, and the tuning's starting model (the base weights with the instruct tokenizer: 2
    more tokens, which the padded embedding rows already hold)."""
    from lepjax.models.io import TOKENIZER_FILES, copy_tokenizer_files
    from lepjax.vocab import load_vocab
    from lepjax.vocab.writer import write_tokenizer_files

    tok = load_vocab(tok_dir)
    v = tok.vocab_size
    itok = dataclasses.replace(tok, pieces=tok.pieces + list(CHAT_TOKENS), sp_proto=None,
                               special={**tok.special, v: CHAT_TOKENS[0], v + 1: CHAT_TOKENS[1]},
                               chat_template=CHAT_TEMPLATE)
    itok_dir = os.path.join(root, "instruct_tokenizer")
    write_tokenizer_files(itok, itok_dir)
    pairs = os.path.join(root, "chat.jsonl")
    with open(pairs, "w", encoding="utf-8") as f:
        for line in read_lines(cfg.demo.english_text, 3000):
            words = line.split()
            if len(words) < 4:
                continue
            half = len(words) // 2
            f.write(json.dumps({
                "prompt": "<|im_start|>user\nContinue: " + " ".join(words[:half])
                          + "<|im_end|>\n<|im_start|>assistant\n",
                "target": " ".join(words[half:]) + "<|im_end|>"}) + "\n")
    chat_data = prepare_data(cfg, itok_dir, [pairs], os.path.join(root, "data_chat"),
                             prompt_field="prompt", target_field="target")
    start = os.path.join(root, "base_chat")
    shutil.copytree(base, start, dirs_exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(start, name)):
            os.remove(os.path.join(start, name))
    copy_tokenizer_files(itok_dir, start)
    return start, chat_data

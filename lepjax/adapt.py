"""`lepjax adapt`: the whole language adaptation in one run directory.

Stages (each records its outputs and a hash of its settings in `run_dir/stages/<stage>.json` and
is skipped on a rerun once complete, so a rerun after a crash continues where it stopped; a stage
whose settings changed runs again from scratch, and so does every stage after it):

  demo       (configs/demo.py only) build a tiny model family on the spot: a tokenizer trained
             on bundled English text, a base model pre-trained briefly on it, an instruct
             sibling tuned briefly from it with chat tokens and a chat template
  vocab      extend the base tokenizer from the target text; initialise the new embedding rows
  prepare    tokenise the target text (train) and held-out text with the new tokenizer
  train      train the embeddings only (input embeddings + LM head) of the resized base -> donor
  propagate  LEP: the donor's embeddings into the instruct model
  calibrate  (optional, calibrate.enabled) self-calibration: LoRA on the first and last layers
             with embeddings and LM head trainable, on the instruct model's own answers to
             target-text prompts plus copy tasks
  export     Hugging Face exports of the donor and the adapted instruct model
  evaluate   characters per token before/after, held-out bits per byte of base and donor

The summary (`run_dir/summary.json`, also printed) has the efficiency gain, the bits per byte, the
LEP fit residuals and where the exported models are.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ml_collections import ConfigDict

log = logging.getLogger("lepjax.adapt")

STAGES = ("demo", "vocab", "prepare", "train", "propagate", "calibrate", "export", "evaluate")


def default_config() -> ConfigDict:
    """The `lepjax adapt` config.

    Keys:
      run_dir: where every stage writes.
      base, instruct: the base model and its instruct sibling (HF or lepjax directories with
        tokenizers); set by the demo stage when demo.enabled.
      target_text: target-language text files (vocabulary and embedding training).
      heldout_text: held-out target-language files (efficiency and bits per byte).
      vocab.k, vocab.priority, vocab.aux_vocab_size, vocab.init_method: see `lepjax vocab`.
      data.seq_len, data.batch_size: rows for embedding training.
      train.steps, train.lr, train.warmup_steps, train.weight_decay: embedding-only LAPT
        (warm-up is capped at a tenth of the steps of each training).
      train.save_every: checkpoint interval of every training in the run (0 = only at the end);
        a run killed mid-training resumes from its latest checkpoint on the rerun.
      model.dtype, model.remat_policy: compute settings for training.
      propagate.method: conversion | overlap | swap.
      calibrate.enabled, calibrate.prompts, calibrate.max_new_tokens, calibrate.steps,
        calibrate.lr, calibrate.lora_rank, calibrate.layers: self-calibration (see above).
      export.format: hf | lepjax.
      eval.max_lines: held-out lines used for bits per byte (0 = all).
      demo.enabled, demo.english_text, demo.vocab_size, demo.base_steps, demo.instruct_steps,
        demo.seq_len, demo.batch_size: the on-the-spot tiny model family (see configs/demo.py).
    """
    return ConfigDict(dict(
        run_dir="", base="", instruct="", target_text=(), heldout_text=(),
        vocab=dict(k=1000, priority="after", aux_vocab_size=8000, init_method="mean"),
        data=dict(seq_len=512, batch_size=16),
        train=dict(steps=1000, lr=2e-4, warmup_steps=100, weight_decay=0.1, save_every=100),
        model=dict(dtype="bfloat16", remat_policy="full"),
        propagate=dict(method="conversion"),
        calibrate=dict(enabled=False, prompts=200, max_new_tokens=64, steps=100, lr=1e-4,
                       lora_rank=8, layers="0,-1"),
        export=dict(format="hf"),
        eval=dict(max_lines=0),
        demo=dict(enabled=False, english_text=(), vocab_size=2000, base_steps=150,
                  instruct_steps=40, seq_len=128, batch_size=8),
    ))


class Stages:
    """Runs stages once: a completed stage's record is reused on later runs.

    Each record keeps a hash of the settings the stage ran with. A stage runs again when its
    record or an output is missing (a crash: its work directory is kept, so training resumes from
    its checkpoint), when its settings changed, or when a stage before it ran in this invocation;
    in the last two cases its `reset` paths are deleted first, so nothing stale is resumed.
    """

    def __init__(self, run_dir: str):
        self.dir = os.path.join(run_dir, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.upstream_ran = False

    def run(self, name: str, fn: Callable[[], dict[str, Any]], settings: Any = None,
            reset: tuple[str, ...] = ()) -> dict[str, Any]:
        """The record of stage `name`, running `fn` unless a complete, current one exists."""
        import hashlib
        import shutil

        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                             ).hexdigest()[:16]
        path = os.path.join(self.dir, f"{name}.json")
        record = None
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
        if record is not None and not self.upstream_ran and record.get("settings") == key and \
                all(os.path.exists(p) for p in record.get("outputs", {}).values()):
            log.info("stage %s: complete, skipped", name)
            return record
        if self.upstream_ran or (record is not None and record.get("settings") != key):
            if record is not None:
                why = "an earlier stage ran again" if self.upstream_ran else "its settings changed"
                log.warning("stage %s: running again (%s)", name, why)
            for p in reset:
                shutil.rmtree(p, ignore_errors=True)
        if record is not None:
            os.remove(path)
        log.info("stage %s: running", name)
        self.upstream_ran = True
        t0 = time.perf_counter()
        record = fn()
        record["seconds"] = round(time.perf_counter() - t0, 1)
        record["settings"] = key
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        return record


def _lines(files, max_lines: int = 0) -> list[str]:
    out = []
    for p in files:
        with open(p, encoding="utf-8") as f:
            out.extend(line.rstrip("\n") for line in f if line.strip())
    return out[:max_lines] if max_lines else out


def _train_cfg(cfg: ConfigDict, *, path: str, data: str, run_dir: str, steps: int, lr: float,
               trainable: str, seq_len: int, batch_size: int, preset: str = "", vocab: int = 0):
    from lepjax.train.loop import default_config

    t = default_config()
    t.model.update(dict(path=path, dtype=cfg.model.dtype, remat_policy=cfg.model.remat_policy))
    if preset:
        t.model.update(dict(preset=preset, vocab_size=vocab))
    t.data.update(dict(paths=(data,), seq_len=seq_len, batch_size=batch_size))
    t.optim.update(dict(lr=lr, warmup_steps=min(cfg.train.warmup_steps, steps // 10),
                        weight_decay=cfg.train.weight_decay))
    t.train.update(dict(run_dir=run_dir, steps=steps, trainable=trainable, log_every=10,
                        save_every=cfg.train.save_every, loss_chunk=min(seq_len, 512), progress=True))
    return t


def _prepare(tokenizer: str, inputs, out: str, **fields) -> str:
    from lepjax.data.prepare import default_config, prepare

    p = default_config()
    p.update(dict(tokenizer=tokenizer, inputs=tuple(inputs), output_dir=out, num_proc=1,
                  records_per_shard=5000, **fields))
    prepare(p, progress=False)
    return out


def _export(run_dir: str, out: str, tokenizer_from: str, fmt: str = "lepjax") -> str:
    from lepjax import models
    from lepjax.train.loop import load_run

    save = models.save_hf if fmt == "hf" else models.save
    return save(load_run(run_dir), out, tokenizer_from=tokenizer_from, overwrite=True)


def build_demo_family(cfg: ConfigDict, root: str) -> dict[str, Any]:
    """A tokenizer trained on English, a tiny base pre-trained on it, an instruct sibling."""
    import dataclasses

    import sentencepiece as spm

    from lepjax.train.loop import train
    from lepjax.vocab.tokenizer import load_tokenizer
    from lepjax.vocab.writer import write_tokenizer_files

    d = cfg.demo
    tok_dir = os.path.join(root, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(d.english_text), model_prefix=os.path.join(tok_dir, "tokenizer"),
        vocab_size=d.vocab_size, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=2, minloglevel=2)
    english = _prepare(tok_dir, d.english_text, os.path.join(root, "data_en"))
    vocab = -(-d.vocab_size // 128) * 128
    train(_train_cfg(cfg, path="", data=english, run_dir=os.path.join(root, "base_run"),
                     steps=d.base_steps, lr=3e-3, trainable="all", seq_len=d.seq_len,
                     batch_size=d.batch_size, preset="tiny_llama2", vocab=vocab))
    base = _export(os.path.join(root, "base_run"), os.path.join(root, "base"), tok_dir, "hf")
    # The instruct sibling: chat tokens + template, tuned on English prompt/response pairs.
    tok = load_tokenizer(tok_dir)
    chat = ["<|im_start|>", "<|im_end|>"]
    v = tok.vocab_size
    itok = dataclasses.replace(tok, pieces=tok.pieces + chat, sp_proto=None,
                               special={**tok.special, v: chat[0], v + 1: chat[1]})
    itok_dir = os.path.join(root, "instruct_tokenizer")
    write_tokenizer_files(itok, itok_dir)
    cfg_path = os.path.join(itok_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                             "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2)
    pairs = os.path.join(root, "chat.jsonl")
    with open(pairs, "w", encoding="utf-8") as f:
        for line in _lines(d.english_text, 3000):
            words = line.split()
            if len(words) < 4:
                continue
            half = len(words) // 2
            f.write(json.dumps({
                "prompt": "<|im_start|>user\nContinue: " + " ".join(words[:half])
                          + "<|im_end|>\n<|im_start|>assistant\n",
                "target": " ".join(words[half:]) + "<|im_end|>"}) + "\n")
    chat_data = _prepare(itok_dir, [pairs], os.path.join(root, "data_chat"),
                         prompt_field="prompt", target_field="target")
    # The tuning starts from the base weights with the instruct tokenizer (2 more tokens; the
    # padded embedding rows already hold them).
    import shutil

    from lepjax.models.io import TOKENIZER_FILES, copy_tokenizer_files

    start = os.path.join(root, "base_chat")
    shutil.copytree(base, start, dirs_exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(start, name)):
            os.remove(os.path.join(start, name))
    copy_tokenizer_files(itok_dir, start)
    train(_train_cfg(cfg, path=start, data=chat_data, run_dir=os.path.join(root, "instruct_run"),
                     steps=d.instruct_steps, lr=1e-3, trainable="all", seq_len=d.seq_len,
                     batch_size=d.batch_size))
    instruct = _export(os.path.join(root, "instruct_run"), os.path.join(root, "instruct"),
                       itok_dir, "hf")
    return {"outputs": {"base": base, "instruct": instruct}}


def _chat_prompt(tokenizer_dir: str, text: str) -> str:
    """`text` as a user turn in the model's chat template (plain text without a template)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    except (ValueError, OSError, TypeError):
        return text + "\n"


def calibrate(cfg: ConfigDict, instruct: str, adapted: str, root: str) -> dict[str, Any]:
    """Self-calibration: tune the adapted instruct model (LoRA on `calibrate.layers`, embeddings
    and LM head) to give the original instruct model's answers, plus copy tasks."""
    from lepjax import models
    from lepjax.data.tokenizer import load_tokenizer as data_tokenizer
    from lepjax.generate import Generator, SamplingParams
    from lepjax.train.loop import train

    c = cfg.calibrate
    texts = _lines(cfg.target_text, c.prompts)
    model, _ = models.load(instruct, dtype=cfg.model.dtype)
    tok = data_tokenizer(instruct)
    # Chat templates often render the BOS text; the BOS id is added once, as `prepare` does.
    bos_text = tok.vocabulary()[tok.bos_id] if tok.bos_id is not None else None

    def chat(text):
        p = _chat_prompt(instruct, text)
        return p[len(bos_text):] if bos_text and p.startswith(bos_text) else p

    prompts = [chat(t) for t in texts]
    bos = [tok.bos_id] if tok.bos_id is not None else []
    answers = Generator(model, batch_size=8, length_bucket=64).generate(
        [bos + ids for ids in tok.encode_batch(prompts)],
        SamplingParams(max_new_tokens=c.max_new_tokens,
                       eos_ids=(tok.eos_id,) if tok.eos_id is not None else ()), tokenizer=tok)
    del model
    pairs = os.path.join(root, "calibrate", "pairs.jsonl")
    os.makedirs(os.path.dirname(pairs), exist_ok=True)
    with open(pairs, "w", encoding="utf-8") as f:
        for text, prompt, answer in zip(texts, prompts, answers):
            if answer.text and answer.text.strip():
                f.write(json.dumps({"prompt": prompt, "target": answer.text},
                                   ensure_ascii=False) + "\n")
            copy = chat("Repeat exactly: " + text)
            f.write(json.dumps({"prompt": copy, "target": text}, ensure_ascii=False) + "\n")
    data = _prepare(adapted, [pairs], os.path.join(root, "calibrate", "data"),
                    prompt_field="prompt", target_field="target")
    t = _train_cfg(cfg, path=adapted, data=data, run_dir=os.path.join(root, "calibrate", "run"),
                   steps=c.steps, lr=c.lr, trainable="embed,lm_head", seq_len=cfg.data.seq_len,
                   batch_size=cfg.data.batch_size)
    t.train.lora.update(dict(rank=c.lora_rank, targets=("q", "k", "v", "o"), layers=c.layers))
    result = train(t)
    out = _export(os.path.join(root, "calibrate", "run"), os.path.join(root, "calibrated"),
                  adapted)
    return {"outputs": {"calibrated": out}, "pairs": len(texts), "final_loss": result.get("loss")}


def adapt(cfg: ConfigDict) -> dict[str, Any]:
    """Run every stage of `cfg` (skipping completed ones); returns the summary."""
    from lepjax.data.tokenizer import load_tokenizer as data_tokenizer
    from lepjax.lep.propagate import propagate
    from lepjax.train.loop import train
    from lepjax.vocab.checkpoint import init_embeddings
    from lepjax.vocab.expand import extend
    from lepjax.vocab.report import report
    from lepjax.vocab.tokenizer import load_tokenizer
    from lepjax.vocab.writer import save_tokenizer

    if not cfg.run_dir:
        raise ValueError("run_dir is not set")
    for key in ("target_text", "heldout_text"):
        if not cfg[key]:
            raise ValueError(f"{key} is not set")
        for p in cfg[key]:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{key} file {p!r} does not exist")
    root = os.path.abspath(cfg.run_dir)
    st = Stages(root)
    out = lambda *p: os.path.join(root, *p)  # noqa: E731
    base, instruct = cfg.base, cfg.instruct
    if cfg.demo.enabled:
        fam = st.run("demo", lambda: build_demo_family(cfg, out("demo")),
                     settings=(cfg.demo.to_dict(), cfg.model.to_dict()), reset=(out("demo"),))[
                         "outputs"]
        base, instruct = fam["base"], fam["instruct"]
    if not base or not instruct:
        raise ValueError("set base and instruct (or demo.enabled)")

    def vocab_stage():
        source = load_tokenizer(base)
        new, summary = extend(source, list(cfg.target_text), cfg.vocab.k,
                              priority=cfg.vocab.priority, aux_vocab_size=cfg.vocab.aux_vocab_size,
                              progress=False)
        tok_dir = save_tokenizer(new, out("tokenizer"), {"extend": summary}, overwrite=True)
        init = init_embeddings(base, source, new, tok_dir, out("base_resized"),
                               method=cfg.vocab.init_method, corpus=list(cfg.target_text),
                               output_format="lepjax", overwrite=True, progress=False)
        return {"outputs": {"tokenizer": tok_dir, "base_resized": init["output"]},
                "new_tokens": cfg.vocab.k, "rows_by_origin": init["rows_by_origin"]}

    voc = st.run("vocab", vocab_stage, settings=(base, cfg.target_text, cfg.vocab.to_dict()))[
        "outputs"]
    data = st.run("prepare", lambda: {"outputs": {
        "train": _prepare(voc["tokenizer"], cfg.target_text, out("data", "train")),
        "heldout": _prepare(voc["tokenizer"], cfg.heldout_text, out("data", "heldout"))}},
        settings=(cfg.target_text, cfg.heldout_text), reset=(out("data"),))["outputs"]

    def train_stage():
        result = train(_train_cfg(cfg, path=voc["base_resized"], data=data["train"],
                                  run_dir=out("train"), steps=cfg.train.steps, lr=cfg.train.lr,
                                  trainable="embeddings", seq_len=cfg.data.seq_len,
                                  batch_size=cfg.data.batch_size))
        donor = _export(out("train"), out("donor"), voc["tokenizer"])
        return {"outputs": {"donor": donor}, "final_loss": result.get("loss")}

    donor = st.run("train", train_stage, settings=(cfg.train.to_dict(), cfg.data.to_dict(),
                                                   cfg.model.to_dict()),
                   reset=(out("train"),))["outputs"]["donor"]
    prop = st.run("propagate", lambda: (lambda s: {**s, "outputs": {"adapted": s["output"]}})(
        propagate(base, instruct, donor, out("adapted_instruct"), method=cfg.propagate.method,
                  overwrite=True)), settings=(instruct, cfg.propagate.to_dict()))

    adapted = prop["outputs"]["adapted"]
    if cfg.calibrate.enabled:
        adapted = st.run("calibrate", lambda: calibrate(cfg, instruct, adapted, root),
                         settings=cfg.calibrate.to_dict(), reset=(out("calibrate"),))[
            "outputs"]["calibrated"]

    def export_stage():
        from lepjax import models

        paths = {}
        for name, src in (("donor", donor), ("adapted_instruct", adapted)):
            model, _ = models.load(src, param_dtype="float32")
            save = models.save_hf if cfg.export.format == "hf" else models.save
            paths[name] = save(model, out("export", name), tokenizer_from=src, overwrite=True)
        return {"outputs": paths}

    exported = st.run("export", export_stage, settings=(cfg.export.to_dict(), donor, adapted))[
        "outputs"]

    def evaluate_stage():
        from lepjax import models
        from lepjax.eval.bpb import bits_per_byte

        rep = report({"before": load_tokenizer(base), "after": load_tokenizer(voc["tokenizer"])},
                     {"heldout": list(cfg.heldout_text)})
        texts = _lines(cfg.heldout_text, cfg.eval.max_lines)
        bpb = {}
        for name, path in (("base", base), ("adapted_base", donor)):
            model, _ = models.load(path, dtype="float32")
            bpb[name] = bits_per_byte(model, data_tokenizer(path), texts)["bits_per_byte"]
        per = rep["results"]["heldout"]
        path = out("evaluation.json")
        with open(path, "w") as f:
            json.dump({"efficiency": rep, "bits_per_byte": bpb}, f, indent=2)
        return {"outputs": {"evaluation": path},
                "chars_per_token": {k: per[k]["chars_per_token"] for k in ("before", "after")},
                "bits_per_byte": bpb}

    ev = st.run("evaluate", evaluate_stage, settings=(cfg.heldout_text, cfg.eval.to_dict()))
    summary = {"run_dir": root, "chars_per_token": ev["chars_per_token"],
               "bits_per_byte": ev["bits_per_byte"], "lep_residuals": prop["residuals"],
               "exported": exported, "base": base, "instruct": instruct}
    with open(out("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary

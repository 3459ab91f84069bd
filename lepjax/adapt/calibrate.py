"""Self-calibration of the adapted instruct model (`calibrate` stage of `lepjax adapt`).

The original instruct model answers target-text prompts; the adapted instruct model is tuned to
give those answers, plus copy tasks ("Repeat exactly: ..."), with LoRA on a few layers and the
embeddings and LM head trainable.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml_collections import ConfigDict

from lepjax.adapt.runs import prepare_data, read_lines, run_training, train_config
from lepjax.parallel import ProcessGroup
from lepjax.train.run import export_run


def calibrate_section() -> ConfigDict:
    """The `calibrate` section of `lepjax adapt`.

    Keys:
      enabled: run the stage (after propagate).
      prompts: target-text lines used as prompts.
      max_new_tokens: length of the instruct model's answers.
      steps, lr: the tuning (adapt's model, mesh, data, optim and train sections otherwise).
      warmup_steps: warm-up of the tuning (0 = optim.warmup_fraction of the steps).
      trainable: parameters trained besides the adapters (grammar of train.trainable).
      lora: the adapters (keys of train.lora: rank, alpha, targets, layers).
    """
    from lepjax.train.lora import lora_section

    lora = lora_section()
    lora.update(dict(rank=8, layers="0,-1"))
    return ConfigDict(dict(enabled=False, prompts=200, max_new_tokens=64, steps=100, lr=1e-4,
                           warmup_steps=0, trainable="embed,lm_head", lora=lora))


def calibrate_changes(cfg: ConfigDict) -> dict[str, Any]:
    """The keys the calibration's training sets on adapt's `train`-verb sections."""
    c = cfg.calibrate
    return {"train.steps": c.steps, "optim.lr": c.lr, "optim.warmup_steps": c.warmup_steps,
            "train.trainable": c.trainable, "train.mtp": False, "train.stop_at_step": 0,
            **{f"train.lora.{k}": v for k, v in c.lora.items()}}


def _chat_prompt(tok: Any, text: str) -> str:
    """`text` as a user turn in the tokenizer's chat template, without the BOS text the
    template may render (the BOS id is added once, as `prepare` does); plain text + newline
    without a template."""
    if not tok.chat_template:
        return text + "\n"
    p = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
    return p[len(tok.bos):] if tok.bos and p.startswith(tok.bos) else p


def calibrate(cfg: ConfigDict, instruct: str, adapted: str, root: str,
              group: ProcessGroup) -> dict[str, Any]:
    """Tune the adapted instruct model to give the original instruct model's answers, plus copy
    tasks; returns the stage record (output `calibrated`, under `root`).

    The answers are generated and the tuning runs on every process (global mesh); process 0
    writes the pairs and prepares them."""
    from lepjax import models
    from lepjax.generate import Generator, SamplingParams
    from lepjax.parallel import mesh_from_config
    from lepjax.tokenizer import load_tokenizer

    c = cfg.calibrate
    texts = read_lines(cfg.target_text, c.prompts)
    mesh, rules = mesh_from_config(cfg.mesh)
    model, _ = models.load(instruct, mesh=mesh, rules=rules, dtype=cfg.model.dtype)
    tok = load_tokenizer(instruct)
    prompts = [_chat_prompt(tok, t) for t in texts]
    answers = Generator(model, mesh=mesh, rules=rules, batch_size=8, length_bucket=64,
                        vocab_limit=tok.vocab_size).generate(
        tok.encode(prompts, add_bos=True),
        SamplingParams(max_new_tokens=c.max_new_tokens, eos_ids=tok.stop_ids), tokenizer=tok)
    del model
    pairs = os.path.join(root, "calibrate", "pairs.jsonl")

    def write_pairs():
        os.makedirs(os.path.dirname(pairs), exist_ok=True)
        with open(pairs, "w", encoding="utf-8") as f:
            for text, prompt, answer in zip(texts, prompts, answers):
                if answer.text and answer.text.strip():
                    f.write(json.dumps({"prompt": prompt, "target": answer.text},
                                       ensure_ascii=False) + "\n")
                copy = _chat_prompt(tok, "Repeat exactly: " + text)
                f.write(json.dumps({"prompt": copy, "target": text}, ensure_ascii=False) + "\n")
        return prepare_data(cfg, adapted, [pairs], os.path.join(root, "calibrate", "data"),
                            prompt_field="prompt", target_field="target")

    data = group.on_leader("calibrate/pairs", write_pairs)
    run_dir = os.path.join(root, "calibrate", "run")
    result = run_training(train_config(cfg, path=adapted, data=data, run_dir=run_dir,
                                       changes=calibrate_changes(cfg)))
    out = export_run(run_dir, os.path.join(root, "calibrated"), "lepjax", tokenizer_from=adapted,
                     overwrite=True, mesh=mesh, rules=rules)
    return {"outputs": {"calibrated": out}, "pairs": len(texts), "final_loss": result.get("loss")}

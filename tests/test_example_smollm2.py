"""configs/examples/smollm2_ru.py end to end on the real SmolLM2-135M-Instruct, at reduced steps.

`lepjax adapt` runs as a user runs it (a subprocess, one CPU device) on the HF directory of the
session fixture `smollm2_dir`: the example's own stages and settings, with the training, the
evaluation and the vocabulary shrunk by overrides so the run fits CI. The instruct model is its
own base (the example's docstring), so LEP's conversion map must be the identity.

Cost, measured: 1.9 CPU-minutes (95 s user + 18 s system, the subprocess included), 5 min wall on
the 2-core machine while other jobs shared it (13 min wall at load ~25).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "examples", "smollm2_ru.py")
REDUCED = ["--config.train.steps=2", "--config.train.save_every=2", "--config.data.seq_len=64",
           "--config.data.batch_size=2", "--config.optim.warmup_steps=1",
           "--config.eval.max_examples=4", "--config.eval.batch_size=4", "--config.extend.k=300",
           "--config.extend.aux_vocab_size=2000"]


def test_example_adapts_smollm2_to_russian(smollm2_dir, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ)
    # One CPU device, as a user's run: not the 8 simulated devices of conftest.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "").strip()
    cmd = [sys.executable, "-m", "lepjax.cli", "adapt", f"--config={CONFIG}",
           f"--config.base={smollm2_dir}", f"--config.instruct={smollm2_dir}",
           f"--config.run_dir={run_dir}", *REDUCED]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(run_dir / "summary.json") as f:
        summary = json.load(f)

    # Russian is spelled in fewer tokens with the extended vocabulary.
    cpt = summary["chars_per_token"]
    assert cpt["after"] > 1.2 * cpt["before"], cpt
    assert all(math.isfinite(v) and v > 0 for v in summary["bits_per_byte"].values())
    # The instruct model is the base: the conversion fit is exact, W the identity.
    assert max(summary["lep_residuals"].values()) < 1e-6, summary["lep_residuals"]

    # The held-out English file is evaluated too, and its tokens are the same as before.
    with open(run_dir / "evaluation" / "results.json") as f:
        results = json.load(f)
    en = results["efficiency"]["en_ewt_test.txt"]
    assert en["adapted_base"]["chars_per_token"] == en["base"]["chars_per_token"]
    lm = results["language_modelling"]
    assert set(lm) == {"ru_gsd_test.txt", "en_ewt_test.txt"}
    # Embedding-only training leaves English bits per byte where the base had them (2 steps).
    assert abs(lm["en_ewt_test.txt"]["adapted_base"]["bits_per_byte"]
               - lm["en_ewt_test.txt"]["base"]["bits_per_byte"]) < 0.5

    # The exported adapted instruct model is an ordinary HF model with the extended tokenizer
    # and SmolLM2's chat template, and it answers a chat turn.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = summary["exported"]["adapted_instruct"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert len(tok) > 49152 and model.get_input_embeddings().weight.shape[0] >= len(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "Москва — столица России."}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    assert ids.max() >= 49152  # Russian is now spelled with new tokens
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()

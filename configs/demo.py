"""The whole LEP adaptation on CPU in a few minutes, with a tiny model family built on the spot.

    lepjax adapt --config=configs/demo.py

A SentencePiece tokenizer is trained on the bundled English sample (UD English-EWT), a tiny
Llama-style base model is pre-trained on it briefly, and an "instruct" sibling (chat tokens and
template added) is tuned from it on English prompt/response pairs. Then the pipeline adapts them
to Russian (the bundled UD Russian-GSD sample): vocabulary extension, embedding-only training of
the base, LEP into the instruct model, exports and evaluation. Keys: see lepjax.adapt (every
`lepjax train` key, e.g. --config.optim.schedule or --config.mesh.fsdp, applies to the trainings).
Run from the repository root (the sample texts live in tests/fixtures).
"""

from lepjax.adapt import default_config


def get_config():
    cfg = default_config()
    cfg.run_dir = "runs/demo"
    cfg.demo.enabled = True
    cfg.demo.english_text = ("tests/fixtures/en_ewt_dev.txt", "tests/fixtures/en_ewt_test.txt")
    cfg.demo.vocab_size = 2000
    cfg.demo.base_steps = 150
    cfg.demo.instruct_steps = 40
    cfg.target_text = ("tests/fixtures/ru_gsd_dev.txt",)
    cfg.heldout_text = ("tests/fixtures/ru_gsd_test.txt",)
    cfg.extend.k = 500
    cfg.extend.aux_vocab_size = 3000
    cfg.init.method = "mean"
    cfg.model.dtype = "float32"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 8
    cfg.train.steps = 150
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 10
    cfg.optim.weight_decay = 0.0
    cfg.prepare.engine.kind = "synchronous"  # small texts: tokenise in process
    cfg.eval.dtype = "float32"
    cfg.eval.max_len = 4096  # the English base tokenizer spells Russian lines in many tokens
    cfg.eval.progress = False
    return cfg

"""A tiny Llama 3 style model trained from scratch on prepared Russian shards (CPU smoke run).

    lepjax prepare --config=configs/prepare.py --config.tokenizer=TOKENIZER \
        --config.inputs=tests/fixtures/ru_gsd_dev.txt --config.output_dir=runs/data/ru
    lepjax train --config=configs/train/tiny_ru.py --config.data.paths=runs/data/ru \
        --config.train.run_dir=runs/tiny_ru

Sections and keys: see lepjax.models.model_section, lepjax.parallel.mesh_section,
lepjax.data.loader.data_section, lepjax.train.optim.optim_section and lepjax.train.loop.train_section.
"""

from lepjax.train.loop import default_config


def get_config():
    cfg = default_config()
    cfg.model.preset = "tiny_llama3"
    cfg.model.dtype = "float32"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 8
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.optim.weight_decay = 0.01
    cfg.train.steps = 300
    cfg.train.log_every = 10
    cfg.train.save_every = 100
    cfg.train.loss_chunk = 64
    return cfg

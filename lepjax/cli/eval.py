"""`lepjax eval`: evaluate checkpoints and write one comparative report.

    lepjax eval --config=configs/eval/example.py \
        --config.checkpoints=source=/models/Llama-2-7b,adapted=runs/adapt/ru \
        --config.output_dir=runs/eval/ru --config.heldout=/data/ru/heldout.txt
"""

from __future__ import annotations

from lepjax.cli.common import add_config_flag, required

HELP = "compare checkpoints: bits per byte, token efficiency, tasks, speedup"


def add_args(p):
    add_config_flag(p, "e.g. configs/eval/example.py; keys: lepjax.eval.evaluate.default_config")


def default_config():
    from lepjax.eval.evaluate import default_config

    return default_config()


def validate(args, cfg):
    required(cfg, "output_dir")


def run(args, cfg):
    from lepjax.eval.evaluate import evaluate

    summary = evaluate(cfg)
    return summary, summary["output_dir"]

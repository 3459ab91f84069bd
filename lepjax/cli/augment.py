"""`lepjax augment fiat|fiat-infer|instruct-pt`: offline augmentation with a teacher model.

    lepjax augment fiat --config=configs/fiat/augment.py --config.teacher.path=TEACHER \
        --config.fiat.inputs=train.jsonl --config.fiat.tokenizer=STUDENT \
        --config.fiat.output_dir=runs/fiat
    lepjax augment fiat-infer --config=configs/fiat/infer.py ...
    lepjax augment instruct-pt --config=configs/instruct_pt/domain.py ...
"""

from __future__ import annotations

import os

from lepjax.cli.common import add_config_flag

HELP = "FIAT rationales / inference and instruction synthesis with a teacher model"
METHODS = ("fiat", "fiat-infer", "instruct-pt")


def add_args(p):
    p.add_argument("method", choices=METHODS,
                   help="fiat: teacher rationales -> text + tokenised prompt/target shards; "
                        "fiat-infer: teacher rationale, then the tuned student's answer; "
                        "instruct-pt: instruction synthesis -> token datasets to mix")
    add_config_flag(p, "e.g. configs/fiat/augment.py, configs/fiat/infer.py, "
                       "configs/instruct_pt/domain.py")


def default_config():
    from lepjax.augment.config import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.augment.config import validate_config

    validate_config(cfg)


def _output_dir(method: str, cfg) -> str:
    if method == "fiat":
        return cfg.fiat.output_dir
    if method == "fiat-infer":
        return os.path.dirname(os.path.abspath(cfg.fiat.infer.output)) if cfg.fiat.infer.output \
            else ""
    return cfg.synth.output_dir


def run(args, cfg):
    if args.method == "fiat":
        from lepjax.augment.fiat import augment

        summary = augment(cfg)
    elif args.method == "fiat-infer":
        from lepjax.augment.fiat_infer import infer

        summary = infer(cfg)
    else:
        from lepjax.augment.instruct_pt import synthesize

        summary = synthesize(cfg)
    return summary, _output_dir(args.method, cfg)

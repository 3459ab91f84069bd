"""`lepjax vocab ACTION`: vocabulary extension, replacement, embedding initialisation, report.

    lepjax vocab extend --config.tokenizer=TOK --config.corpus=ru.txt --config.output_dir=out/tok
    lepjax vocab replace --config.tokenizer=TOK --config.corpus=ru.txt --config.output_dir=out/tok
    lepjax vocab init-embeddings --config.tokenizer=TOK --config.init.checkpoint=MODEL \
        --config.init.tokenizer=out/tok --config.init.method=align --config.corpus=ru.txt \
        --config.output_dir=out/model
    lepjax vocab report --config.report.tokenizers=TOK,out/tok --config.report.heldout=ru_test.txt \
        --config.output_dir=out/report

Config keys: `lepjax.vocab.config` (also `configs/vocab/*.py`).
"""

from __future__ import annotations

from lepjax.cli.common import add_config_flag, required

HELP = "vocabulary extension/replacement, embedding initialisation, efficiency report"
ACTIONS = ("extend", "replace", "init-embeddings", "report")


def add_args(p):
    p.add_argument("action", choices=ACTIONS,
                   help="extend: add k tokens learnt from the corpus; replace: a new vocabulary; "
                        "init-embeddings: resize a checkpoint to a new tokenizer; report: "
                        "tokenizer efficiency on held-out text")
    add_config_flag(p, "default: lepjax.vocab.config's keys, e.g. configs/vocab/extend_tejaswi.py")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_config():
    from lepjax.vocab.config import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.vocab import validate_config

    required(cfg, "output_dir")
    validate_config(cfg)


def run(args, cfg):
    from lepjax.vocab.api import ACTIONS as RUN

    summary = RUN[args.action](cfg, cfg.progress and not args.no_progress)
    brief = {k: v for k, v in summary.items() if k != "new_tokens"}
    return brief, summary.get("output") or cfg.output_dir

"""`lepjax vocab ACTION`: vocabulary extension, replacement, embedding initialisation, efficiency report.

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

import json
import os

from lepjax.cli import add_config_flag, verb

ACTIONS = ("extend", "replace", "init-embeddings", "report")


def _default():
    from lepjax.vocab.config import default_config

    return default_config()


def _args(p):
    p.add_argument("action", choices=ACTIONS,
                   help="extend: add k tokens learnt from the corpus; replace: a new vocabulary; "
                        "init-embeddings: resize a checkpoint to a new tokenizer; report: "
                        "tokenizer efficiency on held-out text")
    add_config_flag(p, "default: lepjax.vocab.config's keys, e.g. configs/vocab/extend_tejaswi.py")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _need(cfg, key: str) -> str:
    node = cfg
    for part in key.split("."):
        node = node[part]
    if not node:
        raise ValueError(f"config key {key} is required for this action")
    return node


def _tokenizer_dir(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def _source(cfg):
    from lepjax.vocab.tokenizer import load_tokenizer

    return load_tokenizer(_need(cfg, "tokenizer"))


def run_extend(cfg, progress: bool) -> dict:
    """Extend the source tokenizer and write the new tokenizer directory."""
    from lepjax.vocab import expand, writer
    from lepjax.vocab.corpus import check_corpus

    out_dir = _need(cfg, "output_dir")
    writer.prepare_output(out_dir, cfg.overwrite)  # fail before training if it cannot be written
    files = check_corpus(cfg.corpus)
    e = cfg.extend
    tok, summary = expand.extend(_source(cfg), files, e.k, priority=e.priority,
                                 aux_vocab_size=e.aux_vocab_size, token_filter=e.token_filter,
                                 max_lines=cfg.max_lines, min_frequency=e.min_frequency,
                                 progress=progress)
    summary["corpus"] = [os.path.abspath(f) for f in files]
    summary["output"] = writer.save_tokenizer(tok, out_dir, summary, overwrite=True)
    return summary


def run_replace(cfg, progress: bool) -> dict:
    """Train a replacement tokenizer and write it."""
    from lepjax.vocab import expand, writer
    from lepjax.vocab.corpus import check_corpus

    out_dir = _need(cfg, "output_dir")
    writer.prepare_output(out_dir, cfg.overwrite)
    files = check_corpus(cfg.corpus)
    tok, summary = expand.replace(_source(cfg), files, cfg.replace.vocab_size,
                                  model_type=cfg.replace.model, max_lines=cfg.max_lines,
                                  min_frequency=cfg.extend.min_frequency, progress=progress)
    summary["corpus"] = [os.path.abspath(f) for f in files]
    summary["output"] = writer.save_tokenizer(tok, out_dir, summary, overwrite=True)
    return summary


def run_init(cfg, progress: bool) -> dict:
    """Resize a checkpoint's embeddings and LM head to the new tokenizer."""
    from lepjax.vocab.checkpoint import init_embeddings
    from lepjax.vocab.corpus import check_corpus
    from lepjax.vocab.tokenizer import load_tokenizer

    i = cfg.init
    checkpoint = _need(cfg, "init.checkpoint")
    source = load_tokenizer(cfg.tokenizer or checkpoint)
    new_path = _need(cfg, "init.tokenizer")
    new = load_tokenizer(new_path)
    files = check_corpus(cfg.corpus) if i.method == "align" else []
    return init_embeddings(checkpoint, source, new, _tokenizer_dir(new_path),
                           _need(cfg, "output_dir"), method=i.method, corpus=files,
                           max_lines=cfg.max_lines, pad_multiple=i.pad_multiple, seed=i.seed,
                           output_format=i.output_format, batch_size=i.batch_size,
                           overwrite=cfg.overwrite, progress=progress)


def run_report(cfg, progress: bool) -> dict:
    """Measure tokenizer efficiency on held-out text; write report.json and report.png."""
    from lepjax.vocab import report
    from lepjax.vocab.corpus import check_corpus
    from lepjax.vocab.tokenizer import load_tokenizer

    r = cfg.report
    paths = list(r.tokenizers) or ([cfg.tokenizer] if cfg.tokenizer else [])
    if not paths:
        raise ValueError("config key report.tokenizers is required for this action")
    labels = list(r.labels) or (["before", "after"] if len(paths) == 2
                                else [f"t{i}" for i in range(len(paths))])
    if len(labels) != len(paths):
        raise ValueError(f"report.labels has {len(labels)} labels for {len(paths)} tokenizers")
    heldout = list(r.heldout)
    if not heldout:
        raise ValueError("config key report.heldout is required for this action")
    files = {os.path.basename(f): [f] for f in check_corpus(heldout, "held-out text")}
    toks = {label: load_tokenizer(p) for label, p in zip(labels, paths)}
    rep = report.report(toks, files, cfg.max_lines)
    written = report.write_report(rep, _need(cfg, "output_dir"), chart=r.chart)
    return {"action": "report", "written": written, "ratios": rep["ratios"]}


RUNNERS = {"extend": run_extend, "replace": run_replace, "init-embeddings": run_init,
           "report": run_report}


@verb("vocab", "vocabulary extension/replacement, embedding initialisation, efficiency report",
      default_config=_default)(_args)
def run_vocab(args, cfg):
    from lepjax import config as config_lib

    summary = RUNNERS[args.action](cfg, cfg.progress and not args.no_progress)
    out = summary.get("output") or _need(cfg, "output_dir")
    config_lib.write_resolved({"verb": "vocab", "action": args.action, **config_lib.to_dict(cfg)},
                              out)
    brief = {k: v for k, v in summary.items() if k != "new_tokens"}
    print(json.dumps(brief, ensure_ascii=False))

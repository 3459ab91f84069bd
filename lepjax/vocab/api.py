"""The `lepjax vocab` actions as library functions of the `lepjax.vocab.config` config.

    from lepjax.vocab.api import ACTIONS
    summary = ACTIONS["extend"](cfg, progress=True)

Each takes the whole vocab config (`lepjax.vocab.config.default_config`) and returns a summary
whose `output` is the directory written.
"""

from __future__ import annotations

import os


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
    from lepjax.vocab.tokenizer import load_vocab

    return load_vocab(_need(cfg, "tokenizer"))


def extend_from_config(cfg, progress: bool) -> dict:
    """Extend the source tokenizer and write the new tokenizer directory."""
    from lepjax.vocab import expand, writer
    from lepjax.vocab.corpus import check_corpus

    out_dir = _need(cfg, "output_dir")
    files = check_corpus(cfg.corpus)
    writer.check_output(out_dir, cfg.overwrite, [cfg.tokenizer, *files])  # before training
    e = cfg.extend
    tok, summary = expand.extend(_source(cfg), files, e.k, priority=e.priority,
                                 aux_vocab_size=e.aux_vocab_size, token_filter=e.token_filter,
                                 max_lines=cfg.max_lines, min_frequency=e.min_frequency,
                                 progress=progress)
    summary["corpus"] = [os.path.abspath(f) for f in files]
    summary["output"] = writer.save_tokenizer(tok, out_dir, summary, overwrite=True)
    return summary


def replace_from_config(cfg, progress: bool) -> dict:
    """Train a replacement tokenizer and write it."""
    from lepjax.vocab import expand, writer
    from lepjax.vocab.corpus import check_corpus

    out_dir = _need(cfg, "output_dir")
    files = check_corpus(cfg.corpus)
    writer.check_output(out_dir, cfg.overwrite, [cfg.tokenizer, *files])  # before training
    tok, summary = expand.replace(_source(cfg), files, cfg.replace.vocab_size,
                                  model_type=cfg.replace.model, max_lines=cfg.max_lines,
                                  min_frequency=cfg.extend.min_frequency, progress=progress)
    summary["corpus"] = [os.path.abspath(f) for f in files]
    summary["output"] = writer.save_tokenizer(tok, out_dir, summary, overwrite=True)
    return summary


def init_from_config(cfg, progress: bool) -> dict:
    """Resize a checkpoint's embeddings and LM head to the new tokenizer (align's corpus counts
    on the `engine`)."""
    from lepjax.data.engine import open_engine
    from lepjax.vocab.checkpoint import init_embeddings
    from lepjax.vocab.corpus import check_corpus
    from lepjax.vocab.tokenizer import load_vocab

    i = cfg.init
    checkpoint = _need(cfg, "init.checkpoint")
    source = load_vocab(cfg.tokenizer or checkpoint)
    new_path = _need(cfg, "init.tokenizer")
    new = load_vocab(new_path)
    files = check_corpus(cfg.corpus) if i.method == "align" else []
    kwargs = dict(method=i.method, corpus=files, max_lines=cfg.max_lines,
                  pad_multiple=i.pad_multiple, seed=i.seed, output_format=i.output_format,
                  batch_size=i.batch_size, overwrite=cfg.overwrite, progress=progress)
    if i.method != "align":  # no corpus statistics: no engine
        return init_embeddings(checkpoint, source, new, _tokenizer_dir(new_path),
                               _need(cfg, "output_dir"), **kwargs)
    with open_engine(cfg.engine) as engine:
        return init_embeddings(checkpoint, source, new, _tokenizer_dir(new_path),
                               _need(cfg, "output_dir"), engine=engine, **kwargs)


def report_from_config(cfg, progress: bool) -> dict:
    """Measure tokenizer efficiency on held-out text (on the `engine`); write report.json and
    report.png."""
    from lepjax.data.engine import open_engine
    from lepjax.vocab import report
    from lepjax.vocab.corpus import check_corpus
    from lepjax.tokenizer import load_tokenizer

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
    with open_engine(cfg.engine) as engine:
        rep = report.report(toks, files, cfg.max_lines, engine)
    written = report.write_report(rep, _need(cfg, "output_dir"), chart=r.chart)
    return {"action": "report", "written": written, "ratios": rep["ratios"]}


ACTIONS = {"extend": extend_from_config, "replace": replace_from_config,
           "init-embeddings": init_from_config, "report": report_from_config}

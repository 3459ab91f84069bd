"""Evaluate one or more checkpoints and write one comparative report (`lepjax eval`).

    lepjax eval --config=configs/eval/example.py \
        --config.checkpoints=source=/models/Llama-2-7b,adapted=runs/adapt/ru \
        --config.output_dir=runs/eval/ru --config.heldout=/data/ru/heldout.txt

Checkpoints are evaluated one after another (one model in memory at a time), each with the
tokenizer in its own directory. Writes into `output_dir`: results.json, results.md, charts/*.png
(one per metric), predictions/<task>/<checkpoint>.jsonl, predictions/speed.jsonl and
resolved_config.json.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ml_collections import ConfigDict

log = logging.getLogger("lepjax.eval")


def default_config() -> ConfigDict:
    """The `lepjax eval` config.

    Keys:
      checkpoints: model directories (lepjax or Hugging Face, each holding its tokenizer), as
        "label=path" or a bare path (labelled by its directory name). The first is the baseline
        of ratios unless speed.baseline says otherwise.
      output_dir: where the report goes; overwrite: replace an existing report there.
      dtype: compute dtype of the models (bfloat16 | float32 | float16).
      batch_size: rows per scoring / decoding batch.
      length_bucket: sequences are padded to a multiple of this (few compiled shapes).
      padding: right | left (scores do not depend on it; left suits some kernels).
      max_len: longest sequence in tokens (0 = the model's max_position_embeddings); longer
        task prompts lose tokens on the left.
      max_examples: at most this many examples per task, documents per held-out source and
        speed prompts (0 = all).
      progress: show progress bars.
      heldout: held-out text files (one document per line) and/or prepared dataset directories
        (`lepjax prepare` output) for bits per byte / per character and per-token perplexity.
      heldout_text_mode: line | paragraph (how text files split into documents, as in prepare).
      efficiency.files: text files for tokens per word, characters per token and tokens per
        sentence (empty = the text files of `heldout`).
      efficiency.english: parallel English files, one per efficiency file, same line count
        (empty = no ratio to English).
      efficiency.max_lines: lines read per file (0 = all).
      tasks.<name>: one prompt task: config (a task config file, e.g. configs/eval/xnli.py),
        data (JSONL file; empty = skip this task), lang (template language), fewshot (-1 = the
        task config's), fewshot_data (JSONL file of solved examples; empty = the data file,
        never the example being asked), max_new_tokens (generation tasks; 0 = the task config's).
      speed.prompts: .txt (a prompt per line) or .jsonl file (field speed.prompt_field) decoded
        by every checkpoint (empty = no speed comparison).
      speed.max_new_tokens, speed.stop: greedy decoding limit and stop strings.
      speed.baseline: checkpoint label the ratios divide by (empty = the first).
      mesh.*: device mesh (see lepjax.parallel.mesh_section).
    """
    from lepjax.parallel import mesh_section

    return ConfigDict(dict(
        checkpoints=(), output_dir="", overwrite=False, dtype="bfloat16", batch_size=16,
        length_bucket=64, padding="right", max_len=0, max_examples=0, progress=True,
        heldout=(), heldout_text_mode="line",
        efficiency=ConfigDict(dict(files=(), english=(), max_lines=0)),
        tasks=ConfigDict(),
        speed=ConfigDict(dict(prompts="", prompt_field="prompt", max_new_tokens=128, stop=(),
                              baseline="")),
        mesh=mesh_section()))


def task_entry() -> ConfigDict:
    """One `tasks.<name>` entry (see default_config)."""
    return ConfigDict(dict(config="", data="", lang="en", fewshot=-1, fewshot_data="",
                           max_new_tokens=0))


def parse_checkpoints(specs) -> dict[str, str]:
    """{label: path} from "label=path" or bare-path entries; labels must be unique."""
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, path = str(spec).partition("=")
        if not sep:
            label, path = os.path.basename(os.path.normpath(spec)), spec
        if not label or not path:
            raise ValueError(f"checkpoints: {spec!r} is not 'label=path' or a path")
        if label in out:
            raise ValueError(f"checkpoints: label {label!r} is used twice; name them 'label=path'")
        out[label] = path
    if not out:
        raise ValueError("checkpoints is empty: give one or more model directories")
    return out


def _names(paths) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        name = os.path.basename(os.path.normpath(p))
        while name in out:
            name += "'"
        out[name] = p
    return out


def _prepare_tasks(cfg: ConfigDict) -> dict[str, tuple]:
    from lepjax.eval.tasks import load_task, read_examples

    out = {}
    for name, entry in cfg.tasks.items():
        unknown = sorted(set(entry) - set(task_entry()))
        if unknown:
            raise ValueError(f"tasks.{name}: unknown key(s) {unknown}; valid: "
                             f"{sorted(task_entry())}")
        if not entry.get("data"):
            log.info("tasks.%s: no data file given; skipped", name)
            continue
        if not entry.get("config"):
            raise ValueError(f"tasks.{name}: 'config' (a task config file) is not set")
        fewshot, new_tokens = entry.get("fewshot", -1), entry.get("max_new_tokens", 0)
        task = load_task(entry.config, entry.get("lang", "en"),
                         fewshot=None if fewshot < 0 else fewshot,
                         max_new_tokens=new_tokens or None)
        examples = read_examples(task, entry.data, cfg.max_examples)
        pool_path = entry.get("fewshot_data") or entry.data
        pool = read_examples(task, pool_path) if task.fewshot else []
        same = os.path.realpath(pool_path) == os.path.realpath(entry.data)
        out[name] = (task, examples, pool, same)
    return out


def _efficiency_inputs(cfg: ConfigDict) -> list[tuple[str, str, str | None]]:
    files = list(cfg.efficiency.files) or [p for p in cfg.heldout if os.path.isfile(p)]
    english = list(cfg.efficiency.english)
    if english and len(english) != len(files):
        raise ValueError(f"efficiency.english has {len(english)} files for {len(files)} "
                         "efficiency files; give one parallel English file per file")
    for p in files + english:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"efficiency file {p!r} does not exist")
    return [(name, path, english[i] if english else None)
            for i, (name, path) in enumerate(_names(files).items())]


def _efficiency(tok, inputs, max_lines: int) -> dict[str, dict[str, Any]]:
    from lepjax.vocab.corpus import count_lines
    from lepjax.vocab.report import efficiency

    out = {}
    for name, path, english in inputs:
        rep = efficiency(tok, [path], max_lines)
        if english:
            n_en = count_lines([english], max_lines)
            if n_en != rep["sentences"]:
                raise ValueError(f"{english} has {n_en} non-blank lines but {path} has "
                                 f"{rep['sentences']}: parallel files must align line by line")
            en = efficiency(tok, [english], max_lines)
            rep["english_tokens"] = en["tokens"]
            rep["ratio_to_english"] = rep["tokens"] / max(en["tokens"], 1)
        out[name] = rep
    return out


def evaluate(cfg: ConfigDict) -> dict[str, Any]:
    """Evaluate every checkpoint as `cfg` describes; write the report; return a summary."""
    from lepjax import models, parallel
    from lepjax.tokenizer import load_tokenizer
    from lepjax.eval import report, speed
    from lepjax.eval.bpb import heldout_bits_per_byte
    from lepjax.eval.loglik import Scorer
    from lepjax.eval.task_eval import evaluate_task
    from lepjax.generate import Generator, read_prompts

    checkpoints = parse_checkpoints(cfg.checkpoints)
    if not cfg.output_dir:
        raise ValueError("output_dir is not set")
    out_dir = os.path.abspath(cfg.output_dir)
    if os.path.exists(os.path.join(out_dir, "results.json")) and not cfg.overwrite:
        raise FileExistsError(f"{out_dir} already holds results.json; set overwrite=True or "
                              "choose another output_dir")
    for path in cfg.heldout:
        if not os.path.exists(path):
            raise FileNotFoundError(f"held-out source {path!r} does not exist")
    # Read every input before loading a model, so bad input fails in seconds.
    tasks = _prepare_tasks(cfg)
    eff_inputs = _efficiency_inputs(cfg)
    speed_texts = (read_prompts(cfg.speed.prompts, cfg.speed.prompt_field)
                   if cfg.speed.prompts else [])
    if cfg.max_examples:
        speed_texts = speed_texts[:cfg.max_examples]
    mesh, rules = parallel.mesh_from_config(cfg.mesh)
    results: dict[str, Any] = {"checkpoints": {}, "language_modelling": {}, "efficiency": {},
                               "tasks": {}}
    decoded: dict[str, list] = {}
    for label, path in checkpoints.items():
        log.info("evaluating %s (%s)", label, path)
        model, mc = models.load(path, mesh=mesh, rules=rules, dtype=cfg.dtype)
        try:
            tok = load_tokenizer(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {label} ({path}) holds no tokenizer.json or "
                                    "tokenizer.model; eval uses each checkpoint's own") from None
        if tok.vocab_size > mc.vocab_size:
            raise ValueError(f"checkpoint {label}: tokenizer has {tok.vocab_size} tokens but the "
                             f"model only {mc.vocab_size} embedding rows")
        max_len = cfg.max_len or mc.max_position_embeddings
        results["checkpoints"][label] = {
            "path": os.path.abspath(path), "format": models.detect_format(path),
            "tokenizer": tok.path, "tokenizer_vocab_size": tok.vocab_size,
            "model_vocab_size": mc.vocab_size, "num_params": mc.num_params}
        scorer = Scorer(model, mesh=mesh, rules=rules, batch_size=cfg.batch_size,
                        length_bucket=cfg.length_bucket, padding=cfg.padding, max_len=max_len,
                        vocab_limit=tok.vocab_size)
        generator = Generator(model, mesh=mesh, rules=rules, batch_size=cfg.batch_size,
                              length_bucket=cfg.length_bucket, vocab_limit=tok.vocab_size)
        for name, src in _names(cfg.heldout).items():
            results["language_modelling"].setdefault(name, {})[label] = heldout_bits_per_byte(
                model, tok, src, text_mode=cfg.heldout_text_mode, max_documents=cfg.max_examples,
                scorer=scorer, progress=cfg.progress, max_len=max_len)
        for name, rep in _efficiency(tok, eff_inputs, cfg.efficiency.max_lines).items():
            results["efficiency"].setdefault(name, {})[label] = rep
        for name, (task, examples, pool, pool_is_eval) in tasks.items():
            scores, preds = evaluate_task(task, examples, pool, pool_is_eval, scorer=scorer,
                                          generator=generator, tokenizer=tok, max_len=max_len,
                                          progress=cfg.progress)
            entry = results["tasks"].setdefault(name, {
                "task": task.name, "lang": task.lang, "kind": task.kind, "config": task.path,
                "data": os.path.abspath(examples[0].source), "fewshot": task.fewshot,
                "results": {}})
            entry["results"][label] = scores
            report.write_jsonl(os.path.join(out_dir, "predictions", name, f"{label}.jsonl"), preds)
        if speed_texts:
            speed_gen = Generator(model, mesh=mesh, rules=rules, batch_size=1,
                                  length_bucket=cfg.length_bucket, vocab_limit=tok.vocab_size)
            decoded[label] = speed.decode_timed(speed_gen, tok, speed_texts,
                                                cfg.speed.max_new_tokens, tuple(cfg.speed.stop),
                                                progress=cfg.progress)
        del model, scorer, generator
    if decoded:
        results["speed"], rows = speed.compare(decoded, cfg.speed.baseline)
        report.write_jsonl(os.path.join(out_dir, "predictions", "speed.jsonl"), rows)
    written = report.write_report(results, out_dir)
    return {"output_dir": out_dir, "results": written["json"], "markdown": written["markdown"],
            "charts": len(written["charts"]), "checkpoints": list(checkpoints),
            "tasks": list(results["tasks"])}

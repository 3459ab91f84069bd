"""`lepjax adapt`: the whole language adaptation in one run directory.

Stages, in order (see `lepjax.adapt.stages` for how a rerun skips completed ones):

  demo       (demo.enabled, configs/demo.py) build a tiny model family on the spot
             (`lepjax.adapt.demo`)
  vocab      extend the base tokenizer from the target text; initialise the new embedding rows
  prepare    tokenise the target text (train) and held-out text with the new tokenizer
  train      train the resized base with the `model`, `mesh`, `data`, `optim` and `train`
             sections (by default the embeddings only) -> donor
  propagate  LEP: the donor's embeddings into the instruct model
  calibrate  (calibrate.enabled) self-calibration (`lepjax.adapt.calibrate`)
  export     exports of the donor and the adapted instruct model
  evaluate   `lepjax eval` of the base and the trained base on the held-out text: characters
             per token before/after, bits per byte (run_dir/evaluation/results.json)

Several processes (a TPU pod's hosts, SLURM tasks, `launch/local.sh N`) run the same command on
a shared filesystem. Host-side work runs on process 0 while the others wait for it (up to
`sync_timeout_s`) and then read its results: the demo's tokenizer and data, the tokenizer
extension, `prepare` (on process 0, spread over the `prepare.engine` workers), the stage records
and the summary. Trainings (the demo's, train, calibrate) and evaluation run on every process
on the global mesh of the `mesh` section; the stages that read and write whole models (the
embedding initialisation, propagate, export) run on every process too, each holding its shards,
with process 0 writing the files. A failure on any process stops every process with its error
(`lepjax.parallel.ProcessGroup`); a rerun resumes as on one process.

The summary (`run_dir/summary.json`, also returned) has the efficiency gain and the bits per
byte on the first held-out file, the LEP fit residuals and where the exported models are.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ml_collections import ConfigDict

from lepjax import config as config_lib
from lepjax.adapt.calibrate import calibrate, calibrate_changes, calibrate_section
from lepjax.adapt.demo import build_demo_family, demo_section
from lepjax.adapt.runs import (TRAIN_SECTIONS, Preempted, prepare_data, run_training,
                               train_config)
from lepjax.adapt.stages import Stages
from lepjax.parallel import ProcessGroup, mesh_from_config

log = logging.getLogger("lepjax.adapt")

STAGES = ("demo", "vocab", "prepare", "train", "propagate", "calibrate", "export", "evaluate")

# Keys of the composed sections that the pipeline wires from stage to stage: what each holds.
PIPELINE_KEYS = {
    "model.path": "the resized base, made from `base`", "data.paths": "`target_text`, prepared",
    "train.run_dir": "run_dir/train", "init.checkpoint": "`base`",
    "init.tokenizer": "the extended tokenizer", "prepare.tokenizer": "the extended tokenizer",
    "prepare.inputs": "`target_text` / `heldout_text`", "prepare.output_dir": "run_dir/data",
    "propagate.base": "`base`", "propagate.instruct": "`instruct`",
    "propagate.donor": "the trained base", "propagate.output_dir": "run_dir/adapted_instruct",
    "propagate.overwrite": "true: a stage replaces its own outputs",
    "eval.checkpoints": "`base` and the trained base", "eval.heldout": "`heldout_text`",
    "eval.output_dir": "run_dir/evaluation", "eval.overwrite": "true: a stage replaces its own "
    "outputs", "eval.mesh": "adapt's `mesh` section",
}
EXPORT_FORMATS = ("hf", "lepjax")


def default_config() -> ConfigDict:
    """The `lepjax adapt` config: adapt's own keys and the real sections of the verbs it runs.

    adapt's keys:
      run_dir: where every stage writes.
      base, instruct: the base model and its instruct sibling (HF or lepjax directories with
        tokenizers); set by the demo stage when demo.enabled.
      target_text: target-language text files (vocabulary and embedding training).
      heldout_text: held-out target-language files (efficiency and bits per byte).
      export.format: hf | lepjax.
      sync_timeout_s: with several processes, how long the others wait for process 0's
        host-side work (tokenizer extension, prepare, ...) before failing with a timeout.
      demo.*: the on-the-spot tiny model family (`lepjax.adapt.demo.demo_section`).
      calibrate.*: self-calibration (`lepjax.adapt.calibrate.calibrate_section`).

    Sections of other verbs, with their keys and meanings (set any of them as there):
      model, mesh, data, optim, train: `lepjax train` (`lepjax.train.loop.default_config`); the
        train stage runs them as they are. Defaults here: embedding-only LAPT
        (train.trainable=embeddings) with the LEP paper's optimiser settings.
      extend, init: `lepjax vocab`'s sections (`lepjax.vocab.config`), for the vocab stage.
      prepare: `lepjax prepare` (`lepjax.data.prepare.default_config`), for every tokenisation.
      propagate: `lepjax propagate` (`lepjax.lep.propagate.default_config`).
      eval: `lepjax eval` (`lepjax.eval.evaluate.default_config`), for the evaluate stage: base
        and trained base on `heldout_text` (bits per byte, characters per token; `max_examples`
        lines per file, `dtype`, `batch_size`, ... and any `tasks.<name>`).
    The pipeline sets the paths between stages (`PIPELINE_KEYS`: model.path, data.paths,
    train.run_dir, init.checkpoint, prepare.inputs, propagate.base, ...); setting one is an error
    naming the adapt key to set instead.
    """
    from lepjax.data.prepare import default_config as prepare_config
    from lepjax.eval.evaluate import default_config as eval_config
    from lepjax.lep.propagate import default_config as propagate_config
    from lepjax.train.loop import default_config as train_config_
    from lepjax.vocab.config import default_config as vocab_config

    t, v = train_config_(), vocab_config()
    cfg = ConfigDict(dict(
        run_dir="", base="", instruct="", target_text=(), heldout_text=(),
        sync_timeout_s=6 * 3600.0,
        **{name: t[name] for name in TRAIN_SECTIONS},
        extend=v.extend, init=v.init, prepare=prepare_config(), propagate=propagate_config(),
        eval=eval_config(), calibrate=calibrate_section(), export=dict(format="hf"),
        demo=demo_section()))
    cfg.data.update(dict(seq_len=512, batch_size=16))
    cfg.optim.update(dict(lr=2e-4, warmup_steps=100, weight_decay=0.1))
    cfg.train.update(dict(steps=1000, trainable="embeddings", save_every=100, loss_chunk=512))
    cfg.extend.update(dict(k=1000, aux_vocab_size=8000))
    cfg.init.update(dict(method="mean", output_format="lepjax"))
    cfg.prepare.records_per_shard = 5000
    return cfg


def _get(cfg: ConfigDict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return config_lib.to_dict(node) if isinstance(node, ConfigDict) else node


def trainings(cfg: ConfigDict) -> dict[str, ConfigDict]:
    """The `lepjax train` config of each training stage the pipeline will run (`train`, and
    `calibrate` when enabled), by stage name, with the paths the pipeline will give them."""
    root = os.path.abspath(cfg.run_dir)
    out = {"train": train_config(cfg, path=os.path.join(root, "base_resized"),
                                 data=os.path.join(root, "data", "train"),
                                 run_dir=os.path.join(root, "train"))}
    if cfg.calibrate.enabled:
        out["calibrate"] = train_config(cfg, path=os.path.join(root, "adapted_instruct"),
                                        data=os.path.join(root, "calibrate", "data"),
                                        run_dir=os.path.join(root, "calibrate", "run"),
                                        changes=calibrate_changes(cfg))
    return out


def validate_config(cfg: ConfigDict) -> None:
    """Check a `lepjax adapt` config without reading any model, data or input file.

    Enumerated values and grammars of every section (`optim.schedule`, `train.trainable`, LoRA
    targets, `model.attention`/`dtype`, `init.method`, `propagate.method`, ...) through the
    checks of the verbs that own them, for every training the pipeline runs, and adapt's own
    keys. Raises `ConfigError` naming the key (and the closest valid values). The inputs
    (`base`, `instruct`, the text files) are checked when `adapt` starts, on the machine that runs
    it (`check_inputs`).
    """
    from lepjax import lep, train, vocab
    from lepjax.data import prepare as prepare_lib

    if not cfg.run_dir:
        raise config_lib.ConfigError("run_dir is not set (where every stage of the adaptation "
                                     "writes): pass --config.run_dir=DIR")
    defaults = default_config()
    for key, what in PIPELINE_KEYS.items():
        if _get(cfg, key) != _get(defaults, key):
            raise config_lib.ConfigError(
                f"config key {key!r} is set by the adapt pipeline ({what}); leave it unset")
    config_lib.check_choice("export.format", cfg.export.format, EXPORT_FORMATS)
    if not cfg.sync_timeout_s > 0:
        raise config_lib.ConfigError(f"sync_timeout_s must be positive (seconds), got "
                                     f"{cfg.sync_timeout_s!r}")
    if cfg.demo.enabled:
        from lepjax.models import PRESETS

        config_lib.check_choice("demo.preset", cfg.demo.preset, sorted(PRESETS))
    for stage, tcfg in trainings(cfg).items():
        try:
            train.validate_config(tcfg)
        except config_lib.ConfigError as e:
            if stage == "train":
                raise
            raise config_lib.ConfigError(f"the {stage} stage's training: {e}") from None
    vocab.validate_config(cfg)
    root = os.path.abspath(cfg.run_dir)
    p = ConfigDict(cfg.prepare.to_dict())  # the prepare section with the paths it will get
    p.update(dict(tokenizer=os.path.join(root, "tokenizer"),
                  inputs=tuple(cfg.target_text) or ("target_text",),
                  output_dir=os.path.join(root, "data", "train")))
    prepare_lib.validate_config(p)
    lep.validate_config(cfg)


def plan(cfg: ConfigDict) -> dict[str, Any]:
    """What `adapt(cfg)` would run, without running it: the stages in order and, for each
    training, its run directory and shape (for `--dry_run`)."""
    stages = [s for s in STAGES if (s != "demo" or cfg.demo.enabled)
              and (s != "calibrate" or cfg.calibrate.enabled)]
    runs = {}
    for stage, t in trainings(cfg).items():
        runs[stage] = {"run_dir": t.train.run_dir, "steps": t.train.steps,
                       "trainable": t.train.trainable, "lora_rank": t.train.lora.rank,
                       "seq_len": t.data.seq_len, "batch_size": t.data.batch_size}
    return {"stages": stages, "trainings": runs}


def check_inputs(cfg: ConfigDict) -> None:
    """Refuse a config whose inputs are missing: base and instruct (unless demo.enabled), the
    target and held-out text files, the demo's English text; names the key and the path."""
    if cfg.demo.enabled:
        if not cfg.demo.english_text:
            raise config_lib.ConfigError("demo.enabled needs demo.english_text")
    elif not cfg.base or not cfg.instruct:
        raise config_lib.ConfigError("set base and instruct (or demo.enabled)")
    files = {"target_text": cfg.target_text, "heldout_text": cfg.heldout_text}
    if cfg.demo.enabled:
        files["demo.english_text"] = cfg.demo.english_text
    for key, paths in files.items():
        if not paths:
            raise config_lib.ConfigError(f"{key} is not set")
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{key} file {p!r} does not exist")
    if not cfg.demo.enabled:
        for key in ("base", "instruct"):
            if not os.path.isdir(cfg[key]):
                raise FileNotFoundError(f"{key} model directory {cfg[key]!r} does not exist")


def _sections(cfg: ConfigDict, *names: str) -> dict[str, Any]:
    return {n: config_lib.to_dict(cfg[n]) for n in names}


def adapt(cfg: ConfigDict) -> dict[str, Any]:
    """Run every stage of `cfg` (skipping completed ones); returns the summary.

    Every process of a multi-process job runs this with the same config; see the module
    docstring for which stage runs where. A failure on any process stops them all.
    """
    validate_config(cfg)
    group = ProcessGroup("adapt", cfg.sync_timeout_s)
    with group.failing_together():
        check_inputs(cfg)
        try:
            return _run_stages(cfg, group)
        except Preempted as e:
            log.warning("%s; rerun the same command to resume", e)
            return {"run_dir": os.path.abspath(cfg.run_dir), "preempted": str(e)}


def _run_stages(cfg: ConfigDict, group: ProcessGroup) -> dict[str, Any]:
    from lepjax.lep.propagate import propagate
    from lepjax.train.run import export_run
    from lepjax.vocab import extend, init_embeddings, load_vocab, save_tokenizer

    root = os.path.abspath(cfg.run_dir)
    st = Stages(root, group)
    out = lambda *p: os.path.join(root, *p)  # noqa: E731
    base, instruct = cfg.base, cfg.instruct
    train_settings = _sections(cfg, "model", "data", "optim", "train")  # mesh: a run option
    if cfg.demo.enabled:
        fam = st.run("demo", lambda: build_demo_family(cfg, out("demo"), group),
                     settings=(_sections(cfg, "demo", "prepare"), train_settings),
                     reset=(out("demo"),))["outputs"]
        base, instruct = fam["base"], fam["instruct"]

    def extend_tokenizer():
        e = cfg.extend
        new, summary = extend(load_vocab(base), list(cfg.target_text), e.k, priority=e.priority,
                              aux_vocab_size=e.aux_vocab_size, token_filter=e.token_filter,
                              min_frequency=e.min_frequency, progress=False)
        return save_tokenizer(new, out("tokenizer"), {"extend": summary}, overwrite=True)

    def vocab_stage():
        i = cfg.init
        tok_dir = group.on_leader("vocab/extend", extend_tokenizer)
        init = init_embeddings(base, load_vocab(base), load_vocab(tok_dir), tok_dir,
                               out("base_resized"), method=i.method, corpus=list(cfg.target_text),
                               pad_multiple=i.pad_multiple, seed=i.seed,
                               output_format=i.output_format, batch_size=i.batch_size,
                               overwrite=True, progress=False)
        return {"outputs": {"tokenizer": tok_dir, "base_resized": init["output"]},
                "new_tokens": cfg.extend.k, "rows_by_origin": init["rows_by_origin"]}

    voc = st.run("vocab", vocab_stage,
                 settings=(base, cfg.target_text, _sections(cfg, "extend", "init")))["outputs"]
    data = st.run("prepare", lambda: {"outputs": {
        "train": prepare_data(cfg, voc["tokenizer"], cfg.target_text, out("data", "train")),
        "heldout": prepare_data(cfg, voc["tokenizer"], cfg.heldout_text, out("data", "heldout"))}},
        settings=(cfg.target_text, cfg.heldout_text, _sections(cfg, "prepare")),
        reset=(out("data"),), on="leader")["outputs"]
    mesh, rules = mesh_from_config(cfg.mesh)

    def train_stage():
        result = run_training(train_config(cfg, path=voc["base_resized"], data=data["train"],
                                           run_dir=out("train")))
        donor = export_run(out("train"), out("donor"), "lepjax", tokenizer_from=voc["tokenizer"],
                           overwrite=True, mesh=mesh, rules=rules)
        return {"outputs": {"donor": donor}, "final_loss": result.get("loss")}

    donor = st.run("train", train_stage, settings=train_settings,
                   reset=(out("train"),))["outputs"]["donor"]

    def propagate_stage():
        p = cfg.propagate
        s = propagate(base, instruct, donor, out("adapted_instruct"), method=p.method,
                      base_tokenizer=p.base_tokenizer, instruct_tokenizer=p.instruct_tokenizer,
                      donor_tokenizer=p.donor_tokenizer, output_format=p.output_format,
                      pad_multiple=p.pad_multiple, overwrite=True)
        return {**s, "outputs": {"adapted": s["output"]}}

    prop = st.run("propagate", propagate_stage, settings=(instruct, _sections(cfg, "propagate")))
    adapted = prop["outputs"]["adapted"]
    if cfg.calibrate.enabled:
        adapted = st.run("calibrate", lambda: calibrate(cfg, instruct, adapted, root, group),
                         settings=(_sections(cfg, "calibrate"), train_settings),
                         reset=(out("calibrate"),))["outputs"]["calibrated"]

    def export_stage():
        from lepjax import models

        paths = {}
        for name, src in (("donor", donor), ("adapted_instruct", adapted)):
            model, _ = models.load(src, mesh=mesh, rules=rules, param_dtype="float32")
            save = models.save_hf if cfg.export.format == "hf" else models.save
            paths[name] = save(model, out("export", name), tokenizer_from=src, overwrite=True)
        return {"outputs": paths}

    exported = st.run("export", export_stage, settings=(cfg.export.to_dict(), donor, adapted))[
        "outputs"]

    def evaluate_stage():
        from lepjax.eval.evaluate import evaluate

        e = ConfigDict(cfg.eval.to_dict())
        e.update(dict(checkpoints=(f"base={base}", f"adapted_base={donor}"),
                      heldout=tuple(cfg.heldout_text), output_dir=out("evaluation"),
                      overwrite=True, mesh=cfg.mesh.to_dict()))
        results_path = evaluate(e)["results"]
        with open(group.on_leader("evaluate/results", lambda: results_path),
                  encoding="utf-8") as f:
            results = json.load(f)
        first = os.path.basename(os.path.normpath(cfg.heldout_text[0]))
        lm, eff = results["language_modelling"][first], results["efficiency"][first]
        return {"outputs": {"evaluation": out("evaluation", "results.json")},
                "chars_per_token": {"before": eff["base"]["chars_per_token"],
                                    "after": eff["adapted_base"]["chars_per_token"]},
                "bits_per_byte": {k: lm[k]["bits_per_byte"] for k in ("base", "adapted_base")}}

    ev = st.run("evaluate", evaluate_stage,
                settings=(cfg.heldout_text, _sections(cfg, "eval"), donor))
    summary = {"run_dir": root, "chars_per_token": ev["chars_per_token"],
               "bits_per_byte": ev["bits_per_byte"], "lep_residuals": prop["residuals"],
               "exported": exported, "base": base, "instruct": instruct}

    def write_summary():
        with open(out("summary.json"), "w") as f:
            json.dump(summary, f, indent=2)

    group.on_leader("summary", write_summary)
    return summary

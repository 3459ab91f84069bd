"""The verbs a stage of `lepjax adapt` runs, configured from adapt's composed sections.

`lepjax adapt` holds the real sections of the verbs it runs under their own names (`model`,
`mesh`, `data`, `optim`, `train` of `lepjax train`; `prepare`; ...). A stage takes a section as it
is and sets only what the pipeline owns: the paths it wires from stage to stage, and the values
a stage documents as its own (e.g. the demo's steps and learning rates).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from lepjax import config as config_lib

TRAIN_SECTIONS = ("model", "mesh", "data", "optim", "train")


def train_config(cfg: ConfigDict, *, path: str, data: str, run_dir: str,
                 changes: Mapping[str, Any] | None = None) -> ConfigDict:
    """The `lepjax train` config of one training of the pipeline.

    adapt's `model`, `mesh`, `data`, `optim` and `train` sections as they are, with the
    pipeline's paths (`model.path`, `data.paths`, `train.run_dir`) and `changes`, a mapping of
    dotted keys (e.g. {"train.steps": 40}) a stage sets for itself.
    """
    t = ConfigDict({name: cfg[name].to_dict() for name in TRAIN_SECTIONS})
    owned = {"model.path": path, "data.paths": (data,) if data else (), "train.run_dir": run_dir}
    for key, value in {**owned, **(changes or {})}.items():
        config_lib.override(t, key, value)
    return t


class Preempted(Exception):
    """A training of the pipeline stopped early for preemption (SIGTERM); a rerun resumes it."""


def run_training(tcfg: ConfigDict) -> dict[str, Any]:
    """Run (or resume) one training of the pipeline; returns its final metrics.

    `train` writes its resolved `lepjax train` config into its run directory, so each run
    directory of the pipeline says how it was trained. Raises `Preempted` when the training
    saved and stopped on SIGTERM (every process stops at the same step).
    """
    from lepjax.train.loop import train

    result = train(tcfg)
    if result.get("preempted"):
        raise Preempted(f"the training in {tcfg.train.run_dir} stopped at step {result['step']} "
                        "for preemption")
    return result


def prepare_data(cfg: ConfigDict, tokenizer: str, inputs: Sequence[str], out: str,
                 **fields: str) -> str:
    """Tokenise `inputs` into the dataset directory `out` with adapt's `prepare` section."""
    from lepjax.data.prepare import prepare

    p = ConfigDict(cfg.prepare.to_dict())
    p.update(dict(tokenizer=tokenizer, inputs=tuple(inputs), output_dir=out, **fields))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    prepare(p, progress=False)
    return out


def read_lines(files: Sequence[str], max_lines: int = 0) -> list[str]:
    """The non-empty lines of text `files`, in order (at most `max_lines`; 0 = all)."""
    out = []
    for p in files:
        with open(p, encoding="utf-8") as f:
            out.extend(line.rstrip("\n") for line in f if line.strip())
    return out[:max_lines] if max_lines else out


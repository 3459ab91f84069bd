"""`lepjax propagate`: command-line entry of LEP embedding propagation."""

from __future__ import annotations

import json

from ml_collections import ConfigDict

from lepjax.cli import add_config_flag, verb


def default_config() -> ConfigDict:
    """The `lepjax propagate` config.

    Keys:
      base: the original base model B (HF or lepjax directory, with its tokenizer).
      instruct: its instruction-tuned sibling I.
      donor: D, B after vocabulary adaptation and embedding training, with the new tokenizer.
      base_tokenizer, instruct_tokenizer, donor_tokenizer: tokenizers when not in the model dirs.
      method: conversion (default) | overlap | swap.
      output_dir: the adapted instruct model.
      output_format: lepjax | hf.
      pad_multiple: embedding rows padded to a multiple of this.
      overwrite: replace an existing output_dir.
    """
    return ConfigDict(dict(base="", instruct="", donor="", base_tokenizer="",
                           instruct_tokenizer="", donor_tokenizer="", method="conversion",
                           output_dir="", output_format="lepjax", pad_multiple=128,
                           overwrite=False))


def _args(p):
    add_config_flag(p, "keys: base, instruct, donor, method, output_dir, ...")


@verb("propagate", "LEP: give an instruct model the adapted base's embeddings",
      default_config=default_config)(_args)
def run_propagate(args, cfg):
    from lepjax import config as config_lib
    from lepjax.lep.propagate import propagate

    missing = [k for k in ("base", "instruct", "donor", "output_dir") if not cfg[k]]
    if missing:
        raise ValueError(f"set {', '.join('--config.' + k for k in missing)}")
    summary = propagate(cfg.base, cfg.instruct, cfg.donor, cfg.output_dir, method=cfg.method,
                        base_tokenizer=cfg.base_tokenizer, instruct_tokenizer=cfg.instruct_tokenizer,
                        donor_tokenizer=cfg.donor_tokenizer, output_format=cfg.output_format,
                        pad_multiple=cfg.pad_multiple, overwrite=cfg.overwrite)
    config_lib.write_resolved(cfg, summary["output"])
    for module, res in summary["residuals"].items():
        print(f"LEP {cfg.method} {module}: relative residual {res:.3e}")
    print(json.dumps(summary))

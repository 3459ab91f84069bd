"""`lepjax propagate`: LEP, the adapted base's embeddings into its instruct sibling."""

from __future__ import annotations

from lepjax.cli.common import add_config_flag, required

HELP = "LEP: give an instruct model the adapted base's embeddings"


def add_args(p):
    add_config_flag(p, "keys: base, instruct, donor, method, output_dir, ...")


def default_config():
    from lepjax.lep.propagate import default_config

    return default_config()


def validate(args, cfg):
    from lepjax.lep import validate_config

    required(cfg, "base", "instruct", "donor", "output_dir")
    validate_config(cfg)


def run(args, cfg):
    from lepjax.lep.propagate import propagate

    summary = propagate(cfg.base, cfg.instruct, cfg.donor, cfg.output_dir, method=cfg.method,
                        base_tokenizer=cfg.base_tokenizer, instruct_tokenizer=cfg.instruct_tokenizer,
                        donor_tokenizer=cfg.donor_tokenizer, output_format=cfg.output_format,
                        pad_multiple=cfg.pad_multiple, overwrite=cfg.overwrite)
    for module, res in summary["residuals"].items():
        print(f"LEP {cfg.method} {module}: relative residual {res:.3e}")
    return summary, summary["output"]

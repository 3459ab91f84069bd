"""The `lepjax vocab` config.

Keys:
  tokenizer: the source tokenizer: a SentencePiece .model, a tiktoken ranks file (Llama 3
    tokenizer.model), a tokenizer.json, or a model directory holding one. Empty with
    init-embeddings: the checkpoint directory's tokenizer.
  corpus: target-language text files, one sentence/document per line (tuple, comma-separated
    string, globs or directories). Used by extend, replace and init (method align).
  max_lines: read at most this many lines of the corpus (0 = all).
  output_dir: where the action writes (a tokenizer directory, a model directory, or the report).
  overwrite: replace a non-empty output_dir.
  progress: show progress bars.
  extend.k: number of new tokens (ids V .. V+k-1).
  extend.aux_vocab_size: vocabulary size of the auxiliary tokenizer trained on the corpus.
  extend.priority: merges of new tokens `before` (Yamaguchi) or `after` (Tejaswi) the source's.
  extend.token_filter: regular expression a new token's text must match (e.g. `[А-Яа-яЁё]`);
    empty = no filter.
  extend.min_frequency: byte-level auxiliary training: minimum pair frequency for a merge.
  replace.vocab_size: size of the replacement vocabulary, special tokens included (0 = source's).
  replace.model: bpe (the tokenizer's kind, SentencePiece or byte-level, follows the source).
  init.checkpoint: a lepjax or Hugging Face model directory using the source tokenizer.
  init.tokenizer: the new tokenizer directory (written by extend or replace).
  init.method: random | mean | merge | align (see lepjax.vocab.embedding_init).
  init.seed: seed of the random method.
  init.pad_multiple: embedding rows are padded to a multiple of this (padding rows are zero).
  init.output_format: same | hf | lepjax.
  init.batch_size: lines per tokenizer batch when counting alignments.
  report.tokenizers: tokenizers to compare (the first is the baseline for ratios).
  report.labels: a label per tokenizer (default: before, after, ... for two, else t0, t1, ...).
  report.heldout: held-out text files; each file is reported separately.
  report.chart: also write report.png.
  engine.*: where align's corpus counts and the report's counts run (one task per corpus chunk;
    see lepjax.data.engine): kind local (default; worker processes on this machine) |
    synchronous (in this process) | dask (scheduler / scheduler_file), num_workers, retries.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from lepjax import config as config_lib

PRIORITIES = ("before", "after")
REPLACE_MODELS = ("bpe",)
INIT_METHODS = ("random", "mean", "merge", "align")
OUTPUT_FORMATS = ("same", "hf", "lepjax")


def default_config() -> ConfigDict:
    """Defaults for every `lepjax vocab` action (see the module docstring for the keys)."""
    from lepjax.data.engine import engine_section

    return ConfigDict(dict(
        tokenizer="", corpus=(), max_lines=0, output_dir="", overwrite=False, progress=True,
        extend=dict(k=1000, aux_vocab_size=50000, priority="after", token_filter="",
                    min_frequency=2),
        replace=dict(vocab_size=0, model="bpe"),
        init=dict(checkpoint="", tokenizer="", method="align", seed=0, pad_multiple=128,
                  output_format="same", batch_size=1000),
        report=dict(tokenizers=(), labels=(), heldout=(), chart=True),
        engine=engine_section(),
    ))


def _positive(key: str, value: Any) -> None:
    if int(value) < 1:
        raise config_lib.ConfigError(f"config key {key!r} must be >= 1, got {value!r}")


def validate_config(cfg: Any) -> None:
    """Check the enumerated vocab keys of a verb's whole config before any model is read.

    Looks at the `extend`, `replace` and `init` sections present at the top of `cfg` (`lepjax
    vocab`, `lepjax adapt`); ConfigError names the key and the closest valid values.
    """
    if "extend" in cfg:
        config_lib.check_choice("extend.priority", cfg.extend.priority, PRIORITIES)
        _positive("extend.k", cfg.extend.k)
    if "replace" in cfg:
        config_lib.check_choice("replace.model", cfg.replace.model, REPLACE_MODELS)
    if "init" in cfg:
        config_lib.check_choice("init.method", cfg.init.method, INIT_METHODS)
        config_lib.check_choice("init.output_format", cfg.init.output_format, OUTPUT_FORMATS)
        _positive("init.pad_multiple", cfg.init.pad_multiple)
    if "engine" in cfg:
        from lepjax.data.engine import validate

        validate(cfg.engine)

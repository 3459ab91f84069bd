"""Tokenise text into ArrayRecord shards (`lepjax prepare`).

    lepjax prepare --config=configs/prepare.py --config.tokenizer=/models/llama3 \
        --config.inputs=/data/ru/*.txt --config.output_dir=/data/ru_llama3

Keys:
  tokenizer: a tokenizer.json, a SentencePiece .model, or a model directory holding one.
  inputs: input files, globs or directories (tuple or comma-separated string).
  format: auto | text | jsonl | parquet | tfds (auto: from each file's extension).
  text_mode: text files: `line` (one document per line) or `paragraph` (blank-line separated).
  text_field: JSONL/Parquet/TFDS field holding a document.
  prompt_field, target_field: set both for prompt/target records (loss on the target only).
  tfds_name, tfds_split, tfds_data_dir: the TFDS dataset when format = tfds.
  output_dir: the dataset directory to write.
  records_per_shard: documents per shard.
  add_bos, add_eos: add the tokenizer's BOS / EOS around each document.
  overwrite: rebuild an output_dir prepared from other inputs, another tokenizer or other
    settings (without it, such a rerun is refused and names what changed).
  engine.kind: local (default: a LocalCluster, one worker process per core, loopback only)
    | synchronous (in this process) | dask (a running scheduler: engine.scheduler=tcp://HOST:8786
    or engine.scheduler_file=FILE on a shared filesystem).
  engine.num_workers: local worker processes (0 = one per core).
  engine.retries: times a task is retried after it failed or its worker died.
  engine.dashboard: the Dask dashboard address for kind=local (e.g. 127.0.0.1:8787; needs bokeh).
"""

from lepjax.data.prepare import default_config


def get_config():
    return default_config()

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
  num_proc: tokenising processes on this host (0 = every core).
  num_workers, worker_index: split shards across hosts (shard i goes to worker i % num_workers);
    also settable as --num_workers / --worker_index.
"""

from lepjax.data.prepare import default_config


def get_config():
    return default_config()

"""Writing tokenizers: Hugging Face `tokenizer.json` + `tokenizer_config.json`, SentencePiece `.model`.

A tokenizer directory written here loads with `tokenizers.Tokenizer.from_file`,
`transformers.AutoTokenizer.from_pretrained`, `lepjax.tokenizer.load_tokenizer` and (for SentencePiece
sources) `sentencepiece.SentencePieceProcessor`. Directories are written aside and renamed when
complete; `vocab.json` records how the vocabulary was made.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from lepjax import files
from lepjax.tokenizer.convert import BYTE_LEVEL, dumps
from lepjax.vocab.tokenizer import VocabTokenizer

VOCAB_META = "vocab.json"


def check_output(path: str, overwrite: bool, inputs: Sequence[str] = ()) -> str:
    """`path` made absolute, once checked (nothing is created): an output that is one of the
    `inputs` (or holds one) is refused, an existing non-empty one unless `overwrite`."""
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    for name in inputs:
        if name and os.path.exists(name):
            src = os.path.realpath(name)
            if src == real or src.startswith(real + os.sep):
                raise ValueError(f"output {path} is (or holds) the input {name}; choose another "
                                 "output_dir")
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise FileExistsError(f"output {path} exists and is not empty; set overwrite=True "
                              "(--config.overwrite=true) to replace it")
    return path


def prepare_output(path: str, overwrite: bool) -> str:
    """Check `path` may be written (`check_output`); returns its `.partial` sibling, emptied."""
    path = check_output(path, overwrite)
    tmp = path + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def tokenizer_config(tok: VocabTokenizer) -> dict[str, Any]:
    """The `tokenizer_config.json` for transformers, special tokens with their ids."""
    decoder = {str(i): {"content": p, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for i, p in sorted(tok.special.items())}
    for i, p in sorted(tok.user_defined.items()):
        decoder[str(i)] = {**decoder.get(str(i), {}), "content": p, "lstrip": False,
                           "normalized": False, "rstrip": False, "single_word": False,
                           "special": False}
    cfg: dict[str, Any] = {
        "added_tokens_decoder": decoder, "bos_token": tok.bos, "eos_token": tok.eos,
        "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30,
        "add_bos_token": tok.bos is not None, "add_eos_token": False,
    }
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    if tok.kind == BYTE_LEVEL:
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    else:
        cfg.update(tokenizer_class="LlamaTokenizerFast", unk_token=tok.unk, legacy=True,
                   add_prefix_space=None, pad_token=None)
    return cfg


def write_tokenizer_files(tok: VocabTokenizer, directory: str) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ tokenizer.model)."""
    os.makedirs(directory, exist_ok=True)
    written = []

    def dump(name: str, obj: Any) -> None:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            if name == "tokenizer.json":
                f.write(dumps(obj))
            else:
                json.dump(obj, f, ensure_ascii=False, indent=2)
        written.append(name)

    dump("tokenizer.json", tok.to_json())
    dump("tokenizer_config.json", tokenizer_config(tok))
    special_map = {k: v for k, v in (("bos_token", tok.bos), ("eos_token", tok.eos),
                                     ("unk_token", tok.unk)) if v}
    dump("special_tokens_map.json", special_map)
    if tok.sp_proto is not None:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(tok.sp_proto.SerializeToString())
        written.append("tokenizer.model")
    return written


def save_tokenizer(tok: VocabTokenizer, path: str, meta: dict[str, Any] | None = None,
                   overwrite: bool = False) -> str:
    """Write a tokenizer directory atomically, with `vocab.json` (how it was made)."""
    tmp = prepare_output(path, overwrite)
    write_tokenizer_files(tok, tmp)
    with open(os.path.join(tmp, VOCAB_META), "w", encoding="utf-8") as f:
        json.dump({"format": "lepjax-vocab", "kind": tok.kind, "vocab_size": tok.vocab_size,
                   **(meta or {})}, f, ensure_ascii=False, indent=2)
    return files.commit_dir(tmp, os.path.abspath(path))


def read_vocab_meta(directory: str) -> dict[str, Any]:
    """The `vocab.json` of a directory written by `save_tokenizer` ({} when absent)."""
    path = os.path.join(directory, VOCAB_META)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)

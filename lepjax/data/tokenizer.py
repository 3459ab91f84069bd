"""Text tokenizers for data preparation: Hugging Face `tokenizer.json` or SentencePiece `.model`.

`load_tokenizer(path)` accepts either file, or a model/tokenizer directory holding one (a
`tokenizer.json` is preferred; a tokenizer written by `lepjax vocab` is a `tokenizer.json`).
BOS/EOS ids come from `tokenizer_config.json` next to the file when present, else from the
tokenizer's own conventions (`<s>`/`</s>`, `<|begin_of_text|>`/`<|end_of_text|>`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>")
EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")


@dataclass
class TextTokenizer:
    """A tokenizer with the few operations data preparation needs (picklable by path)."""

    path: str
    kind: str  # "hf" | "sentencepiece"
    bos_id: int | None = None
    eos_id: int | None = None
    _impl: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        return {"path": self.path, "kind": self.kind, "bos_id": self.bos_id, "eos_id": self.eos_id}

    def __setstate__(self, state):
        self.__dict__.update(state, _impl=None)

    @property
    def impl(self):
        if self._impl is None:
            if self.kind == "hf":
                from tokenizers import Tokenizer

                self._impl = Tokenizer.from_file(self.path)
            else:
                import sentencepiece as spm

                self._impl = spm.SentencePieceProcessor(model_file=self.path)
        return self._impl

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        if self.kind == "hf":
            return self.impl.get_vocab_size(with_added_tokens=True)
        return self.impl.get_piece_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        if self.kind == "hf":
            return [e.ids for e in self.impl.encode_batch(texts, add_special_tokens=False)]
        return self.impl.encode(texts)

    def decode(self, ids) -> str:
        """Text of token ids (special tokens skipped)."""
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self.impl.decode(ids, skip_special_tokens=True)
        return self.impl.decode(ids)

    def vocabulary(self) -> list[str]:
        """Pieces by id."""
        if self.kind == "hf":
            vocab = self.impl.get_vocab(with_added_tokens=True)
            pieces = [""] * (max(vocab.values()) + 1)
            for piece, i in vocab.items():
                pieces[i] = piece
            return pieces
        return [self.impl.id_to_piece(i) for i in range(self.impl.get_piece_size())]

    def token_byte_lengths(self):
        """UTF-8 bytes each token id stands for in decoded text (0 for special tokens).

        SentencePiece-style pieces count "▁" as a space and byte-fallback pieces `<0xNN>` as one
        byte; byte-level BPE pieces count one byte per character. Summed over a text's tokens,
        this is the text's byte length (plus one for SentencePiece's leading-space marker), the
        denominator of bits per byte.
        """
        import numpy as np

        pieces = self.vocabulary()
        out = np.zeros(len(pieces), np.int32)
        if self.kind == "sentencepiece":
            sp = self.impl
            for i, piece in enumerate(pieces):
                if sp.is_control(i) or sp.is_unknown(i):
                    continue
                out[i] = 1 if sp.is_byte(i) else len(piece.replace("\u2581", " ").encode())
            return out
        spec = json.loads(self.impl.to_str())
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        for i, piece in enumerate(pieces):
            if i in special or not piece:
                continue
            if byte_level:
                out[i] = len(piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out[i] = 1
            else:
                out[i] = len(piece.replace("\u2581", " ").encode())
        return out

    def fingerprint(self) -> str:
        """A hash of the vocabulary (pieces by id) and BOS/EOS: equal vocabularies, equal hashes."""
        h = hashlib.sha256()
        h.update(json.dumps([self.bos_id, self.eos_id]).encode())
        for piece in self.vocabulary():
            h.update(piece.encode("utf-8", "surrogatepass") + b"\x00")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What metadata.json records about the tokenizer."""
        return {"path": os.path.abspath(self.path), "kind": self.kind,
                "fingerprint": self.fingerprint(), "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id}


def _special_from_config(directory: str) -> dict[str, str]:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    out = {}
    for key in ("bos_token", "eos_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def load_tokenizer(path: str) -> TextTokenizer:
    """Load a tokenizer file or a directory holding `tokenizer.json` or `tokenizer.model`."""
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer {path!r} does not exist")
    if path.endswith(".json"):
        tok = TextTokenizer(path, "hf")
        try:
            tok.impl
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
    else:
        tok = TextTokenizer(path, "sentencepiece")
        try:
            tok.impl
        except Exception as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e}); for a tiktoken ranks file "
                             "(Llama 3) convert it with `lepjax vocab` to a tokenizer.json") from None
    special = _special_from_config(os.path.dirname(os.path.abspath(path)))
    if tok.kind == "sentencepiece":
        sp = tok.impl
        tok.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        tok.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
    else:
        vocab = tok.impl.get_vocab(with_added_tokens=True)
        bos = [special["bos_token"]] if "bos_token" in special else list(BOS_CANDIDATES)
        eos = [special["eos_token"]] if "eos_token" in special else list(EOS_CANDIDATES)
        tok.bos_id = next((vocab[t] for t in bos if t in vocab), None)
        tok.eos_id = next((vocab[t] for t in eos if t in vocab), None)
    return tok

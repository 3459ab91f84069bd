"""The editable BPE vocabulary of vocabulary work, on top of the runtime tokenizer.

    tok = load_vocab("path/to/model_dir")   # anything lepjax.tokenizer.load_tokenizer reads
    ids, offsets = tok.encode_with_offsets("Привет, мир")
    tok.pieces[ids[0]], tok.merges[:3], tok.decode(ids)
    bigger = tok.with_new_pieces(["▁Моск", "ва"], priority="after")

A `VocabTokenizer` holds the tokenizer.json document of its source (normalizer, pre-tokenizer,
decoder, post-processor and merge list kept verbatim), its pieces by id and its mergeable pieces
in priority order. Unchanged, it encodes with the runtime tokenizer's own `tokenizers` object, so
exactly as the source file does; extended, the document gets the new pieces and the inserted
merges (`lepjax.vocab.bpe.extend_merges`). For SentencePiece sources the protobuf is kept so an
extended `.model` can be written too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lepjax.tokenizer import convert
from lepjax.tokenizer import Tokenizer, load_tokenizer
from lepjax.tokenizer.convert import BYTE_LEVEL, SENTENCEPIECE
from lepjax.vocab import bpe


@dataclass
class VocabTokenizer:
    """A BPE vocabulary: pieces by id, priority order, merges, and the document it came from.

    kind: "sentencepiece" ("▁" spaces, `<0xNN>` byte fallback) or "byte_level" (Llama 3).
    special: special-token pieces by id (never produced from text, never merged).
    order: mergeable pieces, highest merge priority first.
    """

    kind: str
    pieces: list[str]
    order: list[str]
    merges: list[tuple[str, str]]
    special: dict[int, str]
    doc: dict = field(repr=False)
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pattern: str = convert.LLAMA3_PATTERN
    sp_proto: Any = None  # sentencepiece ModelProto (SentencePiece sources only)
    source: str = ""
    user_defined: dict[int, str] = field(default_factory=dict)
    chat_template: str | None = None

    # ---- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included)."""
        return len(self.pieces)

    @cached_property
    def piece_to_id(self) -> dict[str, int]:
        """Id of each piece."""
        return {p: i for i, p in enumerate(self.pieces)}

    @cached_property
    def merges_by_result(self) -> dict[str, list[tuple[str, str]]]:
        """Every merge (a, b), grouped by the piece a + b it makes."""
        out: dict[str, list[tuple[str, str]]] = {}
        for a, b in self.merges:
            out.setdefault(a + b, []).append((a, b))
        return out

    @property
    def bos_id(self) -> int | None:
        """Id of the BOS piece, or None."""
        return self.piece_to_id.get(self.bos) if self.bos else None

    @property
    def eos_id(self) -> int | None:
        """Id of the EOS piece, or None."""
        return self.piece_to_id.get(self.eos) if self.eos else None

    def surface(self, piece: str) -> str:
        """The text a piece stands for (a space for "▁"; bytes decoded with replacement)."""
        if self.kind == BYTE_LEVEL:
            return convert.piece_to_bytes(piece).decode("utf-8", errors="replace")
        if convert.is_byte_piece(piece):
            return bytes([int(piece[3:5], 16)]).decode("utf-8", errors="replace")
        return piece.replace(convert.SPACE, " ")

    # ---- encoding ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The Hugging Face tokenizer.json document of this vocabulary."""
        doc = dict(self.doc)
        model = dict(doc["model"])
        base_vocab: dict[str, int] = model["vocab"]
        added = [t for t in doc.get("added_tokens") or []
                 if t["id"] < len(self.pieces) and self.pieces[t["id"]] == t["content"]]
        have = {t["id"] for t in added}
        extra = {**self.user_defined, **self.special}
        added += [convert.added_token(p, i, i in self.special) for i, p in sorted(extra.items())
                  if i not in have]
        vocab = {}
        for i, p in enumerate(self.pieces):
            if base_vocab.get(p) == i or (i not in extra and i not in have):
                vocab[p] = i
        model["vocab"] = vocab
        model["merges"] = [[a, b] for a, b in self.merges]
        doc["model"] = model
        doc["added_tokens"] = sorted(added, key=lambda t: t["id"])
        return doc

    @cached_property
    def hf(self):
        """The `tokenizers.Tokenizer` of `to_json()`."""
        from tokenizers import Tokenizer as HFTokenizer

        return HFTokenizer.from_str(convert.dumps(self.to_json()))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS), encoded in parallel."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text`."""
        e = self.hf.encode(text, add_special_tokens=False)
        return e.ids, e.offsets

    def decode(self, ids) -> str:
        """Text of token ids (special tokens skipped)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def segment_piece(self, piece: str) -> list[int]:
        """This tokenizer's ids for a piece's text as it appears mid-text.

        The piece string goes straight to the BPE model, so a SentencePiece piece without a
        leading "▁" is segmented as the inside of a word (no dummy prefix is added) and a
        byte-level piece as one pre-token. Characters outside the vocabulary become byte-fallback
        pieces (SentencePiece) or the unknown piece.
        """
        return [t.id for t in self.hf.model.tokenize(piece)]

    # ---- derived vocabularies ---------------------------------------------------------------

    def with_new_pieces(self, new: list[str], priority: str) -> "VocabTokenizer":
        """A copy with `new` pieces appended (ids V, V+1, ...), merged before or after the old ones."""
        if priority not in ("before", "after"):
            raise ValueError(f"merge priority must be 'before' or 'after', got {priority!r}")
        clash = [p for p in new if p in self.piece_to_id]
        if clash:
            raise ValueError(f"new pieces already in the vocabulary: {clash[:5]}")
        order = new + self.order if priority == "before" else self.order + new
        proto = None
        if self.sp_proto is not None:
            proto = extend_sentencepiece_proto(self.sp_proto, new, priority)
        merges = bpe.extend_merges(self.merges, self.order, new, priority)
        return VocabTokenizer(self.kind, self.pieces + list(new), order, merges, dict(self.special),
                              self.doc, self.bos, self.eos, self.unk, self.pattern, proto,
                              self.source, dict(self.user_defined), self.chat_template)


def extend_sentencepiece_proto(proto, new: list[str], priority: str):
    """A copy of a SentencePiece ModelProto with `new` NORMAL pieces scored above or below the rest."""
    import numpy as np

    out = copy.deepcopy(proto)
    scores = [p.score for p in proto.pieces if p.type == convert.NORMAL]
    edge = min(scores) if priority == "after" else max(scores)
    # Scores are float32: step by at least the float32 spacing at the scores' magnitude.
    reach = abs(edge) + 2.0 * (len(new) + 1) * max(1.0, float(np.spacing(np.float32(abs(edge)))))
    step = max(1.0, float(np.spacing(np.float32(reach))) * 2)
    for i, piece in enumerate(new):
        score = edge - step * (i + 1) if priority == "after" else edge + step * (len(new) - i)
        p = out.pieces.add()
        p.piece, p.score, p.type = piece, score, convert.NORMAL
    return out


# ---- construction ----------------------------------------------------------------------------


def from_document(doc: dict, *, bos: str | None, eos: str | None, unk: str | None = None,
                  source: str = "", sp_proto: Any = None, chat_template: str | None = None,
                  hf: Any = None) -> VocabTokenizer:
    """A vocabulary from a tokenizer.json document holding a BPE model.

    `hf`, when given, is the `tokenizers.Tokenizer` of exactly this document (reused as is).
    """
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{source or 'tokenizer'}: model type {model.get('type')!r}; only BPE "
                         "tokenizers can be extended")
    text = convert.dumps([doc.get("pre_tokenizer"), doc.get("decoder")])
    kind = BYTE_LEVEL if "ByteLevel" in text else SENTENCEPIECE
    vocab: dict[str, int] = dict(model["vocab"])
    added = doc.get("added_tokens") or []
    for t in added:
        vocab.setdefault(t["content"], t["id"])
    pieces = [""] * (max(vocab.values()) + 1)
    for p, i in vocab.items():
        pieces[i] = p
    if "" in pieces:
        raise ValueError(f"{source}: token ids are not contiguous (id {pieces.index('')} is unused)")
    special = {t["id"]: t["content"] for t in added if t.get("special")}
    user = {t["id"]: t["content"] for t in added if not t.get("special")}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    skip = set(special.values()) | set(user.values())
    if kind == SENTENCEPIECE:
        skip |= {p for p in vocab if convert.is_byte_piece(p)}
    order = [p for p in bpe.order_from_merges(model["vocab"], merges) if p not in skip]
    pattern = convert.LLAMA3_PATTERN
    for pre in (doc.get("pre_tokenizer") or {}).get("pretokenizers", []):
        if pre.get("type") == "Split" and "Regex" in pre.get("pattern", {}):
            pattern = pre["pattern"]["Regex"]
    out = VocabTokenizer(kind, pieces, order, merges, special, doc, bos=bos, eos=eos, unk=unk,
                         pattern=pattern, sp_proto=sp_proto, source=source, user_defined=user,
                         chat_template=chat_template)
    if hf is not None:
        out.__dict__["hf"] = hf
    return out


def from_tokenizer(tok: Tokenizer) -> VocabTokenizer:
    """The editable vocabulary of a runtime tokenizer (same ids, same encoding)."""
    proto = (convert.read_sentencepiece_proto(tok.sentencepiece_model)
             if tok.sentencepiece_model else None)
    return from_document(tok.document(), bos=tok.bos, eos=tok.eos, unk=tok.unk, source=tok.path,
                         sp_proto=proto, chat_template=tok.chat_template, hf=tok.hf)


def from_sentencepiece_proto(proto, source: str = "") -> VocabTokenizer:
    """A vocabulary from a SentencePiece BPE ModelProto (e.g. one just trained)."""
    names = convert.sentencepiece_specials(proto)
    return from_document(convert.sentencepiece_document(proto, source), **names, source=source,
                         sp_proto=proto)


def load_vocab(path: str) -> VocabTokenizer:
    """The editable vocabulary of whatever `lepjax.tokenizer.load_tokenizer` reads at `path`."""
    return from_tokenizer(load_tokenizer(path))

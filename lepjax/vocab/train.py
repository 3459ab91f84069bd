"""Training tokenizers of a source tokenizer's own kind on target-language text.

SentencePiece sources (Llama 2, Mistral) get a SentencePiece BPE trained with the source's own
trainer settings (digit splitting, script and whitespace splitting, piece length, coverage), so
new pieces obey the same segmentation rules as the old ones. Byte-level sources (Llama 3) get a
byte-level BPE (Hugging Face `tokenizers` trainer) with the source's pre-tokenizer regex.

`auxiliary_merges` returns the trained merges in rank order, which vocabulary extension walks;
`train_replacement` returns a whole new `VocabTokenizer`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator, Sequence

from lepjax.tokenizer import convert
from lepjax.tokenizer.convert import SENTENCEPIECE
from lepjax.vocab.corpus import count_lines, iter_lines
from lepjax.vocab.tokenizer import VocabTokenizer, from_document, from_sentencepiece_proto

log = logging.getLogger("lepjax.vocab")

# SentencePiece trainer settings copied from the source model when it has them.
_SP_SETTINGS = ("character_coverage", "split_digits", "split_by_unicode_script", "split_by_number",
                "split_by_whitespace", "max_sentencepiece_length", "allow_whitespace_only_pieces",
                "treat_whitespace_as_suffix")
_SP_DEFAULTS = dict(character_coverage=0.99995, split_digits=True, split_by_unicode_script=True,
                    split_by_number=True, split_by_whitespace=True, max_sentencepiece_length=16,
                    allow_whitespace_only_pieces=True, treat_whitespace_as_suffix=False)


def _progress(lines: Iterator[str], total: int, desc: str, progress: bool) -> Iterator[str]:
    if not progress:
        return lines
    from tqdm import tqdm

    return iter(tqdm(lines, total=total, desc=desc, unit=" lines", mininterval=1.0))


def train_sentencepiece(source: VocabTokenizer, files: Sequence[str], vocab_size: int,
                        max_lines: int = 0, model_type: str = "bpe", byte_fallback: bool = False,
                        progress: bool = True):
    """A SentencePiece ModelProto trained on `files` with the source's trainer settings."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    settings = dict(_SP_DEFAULTS)
    ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    if source.sp_proto is not None:
        spec = source.sp_proto.trainer_spec
        settings.update({k: getattr(spec, k) for k in _SP_SETTINGS if spec.HasField(k)})
        ids = dict(unk_id=spec.unk_id, bos_id=spec.bos_id, eos_id=spec.eos_id, pad_id=spec.pad_id)
        norm = source.sp_proto.normalizer_spec
        settings.update(add_dummy_prefix=norm.add_dummy_prefix,
                        remove_extra_whitespaces=norm.remove_extra_whitespaces)
    n = count_lines(files, max_lines) if progress else 0
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_progress(iter_lines(files, max_lines), n, "training tokenizer", progress),
        model_writer=writer, model_type=model_type, vocab_size=vocab_size, hard_vocab_limit=False,
        byte_fallback=byte_fallback, normalization_rule_name="identity", input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=os.cpu_count() or 1, minloglevel=2,
        max_sentence_length=1 << 16, **ids, **settings)
    proto = pb.ModelProto()
    proto.ParseFromString(writer.getvalue())
    return proto


def _sentencepiece_merges(proto) -> list[tuple[str, str]]:
    """Merges of a trained SentencePiece BPE: each multi-character piece, by score, split in two.

    The split chosen is the one whose later-created part is created earliest (both parts must
    exist before the piece; single characters are the initial alphabet).
    """
    normal = sorted((-p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1)
    rank: dict[str, int] = {}
    merges = []
    for r, (_, i) in enumerate(normal):
        piece = proto.pieces[i].piece
        if len(piece) == 1:
            rank[piece] = -1
    for r, (_, i) in enumerate(normal):
        piece = proto.pieces[i].piece
        if len(piece) == 1:
            continue
        best = None
        for j in range(1, len(piece)):
            a, b = piece[:j], piece[j:]
            if a in rank and b in rank:
                key = (max(rank[a], rank[b]), j)
                best = min(best, (key, a, b)) if best else (key, a, b)
        if best is not None:
            merges.append((best[1], best[2]))
            rank[piece] = r
    return merges


def _byte_level_trainer(source: VocabTokenizer, vocab_size: int, min_frequency: int,
                        progress: bool):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(source.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=progress, special_tokens=[])
    return tok, trainer


def _train_byte_level(source: VocabTokenizer, files: Sequence[str], vocab_size: int,
                      max_lines: int, min_frequency: int, progress: bool) -> dict:
    tok, trainer = _byte_level_trainer(source, vocab_size, min_frequency, progress)
    n = count_lines(files, max_lines)
    tok.train_from_iterator(iter_lines(files, max_lines), trainer, length=n)
    return json.loads(tok.to_str())["model"]


def _merge_pairs(raw) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]


def auxiliary_merges(source: VocabTokenizer, files: Sequence[str], vocab_size: int,
                     max_lines: int = 0, min_frequency: int = 2,
                     progress: bool = True) -> tuple[list[tuple[str, str]], int]:
    """Train the auxiliary tokenizer; returns (its merges in rank order, its vocabulary size)."""
    if source.kind == SENTENCEPIECE:
        proto = train_sentencepiece(source, files, vocab_size, max_lines, "bpe", progress=progress)
        return _sentencepiece_merges(proto), len(proto.pieces)
    model = _train_byte_level(source, files, vocab_size, max_lines, min_frequency, progress)
    return _merge_pairs(model["merges"]), len(model["vocab"])


def train_replacement(source: VocabTokenizer, files: Sequence[str], vocab_size: int,
                      max_lines: int = 0, model_type: str = "bpe", min_frequency: int = 2,
                      progress: bool = True) -> VocabTokenizer:
    """A wholly new tokenizer of the source's kind, `vocab_size` ids in all, special tokens kept.

    SentencePiece: unknown/BOS/EOS keep their ids and byte fallback is kept if the source had
    it. Byte-level: the source's special tokens follow the trained pieces, in their order.
    """
    if model_type != "bpe":
        raise ValueError(f"replacement model {model_type!r} is not supported; use 'bpe'")
    if source.kind == SENTENCEPIECE:
        byte_fallback = any(len(p) == 6 and p.startswith("<0x") for p in source.pieces[:512])
        proto = train_sentencepiece(source, files, vocab_size, max_lines, model_type,
                                    byte_fallback=byte_fallback, progress=progress)
        new = from_sentencepiece_proto(proto)
    else:
        specials = [source.special[i] for i in sorted(source.special)]
        model = _train_byte_level(source, files, vocab_size - len(specials), max_lines,
                                  min_frequency, progress)
        vocab = dict(model["vocab"])
        added = [convert.added_token(s, len(vocab) + i) for i, s in enumerate(specials)]
        vocab.update({t["content"]: t["id"] for t in added})
        doc = convert.byte_level_json(vocab, _merge_pairs(model["merges"]), added, source.bos,
                                      source.pattern)
        new = from_document(doc, bos=source.bos, eos=source.eos)
    if new.vocab_size != vocab_size:
        log.warning("replacement vocabulary has %d ids, not the %d asked for (the corpus is too "
                    "small for more)", new.vocab_size, vocab_size)
    return new

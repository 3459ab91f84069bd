"""Embedding rows for a new vocabulary, from the source model's rows (input embeddings and LM head alike).

Every row of the new matrix is one of:
  - copied: the piece exists in the source vocabulary (all old ids, for an extension);
  - a convex combination of source rows (`mean`, `merge`, `align`): `RowPlan.weights`;
  - the mean of all source rows (pieces nothing else maps);
  - random (`random`): per dimension, normal with the source rows' mean and standard deviation.

Methods (METHODS.md §1):
  mean:  mean of the rows of the source segmentation of the piece's text as it appears mid-text.
  merge: recursive over the new tokenizer's merges: t = a + b -> mean(w_a, w_b), expanding new
         parts; several merges yielding t are averaged; pieces no merge makes fall back to mean.
  align: stream the corpus through both tokenizers with character offsets; each occurrence of a
         new piece votes for the tuple of source tokens overlapping its span; the row is
         sum_tuple p(tuple) * mean(rows of tuple). Pieces never seen fall back to merge. The
         counts are one engine task per corpus chunk, added exactly (`align_counts`).
Statistics for `random` and the all-rows mean use the source rows of non-special pieces.
Combinations are computed in float64 and cast to the checkpoint's dtype once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepjax.data.engine import Engine
from lepjax.vocab.config import INIT_METHODS
from lepjax.vocab.corpus import Chunk, chunk_batches, plan_chunks, progress_bar
from lepjax.vocab.tokenizer import VocabTokenizer

Weights = dict[int, float]


@dataclass
class RowPlan:
    """How each row of the new embedding matrix is made (see module docstring)."""

    vocab_size: int
    copy_from: np.ndarray  # [vocab_size] source id, or -1
    weights: dict[int, Weights] = field(default_factory=dict)
    fallback: list[int] = field(default_factory=list)  # mean of all source rows
    random: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # rows per origin, for the summary

    def targets(self) -> np.ndarray:
        """Ids that are not copied."""
        return np.nonzero(self.copy_from < 0)[0]


def _mix(parts: Sequence[Weights]) -> Weights:
    out: dict[int, float] = {}
    for p in parts:
        for i, w in p.items():
            out[i] = out.get(i, 0.0) + w / len(parts)
    return out


class _Planner:
    def __init__(self, source: VocabTokenizer, new: VocabTokenizer):
        self.source, self.new = source, new
        special = set(source.special.values())
        self.src_ids = {p: i for p, i in source.piece_to_id.items() if p not in special}
        self.unk = source.piece_to_id.get(source.unk) if source.unk else None
        self.memo: dict[str, Weights | None] = {}

    def mean(self, piece: str) -> Weights | None:
        ids = self.source.segment_piece(piece)
        if not ids or (self.unk is not None and self.unk in ids):
            return None
        c = Counter(ids)
        return {i: n / len(ids) for i, n in c.items()}

    def merge(self, piece: str) -> Weights | None:
        if piece in self.src_ids:
            return {self.src_ids[piece]: 1.0}
        if piece in self.memo:
            return self.memo[piece]
        parts = []
        for a, b in self.new.merges_by_result.get(piece, ()):
            wa, wb = self.merge(a), self.merge(b)
            if wa is not None and wb is not None:
                parts.append(_mix([wa, wb]))
        out = _mix(parts) if parts else self.mean(piece)
        self.memo[piece] = out
        return out


def copy_map(source: VocabTokenizer, new: VocabTokenizer) -> np.ndarray:
    """For each new id, the source id of the same piece (special tokens too), or -1."""
    return np.array([source.piece_to_id.get(p, -1) for p in new.pieces], np.int64)


def _count_alignments(counts: dict[int, Counter], source_hf: Any, new_hf: Any,
                      is_target: np.ndarray, batch: list[str]) -> None:
    """Add the source-token tuples covering each target piece of `batch`'s lines to `counts`."""
    new_enc = new_hf.encode_batch(batch, add_special_tokens=False)
    src_enc = source_hf.encode_batch(batch, add_special_tokens=False)
    for ne, se in zip(new_enc, src_enc):
        nids = np.asarray(ne.ids, np.int64)
        hits = np.nonzero(is_target[nids])[0] if len(nids) else ()
        if not len(hits):
            continue
        noff = np.asarray(ne.offsets, np.int64)[hits]
        soff = np.asarray(se.offsets, np.int64)
        sids = np.asarray(se.ids, np.int64)
        s, e = noff[:, :1], noff[:, 1:]
        st, en = soff[None, :, 0], soff[None, :, 1]
        # Overlapping source tokens; zero-width ones (a bare prefix marker) inside the span too.
        cover = ((st < e) & (en > s)) | ((st == en) & (st >= s) & (st < e))
        for row, j in enumerate(hits):
            tup = tuple(sids[cover[row]].tolist())
            if tup:
                counts.setdefault(int(nids[j]), Counter())[tup] += 1


def align_chunk(source_hf: Any, new_hf: Any, is_target: np.ndarray, chunk: Chunk,
                batch_size: int) -> dict[int, Counter]:
    """Engine task: the alignment counts of one corpus chunk (which it reads itself)."""
    counts: dict[int, Counter] = {}
    for batch in chunk_batches(chunk, batch_size):
        _count_alignments(counts, source_hf, new_hf, is_target, batch)
    return counts


def align_counts(source: VocabTokenizer, new: VocabTokenizer, targets: np.ndarray,
                 files: Sequence[str], max_lines: int = 0, batch_size: int = 1000,
                 progress: bool = True, engine: Engine | None = None) -> dict[int, Counter]:
    """For each target id, how often each tuple of source tokens covers its occurrences.

    One `engine` task per corpus chunk (None: in this process); the chunks' counts are added in
    corpus order, so the result (down to the order of each Counter) is that of one pass over the
    corpus, whatever the engine and the number of workers."""
    is_target = np.zeros(new.vocab_size, bool)
    is_target[targets] = True
    chunks = plan_chunks(files, max_lines)
    counts: dict[int, Counter] = {}
    pending: dict[int, dict[int, Counter]] = {}
    added = 0
    with progress_bar(progress, sum(c[2] - c[1] for c in chunks), "align: counting") as bar:
        for i, got in (engine or Engine(None, retries=0)).map(
                align_chunk, [(c, batch_size) for c in chunks],
                shared=(source.hf, new.hf, is_target)):
            pending[i] = got
            bar.update(chunks[i][2] - chunks[i][1])
            while added in pending:  # in corpus order; later chunks wait here
                for t, c in pending.pop(added).items():
                    counts.setdefault(t, Counter()).update(c)
                added += 1
    return counts


def plan_rows(source: VocabTokenizer, new: VocabTokenizer, method: str,
              corpus: Sequence[str] = (), max_lines: int = 0, batch_size: int = 1000,
              progress: bool = True, engine: Engine | None = None) -> RowPlan:
    """Decide every row of the new matrix (copies, weights, fallbacks) for `method`; align's
    corpus statistics are counted on `engine` (None: in this process)."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init method {method!r}; choose one of {', '.join(INIT_METHODS)}")
    if new.kind != source.kind:
        raise ValueError(f"the new tokenizer is {new.kind} but the source is {source.kind}")
    plan = RowPlan(new.vocab_size, copy_map(source, new))
    targets = plan.targets()
    plan.counts = {"copied": int(new.vocab_size - len(targets))}
    if method == "random":
        plan.random = targets.tolist()
        plan.counts["random"] = len(targets)
        return plan
    planner = _Planner(source, new)
    aligned: dict[int, Counter] = {}
    if method == "align":
        if not corpus:
            raise ValueError("init.method=align needs a corpus (set the corpus key)")
        aligned = align_counts(source, new, targets, corpus, max_lines, batch_size, progress,
                               engine)
    origin = Counter()
    for t in targets.tolist():
        piece = new.pieces[t]
        w: Weights | None = None
        if t in aligned:
            c = aligned[t]
            total = sum(c.values())
            w = {}
            for tup, n in c.items():
                for i in tup:
                    w[i] = w.get(i, 0.0) + n / total / len(tup)
            origin["align"] += 1
        elif method in ("align", "merge"):
            w = planner.merge(piece)
            origin["merge" if new.merges_by_result.get(piece) else "mean"] += w is not None
        else:
            w = planner.mean(piece)
            origin["mean"] += w is not None
        if w is None or t in new.special:
            plan.fallback.append(t)
            origin["mean_of_all_rows"] += 1
        else:
            plan.weights[t] = w
    plan.counts.update(origin)
    return plan


def source_row_stats(E: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension float64 mean and standard deviation of rows `rows` of E."""
    mu = np.zeros(E.shape[1], np.float64)
    sq = np.zeros(E.shape[1], np.float64)
    for c in range(0, len(rows), 8192):
        chunk = E[rows[c:c + 8192]].astype(np.float64)
        mu += chunk.sum(0)
        sq += (chunk * chunk).sum(0)
    mu /= len(rows)
    return mu, np.sqrt(np.maximum(sq / len(rows) - mu * mu, 0.0))


def weights_matrix(plan: RowPlan, num_source: int):
    """The plan's combinations as a CSR matrix [len(ids), num_source] and the ids of its rows."""
    import scipy.sparse as sp

    ids = sorted(plan.weights)
    indptr, cols, vals = [0], [], []
    for t in ids:
        w = plan.weights[t]
        cols.extend(w.keys())
        vals.extend(w.values())
        indptr.append(len(cols))
    W = sp.csr_matrix((np.asarray(vals, np.float64), np.asarray(cols, np.int64),
                       np.asarray(indptr, np.int64)), shape=(len(ids), num_source))
    return W, np.asarray(ids, np.int64)


def build_matrix(E: np.ndarray, plan: RowPlan, rows_out: int, stat_rows: np.ndarray,
                 seed: int = 0, column_chunk: int = 512) -> np.ndarray:
    """The new matrix [rows_out, hidden] (E's dtype): copies, combinations, fallbacks, random rows.

    Rows from `plan.vocab_size` to `rows_out` (padding) are zero.
    """
    if rows_out < plan.vocab_size:
        raise ValueError(f"rows_out={rows_out} < new vocabulary size {plan.vocab_size}")
    out = np.zeros((rows_out, E.shape[1]), E.dtype)
    old = np.nonzero(plan.copy_from >= 0)[0]
    out[old] = E[plan.copy_from[old]]
    W, ids = weights_matrix(plan, E.shape[0])
    if len(ids):
        for c in range(0, E.shape[1], column_chunk):
            block = np.asarray(W @ E[:, c:c + column_chunk].astype(np.float64))
            out[ids, c:c + column_chunk] = block.astype(E.dtype)
    if plan.fallback or plan.random:
        mu, sd = source_row_stats(E, stat_rows)
        if plan.fallback:
            out[plan.fallback] = mu.astype(E.dtype)
        if plan.random:
            rng = np.random.default_rng(seed)
            out[plan.random] = rng.normal(mu, sd, (len(plan.random), E.shape[1])).astype(E.dtype)
    return out

"""The Grain loader: prepared shards -> packed rows -> batches, deterministic and resumable.

Per dataset: a global shuffle of its records with a seed (reshuffled each epoch), repeated over
epochs, then sliced for this process (`records[process_index::process_count]`, so processes read
disjoint records whose union is every record once per epoch); documents longer than a row are
split into row-sized pieces; pieces are packed first-fit into rows of `seq_len` tokens. Datasets
are mixed piece by piece with the given weights, so token shares follow the weights; every
dataset is taken whole, and one that runs out before the others is repeated (reshuffled) to keep
its share: with `num_epochs` > 0 the mixture ends once *every* dataset has been read that many
times, so the smaller ones make more epochs (`Loader.epochs()` reports them). Rows are batched.
Each row holds

    tokens      int32 [seq_len]   input ids (0 in padding)
    targets     int32 [seq_len]   the next token of the same document (0 where there is none)
    loss_mask   float32 [seq_len] 1 where `targets` is trained: within a document, and for
                                  prompt/target records only where the target token is a target
    segment_ids int32 [seq_len]   1, 2, ... per document in the row, 0 for padding
    positions   int32 [seq_len]   position within the document (restarts at 0)

The iterator's state (`get_state` / `set_state`) is a small JSON-serialisable dict; restoring it
yields exactly the batches that would have followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from lepjax.data import records

FEATURES = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def data_section() -> ConfigDict:
    """The `data` section of training configs.

    Keys:
      paths: prepared dataset directories (`lepjax prepare` outputs).
      weights: mixture weight per dataset (positive; normalised); empty = equal weights.
      seq_len: tokens per packed row.
      batch_size: global batch size in rows (divided evenly among processes).
      seed: shuffle seed.
      shuffle: shuffle records globally (reshuffled every epoch).
      num_epochs: passes over each dataset; 0 = repeat forever.
      packing_bins: rows filled at once by first-fit packing (more bins, less padding).
      streams: independent packing streams making up the global batch (0 = one per process);
        fix it (e.g. 8) to get the same batches for any process count that divides it.
      eval_paths: held-out dataset directories for evaluation.
      eval_fraction: instead of eval_paths, hold out this share of every dataset's records (a
        fixed seeded choice, the same on every run and resume) for evaluation; training reads
        the others only. 0 = no held-out split.
    """
    return ConfigDict(dict(paths=(), weights=(), seq_len=2048, batch_size=64, seed=0,
                           shuffle=True, num_epochs=0, packing_bins=16, streams=0, eval_paths=(),
                           eval_fraction=0.0))


def _shuffle_fn(n: int, seed: int):
    """index -> shuffled index within an epoch of n records (a bijection, O(1) memory)."""
    try:
        from grain._src.python.experimental.index_shuffle.python import (
            index_shuffle_module as index_shuffle,
        )

        return lambda i: index_shuffle.index_shuffle(i, max_index=n - 1, seed=seed, rounds=4)
    except ImportError:  # fall back to a materialised permutation
        perm = np.random.default_rng(seed).permutation(n)
        return lambda i: int(perm[i])


class _DocStream:
    """One dataset's records for one process, in shuffled order, cut into row-sized pieces.

    The k-th record this process reads is global record g = process_index + k * process_count
    (epoch g // n, shuffled within the epoch with seed + epoch). The cursor is (k, piece).
    With a held-out share (`spec.holdout`), the records are split once by a fixed permutation:
    its first round(holdout * records) positions are the "eval" split, the rest "train"; n
    counts the records of this stream's split.
    """

    def __init__(self, spec: "PackedRows", index: int):
        self.spec = spec
        self.source = spec.sources[index]
        total = len(self.source)
        self.seed = spec.seed + 7919 * index
        self._split = None
        self._offset, self.n = 0, total
        if spec.holdout:
            held = round(spec.holdout * total)
            if not 0 < held < total:
                raise ValueError(f"data.eval_fraction={spec.holdout} holds out {held} of the "
                                 f"{total} records of dataset {index}: nothing left to "
                                 f"{'evaluate' if not held else 'train'} on")
            self._split = _shuffle_fn(total, (7919 * index + 104729) % 2**32)
            self._offset, self.n = (0, held) if spec.split == "eval" else (held, total - held)
        self.end = spec.num_epochs * self.n if spec.num_epochs > 0 else None
        self.k = self.piece = 0
        self._shuffler: tuple[int, Any] | None = None
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _global(self, k: int) -> int:
        return self.spec.process_index + k * self.spec.process_count

    def _record_index(self, g: int) -> int:
        epoch, pos = divmod(g, self.n)
        if self.spec.shuffle:
            if self._shuffler is None or self._shuffler[0] != epoch:
                self._shuffler = (epoch, _shuffle_fn(self.n, (self.seed + epoch) % 2**32))
            pos = self._shuffler[1](pos)
        return pos if self._split is None else int(self._split(self._offset + pos))

    def finished(self) -> bool:
        """Whether this stream has read its `num_epochs` (it is still readable: a mixture
        repeats it while other datasets are unfinished)."""
        return self.end is not None and self._global(self.k) >= self.end

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        """The current piece (tokens, loss mask)."""
        k, L = self.k, self.spec.seq_len
        if k not in self._cache:
            ks = list(range(k, k + self.spec.read_block))
            blobs = self.source.__getitems__([self._record_index(self._global(j)) for j in ks])
            self._cache = {j: records.decode(b) for j, b in zip(ks, blobs)}
        rec = self._cache[k]
        start = self.piece * L
        return rec["tokens"][start:start + L], rec["loss_mask"][start:start + L]

    def advance(self, piece_len: int) -> None:
        if (self.piece + 1) * self.spec.seq_len < len(self._cache[self.k]["tokens"]):
            self.piece += 1
        else:
            self.k, self.piece = self.k + 1, 0


class _PackedRowIterator(grain.DatasetIterator):
    """Mixes the datasets' pieces by tokens and packs them first-fit into rows.

    The next piece always comes from the dataset furthest below its share of the tokens taken so
    far (weight * total - taken), so token shares follow the weights whatever the documents'
    lengths. Packing works in rounds: pieces fill `bins` rows first-fit until one does not fit
    anywhere; the round's rows are emitted and the next round starts with that piece. The state
    is the streams' cursors and token counts at the round's start plus the rows already emitted
    from the round, so restoring re-packs the round identically.
    """

    def __init__(self, spec: "PackedRows"):
        super().__init__()
        self.spec = spec
        self.streams = [_DocStream(spec, i) for i in range(len(spec.sources))]
        self.taken = [0] * len(self.streams)
        self._round_state = self._cursor()
        self._rows: list[dict[str, np.ndarray]] = []
        self._emitted = 0

    def _cursor(self) -> dict[str, Any]:
        return {"streams": [[s.k, s.piece] for s in self.streams], "taken": list(self.taken)}

    def _set_cursor(self, cursor: dict[str, Any]) -> None:
        for s, (k, piece) in zip(self.streams, cursor["streams"]):
            s.k, s.piece = int(k), int(piece)
        self.taken = [int(t) for t in cursor["taken"]]

    def _pick(self) -> tuple[int, tuple[np.ndarray, np.ndarray]] | None:
        """The next piece: from the dataset furthest below its token share; None once every
        dataset has read its epochs (finished ones are repeated until then)."""
        if all(s.finished() for s in self.streams):
            return None
        total = sum(self.taken)
        best = None
        for i, s in enumerate(self.streams):
            deficit = self.spec.weights[i] * total - self.taken[i]
            if best is None or deficit > best[0]:
                best = (deficit, i)
        return best[1], self.streams[best[1]].peek()

    def _pack_round(self) -> None:
        L, B = self.spec.seq_len, self.spec.bins
        tokens = np.zeros((B, L), np.int32)
        mask = np.zeros((B, L), np.uint8)
        seg = np.zeros((B, L), np.int32)
        pos = np.zeros((B, L), np.int32)
        fill = [0] * B
        count = [0] * B
        ramp = np.arange(L, dtype=np.int32)
        while True:
            picked = self._pick()
            if picked is None:
                break
            i, (piece_tokens, piece_mask) = picked
            n = len(piece_tokens)
            b = next((j for j in range(B) if fill[j] + n <= L), None)
            if b is None:
                break
            f = fill[b]
            tokens[b, f:f + n] = piece_tokens
            mask[b, f:f + n] = piece_mask
            count[b] += 1
            seg[b, f:f + n] = count[b]
            pos[b, f:f + n] = ramp[:n]
            fill[b] += n
            self.taken[i] += n
            self.streams[i].advance(n)
        used = [j for j in range(B) if fill[j] > 0]
        if not used:
            raise StopIteration
        tokens, mask, seg, pos = tokens[used], mask[used], seg[used], pos[used]
        same_doc = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
        targets = np.zeros_like(tokens)
        targets[:, :-1] = np.where(same_doc, tokens[:, 1:], 0)
        loss = np.zeros(tokens.shape, np.float32)
        loss[:, :-1] = same_doc & (mask[:, 1:] != 0)
        self._rows = [{"tokens": tokens[j], "targets": targets[j], "loss_mask": loss[j],
                       "segment_ids": seg[j], "positions": pos[j]} for j in range(len(used))]

    def __next__(self) -> dict[str, np.ndarray]:
        if self._emitted >= len(self._rows):
            self._round_state = self._cursor()  # the next round starts where the last stopped
            self._rows, self._emitted = [], 0
            self._pack_round()
        row = self._rows[self._emitted]
        self._emitted += 1
        return row

    def get_state(self) -> dict[str, Any]:
        return {**self._round_state, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._set_cursor(state)
        self._round_state = self._cursor()
        self._rows, self._emitted = [], 0
        if int(state["emitted"]):
            self._pack_round()
            self._emitted = int(state["emitted"])


class PackedRows(grain.IterDataset):
    """Packed rows of a token-weighted mixture of prepared datasets, for one process."""

    def __init__(self, datasets: Sequence[records.Dataset], *, seq_len: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int = 0, process_index: int = 0,
                 process_count: int = 1, bins: int = 16, weights: Sequence[float] = (),
                 read_block: int = 256, holdout: float = 0.0, split: str = "train"):
        super().__init__()
        self.sources = [grain.sources.ArrayRecordDataSource(ds.shard_paths) for ds in datasets]
        weights = list(weights) or [1.0] * len(datasets)
        self.weights = [w / float(sum(weights)) for w in weights]
        self.seq_len, self.seed, self.shuffle, self.num_epochs = seq_len, seed, shuffle, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.bins, self.read_block = bins, read_block
        if split not in ("train", "eval"):
            raise ValueError(f"split {split!r}: expected 'train' or 'eval'")
        if not 0 <= holdout < 1:
            raise ValueError(f"data.eval_fraction={holdout}: expected 0 <= f < 1")
        self.holdout, self.split = holdout, split

    def __iter__(self) -> _PackedRowIterator:
        return _PackedRowIterator(self)


class Loader:
    """Batches of packed rows for this process, with a saveable position.

    The global batch is made of `streams` independent packing streams (stream j reads records
    j, j + streams, ... of the shuffled order), each contributing batch_size / streams rows.
    Process p runs the streams j with j % process_count == p, so the global batch, and hence the
    losses, are the same for any process count that divides `streams`; the default
    (`streams=0`) is one stream per process.

    `next(loader)` returns the process-local batch as NumPy arrays ([batch_size / process_count,
    seq_len] each); `loader.global_batch(batch, mesh)` makes global `jax.Array`s of them. The
    state maps stream ids to positions, so per-process states merge into one global state.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        seq_len: int,
        batch_size: int,
        weights: Sequence[float] = (),
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int = 0,
        packing_bins: int = 16,
        streams: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        vocab_size: int | None = None,
        fingerprint: str | None = None,
        holdout: float = 0.0,
        split: str = "train",
    ):
        if not paths:
            raise ValueError("no datasets given (data.paths is empty)")
        weights = list(weights) or [1.0] * len(paths)
        if len(weights) != len(paths):
            raise ValueError(f"{len(weights)} mixture weights for {len(paths)} datasets")
        for p, w in zip(paths, weights):
            if not w > 0:
                raise ValueError(f"mixture weight {w} for {p} is not positive")
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        streams = streams or process_count
        if streams % process_count:
            raise ValueError(f"data.streams={streams} is not a multiple of the {process_count} "
                             "processes")
        if batch_size % streams:
            raise ValueError(f"batch_size {batch_size} is not divisible by data.streams={streams}")
        self.datasets = [records.open_dataset(p, vocab_size=vocab_size, fingerprint=fingerprint)
                         for p in paths]
        self.seq_len, self.batch_size = seq_len, batch_size
        self.local_batch_size = batch_size // process_count
        self.rows_per_stream = batch_size // streams
        self._num_streams = streams
        self._iters = {
            j: iter(PackedRows(self.datasets, seq_len=seq_len, seed=seed, shuffle=shuffle,
                               num_epochs=num_epochs, process_index=j, process_count=streams,
                               bins=packing_bins, weights=weights, holdout=holdout, split=split))
            for j in range(process_index, streams, process_count)}
        self.holdout, self.split = holdout, split

    @classmethod
    def from_config(cls, section: Any, paths: Sequence[str] | None = None, **kwargs) -> "Loader":
        """A loader for a config `data` section (see `data_section`)."""
        return cls(list(paths if paths is not None else section.paths), seq_len=section.seq_len,
                   batch_size=section.batch_size, weights=list(section.weights),
                   seed=section.seed, shuffle=section.shuffle, num_epochs=section.num_epochs,
                   packing_bins=section.packing_bins, streams=section.get("streams", 0),
                   holdout=section.get("eval_fraction", 0.0), **kwargs)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The next process-local batch. Once the data ends (`num_epochs` > 0) the last, partial
        batch is filled up with empty rows (no tokens, no loss), so every record is read."""
        rows = []
        for it in self._iters.values():
            for _ in range(self.rows_per_stream):
                try:
                    rows.append(next(it))
                except StopIteration:
                    break
        if not rows:
            raise StopIteration
        empty = {k: np.zeros_like(v) for k, v in rows[0].items()}
        rows += [empty] * (self.local_batch_size - len(rows))
        return {k: np.stack([r[k] for r in rows]) for k in FEATURES}

    def epochs(self) -> list[float]:
        """Epochs read so far of each dataset (in `paths` order), by tokens packed into rows
        (this process's streams stand for all of them; with a held-out split, the split's tokens
        are taken as its share of the records)."""
        out = []
        for i, ds in enumerate(self.datasets):
            taken = sum(it.taken[i] for it in self._iters.values())
            share = 1.0 if not self.holdout else (
                self.holdout if self.split == "eval" else 1.0 - self.holdout)
            out.append(taken * self._num_streams / len(self._iters)
                       / max(ds.num_tokens * share, 1))
        return out

    def get_state(self) -> dict[str, Any]:
        """The position of this process's streams (JSON-serialisable)."""
        return {"streams": {str(j): it.get_state() for j, it in self._iters.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a position returned by `get_state` (or a merge of several processes')."""
        saved = state.get("streams", {})
        missing = [j for j in self._iters if str(j) not in saved]
        if missing:
            raise ValueError(f"the saved data position has no state for streams {missing}; was "
                             "data.streams changed since it was saved?")
        for j, it in self._iters.items():
            it.set_state(saved[str(j)])

    @staticmethod
    def global_batch(batch: dict[str, np.ndarray], mesh, rules=None) -> dict[str, Any]:
        """Global arrays of the per-process batches, sharded on the mesh's batch axes."""
        import jax

        from lepjax import parallel

        rules = rules or parallel.DEFAULT_RULES
        out = {}
        for k, v in batch.items():
            global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
            sharding = parallel.named_sharding(mesh, ("batch", "length"), rules, global_shape)
            out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
        return out


"""The Grain loader: prepared shards -> packed rows -> batches, deterministic and resumable.

Per dataset: a global shuffle of its records with a seed (reshuffled each epoch), repeated over
epochs, then sliced for this process (`records[process_index::process_count]`, so processes read
disjoint records whose union is every record once per epoch); documents longer than a row are
split into row-sized pieces; pieces are packed first-fit into rows of `seq_len` tokens. Datasets
are then mixed row by row with the given weights (rows are full, so token shares follow the
weights), and rows are batched. Each row holds

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
      eval_paths: held-out dataset directories for evaluation.
    """
    return ConfigDict(dict(paths=(), weights=(), seq_len=2048, batch_size=64, seed=0,
                           shuffle=True, num_epochs=0, packing_bins=16, eval_paths=()))


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


class _PackedRowIterator(grain.DatasetIterator):
    """Reads this process's records in shuffled order and packs them first-fit into rows.

    The k-th record this process reads is global record g = process_index + k * process_count
    (epoch g // n, shuffled within the epoch). Packing works in rounds: records fill `bins` rows
    first-fit until one does not fit anywhere; the round's rows are emitted and the next round
    starts with that record. Documents longer than a row are cut into row-sized pieces. The
    state is (record k and piece at the round's start, rows already emitted from the round), so
    restoring re-packs the round identically.
    """

    def __init__(self, spec: "PackedRows"):
        super().__init__()
        self.spec = spec
        self._k, self._piece, self._emitted = 0, 0, 0
        self._next_k, self._next_piece = 0, 0
        self._rows: list[dict[str, np.ndarray]] = []
        self._shufflers: dict[int, Any] = {}
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _record_index(self, g: int) -> int:
        n = self.spec.num_records
        epoch, pos = divmod(g, n)
        if not self.spec.shuffle:
            return pos
        if epoch not in self._shufflers:
            self._shufflers = {epoch: _shuffle_fn(n, (self.spec.seed + epoch) % 2**32)}
        return self._shufflers[epoch](pos)

    def _read(self, k: int) -> dict[str, np.ndarray] | None:
        """Decoded record k of this process (None past the last epoch), read in blocks."""
        sp = self.spec
        end = sp.num_epochs * sp.num_records if sp.num_epochs > 0 else None
        if end is not None and sp.process_index + k * sp.process_count >= end:
            return None
        if k not in self._cache:
            ks = [j for j in range(k, k + sp.read_block)
                  if end is None or sp.process_index + j * sp.process_count < end]
            idx = [self._record_index(sp.process_index + j * sp.process_count) for j in ks]
            blobs = sp.source.__getitems__(idx)
            self._cache = {j: records.decode(b) for j, b in zip(ks, blobs)}
        return self._cache[k]

    def _pack_round(self) -> None:
        L, B = self.spec.seq_len, self.spec.bins
        tokens = np.zeros((B, L), np.int32)
        mask = np.zeros((B, L), np.uint8)
        seg = np.zeros((B, L), np.int32)
        pos = np.zeros((B, L), np.int32)
        fill = [0] * B
        count = [0] * B
        ramp = np.arange(L, dtype=np.int32)
        k, piece = self._k, self._piece
        while True:
            rec = self._read(k)
            if rec is None:
                break
            n = len(rec["tokens"])
            start = piece * L
            chunk = min(L, n - start)
            b = next((i for i in range(B) if fill[i] + chunk <= L), None)
            if b is None:
                break
            f = fill[b]
            tokens[b, f:f + chunk] = rec["tokens"][start:start + chunk]
            mask[b, f:f + chunk] = rec["loss_mask"][start:start + chunk]
            count[b] += 1
            seg[b, f:f + chunk] = count[b]
            pos[b, f:f + chunk] = ramp[:chunk]
            fill[b] += chunk
            if start + chunk < n:
                piece += 1
            else:
                k, piece = k + 1, 0
        used = [i for i in range(B) if fill[i] > 0]
        if not used:
            raise StopIteration
        tokens, mask, seg, pos = tokens[used], mask[used], seg[used], pos[used]
        same_doc = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
        targets = np.zeros_like(tokens)
        targets[:, :-1] = np.where(same_doc, tokens[:, 1:], 0)
        loss = np.zeros(tokens.shape, np.float32)
        loss[:, :-1] = same_doc & (mask[:, 1:] != 0)
        self._rows = [{"tokens": tokens[i], "targets": targets[i], "loss_mask": loss[i],
                       "segment_ids": seg[i], "positions": pos[i]} for i in range(len(used))]
        self._next_k, self._next_piece = k, piece

    def __next__(self) -> dict[str, np.ndarray]:
        if self._emitted >= len(self._rows):
            if self._rows:  # the round is used up: the next one starts where it stopped
                self._k, self._piece = self._next_k, self._next_piece
            self._rows, self._emitted = [], 0
            self._pack_round()
        row = self._rows[self._emitted]
        self._emitted += 1
        return row

    def get_state(self) -> dict[str, Any]:
        return {"k": self._k, "piece": self._piece, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._k, self._piece = int(state["k"]), int(state["piece"])
        self._rows, self._emitted = [], 0
        if int(state["emitted"]):
            self._pack_round()
            self._emitted = int(state["emitted"])


class PackedRows(grain.IterDataset):
    """Packed rows of one prepared dataset for one process (see `_PackedRowIterator`)."""

    def __init__(self, ds: records.Dataset, *, seq_len: int, seed: int, shuffle: bool,
                 num_epochs: int, process_index: int, process_count: int, bins: int,
                 read_block: int = 256):
        super().__init__()
        self.source = grain.sources.ArrayRecordDataSource(ds.shard_paths)
        self.num_records = len(self.source)
        self.seq_len, self.seed, self.shuffle, self.num_epochs = seq_len, seed, shuffle, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.bins, self.read_block = bins, read_block

    def __iter__(self) -> _PackedRowIterator:
        return _PackedRowIterator(self)


class Loader:
    """Batches of packed rows for this process, with a saveable position.

    `next(loader)` returns the process-local batch as NumPy arrays ([batch_size / process_count,
    seq_len] each); `loader.global_batch(batch, mesh)` makes global `jax.Array`s of them.
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
        process_index: int | None = None,
        process_count: int | None = None,
        vocab_size: int | None = None,
        fingerprint: str | None = None,
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
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} "
                             "processes")
        self.datasets = [records.open_dataset(p, vocab_size=vocab_size, fingerprint=fingerprint)
                         for p in paths]
        self.seq_len, self.batch_size = seq_len, batch_size
        self.local_batch_size = batch_size // process_count
        rows = [PackedRows(ds, seq_len=seq_len, seed=seed + 7919 * k, shuffle=shuffle,
                           num_epochs=num_epochs, process_index=process_index,
                           process_count=process_count, bins=packing_bins)
                for k, ds in enumerate(self.datasets)]
        total = float(sum(weights))
        mixed = rows[0] if len(rows) == 1 else grain.IterDataset.mix(
            rows, [w / total for w in weights])
        self._dataset = mixed.batch(self.local_batch_size, drop_remainder=True)
        self._iter = iter(self._dataset)

    @classmethod
    def from_config(cls, section: Any, paths: Sequence[str] | None = None, **kwargs) -> "Loader":
        """A loader for a config `data` section (see `data_section`)."""
        return cls(list(paths if paths is not None else section.paths), seq_len=section.seq_len,
                   batch_size=section.batch_size, weights=list(section.weights),
                   seed=section.seed, shuffle=section.shuffle, num_epochs=section.num_epochs,
                   packing_bins=section.packing_bins, **kwargs)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        """The iterator position (JSON-serialisable)."""
        return self._iter.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a position returned by `get_state`."""
        self._iter.set_state(state)

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


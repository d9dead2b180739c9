"""FuseChat v2's co-alignment counts, stage 1 of its statistics-based ("MS") alignment (spec §2.3).

Every chunk of the corpus is tokenized by both models and aligned
(:func:`fusers.align.sequence.align_sequences`); for every pivot position ``i`` and every source id aligned to
it, ``C[pivot id at i, source id] += 1``. An id aligned twice to one position counts once, as the reference's
fancy-index ``+=`` does. The reference keeps C as a dense float64 ``|V_pivot| × |V_source|`` matrix (32k ×
150k ≈ 38 GB); :class:`CoAlignmentCounts` is a sorted array of the observed ``(pivot, source)`` keys with
int64 counts, 16 bytes per distinct pair whatever the vocabulary sizes (``benchmarks/bench_ms_counts.py``
prints the measurement). :mod:`fusers.align.ms_map` turns the counts into a vocabulary map.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from fusers.align.alignment import Alignment
from fusers.align.dtw import TieOrder
from fusers.align.sequence import align_sequences
from harness.atomic import atomic_file

_FORMAT = 1  # version of the .npz layout written by CoAlignmentCounts.save


class BySource(NamedTuple):
    """Co-alignment counts grouped by source id (CSR over source ids).

    The candidates of source id ``s`` are ``pivot_ids[indptr[s]:indptr[s+1]]`` (ascending) with their
    ``counts`` at the same positions.
    """

    indptr: np.ndarray
    pivot_ids: np.ndarray
    counts: np.ndarray


# --------------------------------------------------------------------------------------------------
# 1. Sparse co-alignment counts
# --------------------------------------------------------------------------------------------------


class CoAlignmentCounts:
    """Sparse counts ``C[pivot_id, source_id]`` of how often two tokens were aligned over a corpus.

    Memory is proportional to the number of distinct observed pairs: a pair is the int64 key
    ``pivot_id * n_source + source_id``; the store is the sorted unique keys and their int64 counts (16 bytes
    per pair), never a dense matrix. New pairs wait in a pending list of key arrays and are folded in (sorted
    in place and run-length counted, then merged into the sorted arrays) once they exceed ``fold_every`` keys
    (8 MB by default) or half the store, whichever is larger: a fold costs O(pending·log + store), so each
    pair costs amortised O(log), and the pending buffer stays a bounded fraction of the store. Every read (``nnz``, ``items``, ``by_source`` ...) folds first.
    """

    def __init__(self, n_pivot: int, n_source: int, *, fold_every: int = 1 << 20):
        n_pivot, n_source = int(n_pivot), int(n_source)
        if n_pivot < 1 or n_source < 1:
            raise ValueError(f"vocabulary sizes must be positive, got {n_pivot} × {n_source}")
        if n_pivot * n_source >= 2**62:
            raise ValueError(f"{n_pivot} × {n_source} pairs do not fit an int64 key")
        self.n_pivot = n_pivot
        self.n_source = n_source
        self.fold_every = max(int(fold_every), 1)
        self._keys = np.empty(0, dtype=np.int64)
        self._counts = np.empty(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._by_source: BySource | None = None

    def __repr__(self) -> str:
        return f"CoAlignmentCounts({self.n_pivot} × {self.n_source}, nnz={self.nnz}, nbytes={self.nbytes})"

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_pivot, self.n_source

    # --- adding ---------------------------------------------------------------------------------

    def _check(self, ids: Any, n: int, what: str) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu" and arr.size:
            raise ValueError(f"{what} ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64, copy=False).reshape(-1)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
            raise ValueError(f"{what} ids must lie in [0, {n}); got [{int(arr.min())}, {int(arr.max())}]")
        return arr

    def add_pairs(self, pivot_ids: Any, source_ids: Any, counts: Any = None) -> None:
        """Count each ``(pivot_ids[k], source_ids[k])`` once (or ``counts[k]`` times).

        Pairs are raw: a caller that wants the reference's per-position dedup must have applied it
        (:meth:`add_alignment` does).
        """
        p = self._check(pivot_ids, self.n_pivot, "pivot")
        s = self._check(source_ids, self.n_source, "source")
        if len(p) != len(s):
            raise ValueError(f"{len(p)} pivot ids for {len(s)} source ids")
        if not len(p):
            return
        keys = p * self.n_source + s
        self._by_source = None
        if counts is not None:  # weighted: reduce now, nothing pending can hold a weight
            c = np.asarray(counts, dtype=np.int64).reshape(-1)
            if len(c) != len(keys):
                raise ValueError(f"{len(c)} counts for {len(keys)} pairs")
            if (c < 0).any():
                raise ValueError("counts must be non-negative")
            keys, c = keys[c > 0], c[c > 0]  # a zero count observes nothing
            if not len(keys):
                return
            order = np.argsort(keys, kind="stable")
            keys, c = keys[order], c[order]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            self._merge(keys[starts], np.add.reduceat(c, starts))
            return
        self._pending.append(keys)
        self._n_pending += len(keys)
        if self._n_pending >= max(self.fold_every, len(self._keys) // 2):
            self._fold()

    def add_alignment(self, alignment: Alignment, pivot_ids: Any, source_ids: Any) -> None:
        """Count one aligned text: for every pivot position ``i`` and every DISTINCT source id among the
        source positions aligned to ``i``, ``C[pivot_ids[i], that id] += 1`` (spec §2.3 stage 1)."""
        pivot_ids = np.asarray(pivot_ids).astype(np.int64, copy=False).reshape(-1)
        source_ids = np.asarray(source_ids).astype(np.int64, copy=False).reshape(-1)
        if len(pivot_ids) != len(alignment) or len(source_ids) != alignment.n_source:
            raise ValueError(f"alignment is {len(alignment)}×{alignment.n_source}, ids are "
                             f"{len(pivot_ids)}×{len(source_ids)}")
        positions, js = alignment.pairs()
        if not len(js):
            return
        sid = self._check(source_ids, self.n_source, "source")[js]
        # the reference's C[p, ids] += 1 counts a repeated id once per position: dedup (position, source id)
        per_position = np.unique(positions * self.n_source + sid)
        pos, s = np.divmod(per_position, self.n_source)
        self.add_pairs(pivot_ids[pos], s)

    def update(self, other: CoAlignmentCounts) -> None:
        """Add another store's counts (same shape), e.g. from a worker that counted other chunks."""
        if other.shape != self.shape:
            raise ValueError(f"cannot add {other.shape} counts to {self.shape} counts")
        other._fold()
        if len(other._keys):
            self._by_source = None
            self._merge(other._keys.copy(), other._counts.copy())

    def _fold(self) -> None:
        if not self._pending:
            return
        # the pending arrays are our own (built in add_pairs), so sort in place: np.unique would copy again
        pending = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._n_pending = [], 0
        pending.sort()
        starts = np.flatnonzero(np.r_[True, pending[1:] != pending[:-1]])
        keys, n = pending[starts], len(pending)
        del pending
        self._merge(keys, np.diff(np.r_[starts, n]))

    def _merge(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Merge sorted unique ``keys`` with their ``counts`` into the store."""
        if not len(self._keys):
            self._keys, self._counts = keys, counts
            return
        pos = np.searchsorted(self._keys, keys)
        hit = pos < len(self._keys)
        hit[hit] = self._keys[pos[hit]] == keys[hit]
        if hit.any():  # keys are unique, so pos[hit] is too: a plain fancy += is exact
            self._counts[pos[hit]] += counts[hit]
        new = ~hit
        if new.any():  # np.insert keeps equal insertion points in the order given: the result stays sorted
            self._keys = np.insert(self._keys, pos[new], keys[new])
            self._counts = np.insert(self._counts, pos[new], counts[new])

    def compact(self) -> CoAlignmentCounts:
        """Fold the pending pairs into the store now (reads do it anyway); returns ``self``."""
        self._fold()
        return self

    # --- reading --------------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Number of distinct observed (pivot, source) pairs."""
        self._fold()
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held: the sorted keys and counts plus any pending keys (a cached by-source view excluded)."""
        return int(self._keys.nbytes + self._counts.nbytes + sum(a.nbytes for a in self._pending))

    @property
    def total(self) -> int:
        """Sum of all counts (number of counted alignment links)."""
        self._fold()
        return int(self._counts.sum())

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pivot_ids, source_ids, counts)`` of every observed pair, pivot-major, ascending."""
        self._fold()
        p, s = np.divmod(self._keys, self.n_source)
        return p, s, self._counts.copy()

    def by_source(self) -> BySource:
        """The counts grouped by source id (:class:`BySource`, cached until the next add)."""
        self._fold()
        if self._by_source is None:
            p, s = np.divmod(self._keys, self.n_source)
            order = np.argsort(s, kind="stable")  # stable: pivot ids stay ascending within a source id
            indptr = np.zeros(self.n_source + 1, dtype=np.int64)
            np.cumsum(np.bincount(s, minlength=self.n_source), out=indptr[1:])
            self._by_source = BySource(indptr, p[order], self._counts[order])
        return self._by_source

    def candidates(self, source_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(pivot_ids, counts)`` of the pivot tokens ``source_id`` was aligned with, pivot ids ascending."""
        if not 0 <= int(source_id) < self.n_source:
            raise IndexError(f"source id {source_id} outside [0, {self.n_source})")
        v = self.by_source()
        a, b = int(v.indptr[source_id]), int(v.indptr[source_id + 1])
        return v.pivot_ids[a:b], v.counts[a:b]

    def __getitem__(self, pair: tuple[int, int]) -> int:
        """``C[pivot_id, source_id]`` (0 when never observed)."""
        p, s = (int(x) for x in pair)
        if not (0 <= p < self.n_pivot and 0 <= s < self.n_source):
            raise IndexError(f"({p}, {s}) outside {self.shape}")
        self._fold()
        key = p * self.n_source + s
        k = int(np.searchsorted(self._keys, key))
        return int(self._counts[k]) if k < len(self._keys) and self._keys[k] == key else 0

    def to_scipy(self, fmt: Literal["csr", "coo"] = "csr") -> Any:
        """A ``scipy.sparse`` matrix ``[n_pivot, n_source]`` of int64 counts (scipy must be installed)."""
        from scipy import sparse

        p, s, c = self.items()
        coo = sparse.coo_matrix((c, (p, s)), shape=self.shape, dtype=np.int64)
        return coo.tocsr() if fmt == "csr" else coo

    def to_dense(self, max_cells: int = 1 << 24) -> np.ndarray:
        """The dense int64 matrix, for tests and tiny vocabularies only (refuses above ``max_cells``)."""
        if self.n_pivot * self.n_source > max_cells:
            raise MemoryError(f"a dense {self.n_pivot} × {self.n_source} matrix exceeds {max_cells} cells")
        out = np.zeros(self.shape, dtype=np.int64)
        p, s, c = self.items()
        out[p, s] = c
        return out

    # --- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` (keys, counts, shape) atomically: a temporary file in the same folder, renamed."""
        path = Path(path)
        self._fold()
        with atomic_file(path) as partial, open(partial, "wb") as f:  # a file object: np.savez would append ".npz"
            np.savez(f, keys=self._keys, counts=self._counts,
                     shape=np.array([self.n_pivot, self.n_source], dtype=np.int64),
                     format=np.array(_FORMAT, dtype=np.int64))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CoAlignmentCounts:
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["format"]) != _FORMAT:
                raise ValueError(f"{path}: co-alignment counts format {int(z['format'])}, expected {_FORMAT}")
            n_pivot, n_source = (int(x) for x in z["shape"])
            keys = z["keys"].astype(np.int64, copy=False)
            counts = z["counts"].astype(np.int64, copy=False)
        if len(keys) != len(counts) or (len(keys) and (np.any(np.diff(keys) <= 0) or keys[0] < 0
                                                       or keys[-1] >= n_pivot * n_source)):
            raise ValueError(f"{path}: corrupt co-alignment counts")
        out = cls(n_pivot, n_source)
        out._keys, out._counts = keys, counts
        return out


def _id_space(tokenizer: Any) -> int:
    """Ids a tokenizer can produce: its length or its largest vocabulary id + 1, whichever is larger.

    Remembered per tokenizer while its length stays the same (``get_vocab`` builds a dict of the whole
    vocabulary: tens of milliseconds for a real one, on every call)."""
    length = None
    with contextlib.suppress(TypeError):  # a tokenizer-like object without __len__
        length = len(tokenizer)
    with contextlib.suppress(TypeError):  # not weakly referenceable: nothing remembered
        known = _ID_SPACES.get(tokenizer)
        if known is not None and known[0] == length:
            return known[1]
    vocab = tokenizer.get_vocab()
    n = int(max(max(vocab.values(), default=-1) + 1, length or 0))
    with contextlib.suppress(TypeError):
        _ID_SPACES[tokenizer] = (length, n)
    return n


_ID_SPACES: weakref.WeakKeyDictionary[Any, tuple[int | None, int]] = weakref.WeakKeyDictionary()


def count_corpus(pivot_encoder: Any, source_encoder: Any, chunks: Iterable[Any], mode: str = "offsets", *,
                 keep_alignments: bool = False, tie_order: TieOrder = "fusechat", band: int = 16,
                 counts: CoAlignmentCounts | None = None,
                 ) -> CoAlignmentCounts | tuple[CoAlignmentCounts, list[Alignment | None]]:
    """Co-alignment counts of a chunked corpus (spec §2.3 stage 1).

    Each chunk is tokenized by both :class:`fusers.distill.ChunkEncoder` s (EOS first at a document start),
    aligned with :func:`fusers.align.sequence.align_sequences` (pivot = base; ``tie_order`` only matters for
    the DTW modes, FuseChat's is ``"fusechat"``) and counted with :meth:`CoAlignmentCounts.add_alignment`.
    ``keep_alignments=True`` returns ``(counts, alignments)`` with one :class:`Alignment` per chunk, for the
    distribution alignment to reuse (None for a chunk that one side tokenizes to nothing: it cannot be
    aligned). ``counts``: an existing store to add to.
    """
    if counts is None:
        counts = CoAlignmentCounts(_id_space(pivot_encoder.tokenizer), _id_space(source_encoder.tokenizer))
    alignments: list[Alignment | None] = []
    for chunk in chunks:
        pivot_tz = pivot_encoder.encode(chunk)
        source_tz = source_encoder.encode(chunk)
        if len(pivot_tz) == 0 or len(source_tz) == 0:
            if keep_alignments:
                alignments.append(None)
            continue
        alignment = align_sequences(pivot_tz, source_tz, mode=mode, tie_order=tie_order, band=band)  # type: ignore[arg-type]
        counts.add_alignment(alignment, pivot_tz.ids, source_tz.ids)
        if keep_alignments:
            alignments.append(alignment)
    counts.compact()
    return (counts, alignments) if keep_alignments else counts

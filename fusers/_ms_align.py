"""FuseChat v2's statistics-based token alignment ("MS", Mapping Statistics), spec ``fusion-algorithms.md`` §2.3.

FuseChat maps every source token to ONE pivot token learned from how the two tokenizations of a corpus line
up, instead of FuseLLM's nearest-string vocabulary map (§2.2). Three steps, each a function here:

1. **Co-alignment counts** (:class:`CoAlignmentCounts`, :func:`count_corpus`). Every chunk of the corpus is
   tokenized by both models and aligned (:func:`fusers._align.align_sequences`); for every pivot position
   ``i`` and every source id aligned to it, ``C[pivot id at i, source id] += 1``. An id aligned twice to one
   position counts once, as the reference's fancy-index ``+=`` does. The reference keeps C as a dense
   float64 ``|V_pivot| × |V_source|`` matrix (32k × 150k ≈ 38 GB); here it is a sorted array of the observed
   ``(pivot, source)`` keys with int64 counts, 16 bytes per distinct pair whatever the vocabulary sizes
   (``benchmarks/bench_ms_counts.py`` prints the measurement).

2. **Statistical vocabulary map** (:func:`ms_statistical_map`, the reference's ``blending_to_base``). Per
   source id ``s``, among the pivot ids it was ever aligned with: the closest piece by a weighted edit
   distance, weighted by ``sigmoid(count)`` (``weighting="reference"``, quirk Q2: at equal distance the
   *rarer* co-alignment wins), or, FuseBench's default ``weighting="frequency"``, the most frequent
   co-alignment, ties broken by that distance. Never aligned: the pivot's unk (else eos). BOS→BOS, EOS→EOS.

3. **Lookup rule of the distribution alignment** (:func:`ms_vocab_map`). A source piece that, with its word
   marker swapped, IS a pivot piece maps there; any other goes through the statistical map. The result is a
   :class:`fusers._align.VocabMap`, so :func:`fusers._align.map_distribution` and
   :func:`fusers._distill.target_rows` move top-k distributions through it unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from fusers._align import Alignment, TieOrder, TokenizerSpec, VocabMap, align_sequences, detect_spec

__all__ = [
    "FUSECHAT_PIECE_SUBSTITUTIONS",
    "WEIGHTINGS",
    "BySource",
    "CoAlignmentCounts",
    "count_corpus",
    "fusechat_distribution",
    "fusechat_dtw_align",
    "fusechat_pieces",
    "ms_statistical_map",
    "ms_vocab_map",
    "pieces_by_id",
]

Weighting = Literal["frequency", "reference"]
WEIGHTINGS: tuple[str, ...] = ("frequency", "reference")

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
                np.savez(f, keys=self._keys, counts=self._counts,
                         shape=np.array([self.n_pivot, self.n_source], dtype=np.int64),
                         format=np.array(_FORMAT, dtype=np.int64))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
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
    """Ids a tokenizer can produce: its length or its largest vocabulary id + 1, whichever is larger."""
    vocab = tokenizer.get_vocab()
    n = max(vocab.values(), default=-1) + 1
    with contextlib.suppress(TypeError):  # a tokenizer-like object without __len__
        n = max(n, len(tokenizer))
    return int(n)


def count_corpus(pivot_encoder: Any, source_encoder: Any, chunks: Iterable[Any], mode: str = "offsets", *,
                 keep_alignments: bool = False, tie_order: TieOrder = "fusechat", band: int = 16,
                 counts: CoAlignmentCounts | None = None,
                 ) -> CoAlignmentCounts | tuple[CoAlignmentCounts, list[Alignment | None]]:
    """Co-alignment counts of a chunked corpus (spec §2.3 stage 1).

    Each chunk is tokenized by both :class:`fusers._distill.ChunkEncoder` s (EOS first at a document start),
    aligned with :func:`fusers._align.align_sequences` (pivot = base; ``tie_order`` only matters for the DTW
    modes, FuseChat's is ``"fusechat"``) and counted with :meth:`CoAlignmentCounts.add_alignment`.
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


# --------------------------------------------------------------------------------------------------
# 2. The statistical map (blending_to_base)
# --------------------------------------------------------------------------------------------------


def pieces_by_id(vocab: Mapping[str, int], size: int | None = None) -> list[str | None]:
    """``out[id]`` = the piece with that id (None for ids without one), ``size`` entries (default: max id + 1).
    Ids at or beyond ``size`` are left out."""
    n = max(vocab.values(), default=-1) + 1 if size is None else int(size)
    out: list[str | None] = [None] * n
    for piece, i in vocab.items():
        if 0 <= i < n:
            out[i] = piece
    return out


def _substring_weight(a: list[str], b: list[str], d: np.ndarray, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """0.1 where ``a[k] in b[k] or b[k] in a[k]``, else 1.0 (``la``/``lb``: the strings' lengths).

    A substring differs from the other string only by insertions, so its edit distance equals the length
    difference; only pairs meeting that bound are tested in Python.
    """
    w = np.ones(len(a), dtype=np.float64)
    for k in np.flatnonzero(d == np.abs(la - lb)).tolist():
        if a[k] in b[k] or b[k] in a[k]:
            w[k] = 0.1
    return w


def _ms_distances(ps: np.ndarray, pp: np.ndarray, source_pieces: Sequence[str | None],
                  pivot_pieces: Sequence[str | None], source_marker: str, pivot_marker: str) -> np.ndarray:
    """The reference's weighted distance ``ED(a, b) · w`` of each (source id, pivot id) pair (float64).

    a/b: the pieces without their markers; if either is empty, a = source piece with its marker replaced by
    the pivot's and b = the pivot piece as is. w = 0.1 if one is a substring of the other, else 1.0.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    if not len(ps):
        return np.empty(0, dtype=np.float64)
    us, s_inv = np.unique(ps, return_inverse=True)
    up, p_inv = np.unique(pp, return_inverse=True)
    src = [source_pieces[i] for i in us.tolist()]
    piv = [pivot_pieces[i] for i in up.tolist()]
    a_strip = [x.replace(source_marker, "") if source_marker else x for x in src]
    a_swap = [x.replace(source_marker, pivot_marker) if source_marker else x for x in src]
    b_strip = [x.replace(pivot_marker, "") if pivot_marker else x for x in piv]

    def lengths(xs: list[str]) -> np.ndarray:
        return np.fromiter(map(len, xs), dtype=np.int64, count=len(xs))

    # per unique string: (string, length) of both variants; a pair uses the swapped/raw ones if either
    # stripped string is empty
    la_strip, la_swap, lb_strip, lb_raw = lengths(a_strip), lengths(a_swap), lengths(b_strip), lengths(piv)
    swap = (la_strip == 0)[s_inv] | (lb_strip == 0)[p_inv]
    a_all, b_all = np.array(a_strip + a_swap, dtype=object), np.array(b_strip + piv, dtype=object)
    ia = s_inv + np.where(swap, len(src), 0)
    ib = p_inv + np.where(swap, len(piv), 0)
    a, b = a_all[ia].tolist(), b_all[ib].tolist()
    la, lb = np.r_[la_strip, la_swap][ia], np.r_[lb_strip, lb_raw][ib]
    workers = -1 if len(a) > 200_000 else 1
    d = process.cpdist(a, b, scorer=Levenshtein.distance, workers=workers, dtype=np.int64)
    return d.astype(np.float64) * _substring_weight(a, b, d, la, lb)


def _group_broadcast(reduce: Any, values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``reduce`` (a ``ufunc.reduceat``) over runs of equal ``groups``, repeated back to every element."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.repeat(reduce(values, starts), np.diff(np.r_[starts, len(values)]))


def ms_statistical_map(counts: CoAlignmentCounts, source_pieces: Sequence[str | None],
                       pivot_pieces: Sequence[str | None], *, source_marker: str, pivot_marker: str,
                       weighting: Weighting = "frequency", fallback_id: int = -1,
                       overrides: Mapping[int, int] | None = None,
                       sources: Any = None) -> np.ndarray:
    """The source→pivot map of spec §2.3 stage 2 (the reference's ``blending_to_base``), int64 per source id.

    ``source_pieces`` / ``pivot_pieces``: piece per id (None: no piece; a pivot id without a piece is no
    candidate, so pass None for ids the pivot model cannot output). For source id ``s`` the candidates are
    the pivot ids ``p`` with ``C[p, s] > 0``, each with ``d = ED(a, b) · w`` (see :func:`_ms_distances`):

    * ``weighting="reference"`` (quirk Q2): the lowest ``d · sigmoid(C[p, s])``, ties → lowest pivot id;
    * ``weighting="frequency"``: the highest count, ties → lowest ``d``, then lowest pivot id.

    Source ids without a piece or a candidate get ``fallback_id`` (the reference: pivot unk, else eos);
    ``overrides`` (source id → pivot id: BOS→BOS, EOS→EOS) are applied last. ``sources`` limits the work to
    those source ids (the others get ``fallback_id``, then ``overrides``).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown ms weighting {weighting!r}; expected one of {WEIGHTINGS}")
    n_out = len(source_pieces)
    out = np.full(n_out, int(fallback_id), dtype=np.int64)
    n = min(n_out, counts.n_source)
    sel = np.arange(n, dtype=np.int64) if sources is None else np.unique(np.asarray(sources, dtype=np.int64))
    sel = sel[(sel >= 0) & (sel < n)]
    has_piece = np.fromiter((source_pieces[i] is not None for i in sel.tolist()), dtype=bool, count=len(sel))
    sel = sel[has_piece]

    view = counts.by_source()
    starts, lens = view.indptr[sel], view.indptr[sel + 1] - view.indptr[sel]
    total = int(lens.sum())
    flat = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total, dtype=np.int64)
    ps, pp, pc = np.repeat(sel, lens), view.pivot_ids[flat], view.counts[flat]
    valid_pivot = np.fromiter((p is not None for p in pivot_pieces), dtype=bool, count=len(pivot_pieces))
    keep = (pp < len(pivot_pieces)) & (pc > 0)
    keep[keep] = valid_pivot[pp[keep]]
    ps, pp, pc = ps[keep], pp[keep], pc[keep]

    if len(ps):
        # Candidates come grouped by source id, pivot ids ascending within a group (BySource), so "the first
        # minimum of each group" is the lowest pivot id among the tied ones: two O(n) passes, no sort.
        if weighting == "frequency":  # only the most frequent candidates of each source id need a distance
            keep = pc == _group_broadcast(np.maximum.reduceat, pc, ps)
            ps, pp, pc = ps[keep], pp[keep], pc[keep]
            score = _ms_distances(ps, pp, source_pieces, pivot_pieces, source_marker, pivot_marker)
        else:
            d = _ms_distances(ps, pp, source_pieces, pivot_pieces, source_marker, pivot_marker)
            score = d * (1.0 / (1.0 + np.exp(-pc.astype(np.float64))))
        at_min = np.flatnonzero(score == _group_broadcast(np.minimum.reduceat, score, ps))
        first = at_min[np.r_[True, ps[at_min[1:]] != ps[at_min[:-1]]]]
        out[ps[first]] = pp[first]
    for s, p in (overrides or {}).items():
        if 0 <= s < n_out:
            out[s] = p
    return out


# --------------------------------------------------------------------------------------------------
# 3. The vocabulary map used to move distributions
# --------------------------------------------------------------------------------------------------


def _role_id(tokenizer: Any, role: str) -> int | None:
    value = getattr(tokenizer, f"{role}_token_id", None)
    return None if value is None else int(value)


def ms_vocab_map(counts: CoAlignmentCounts, source_tokenizer: Any, pivot_tokenizer: Any, *,
                 weighting: Weighting = "frequency", source_width: int | None = None,
                 pivot_width: int | None = None, source_spec: TokenizerSpec | None = None,
                 pivot_spec: TokenizerSpec | None = None) -> VocabMap:
    """FuseChat's source→pivot vocabulary map (spec §2.3 stages 2 and 3) as a :class:`VocabMap`.

    Per source id: the pivot id of its piece with the source's word marker replaced by the pivot's, if that
    string is a pivot piece (``exact``); otherwise :func:`ms_statistical_map` with ``weighting``
    (``"frequency"``, FuseBench's default, or ``"reference"``, quirk Q2). Source ids never aligned map to
    the pivot's unk token (its eos without one); source BOS/EOS map to pivot BOS/EOS when both exist.

    ``source_width`` / ``pivot_width`` are the models' logit widths (Q11): the map has ``source_width``
    entries (ids without a piece map to -1; vocabulary ids at or beyond it are left out) and pivot ids at or
    beyond ``pivot_width`` are never targets. Markers come from :func:`fusers._align.detect_spec` unless
    ``source_spec`` / ``pivot_spec`` are given. ``keys`` maps each marker-replaced source piece to its lowest
    source id, as :func:`fusers._align.vocab_map` does, so :meth:`VocabMap.lookup` works the same.
    """
    src_spec = source_spec or detect_spec(source_tokenizer)
    piv_spec = pivot_spec or detect_spec(pivot_tokenizer)
    src_vocab = source_tokenizer.get_vocab()
    piv_vocab = pivot_tokenizer.get_vocab()
    width = max(src_vocab.values(), default=-1) + 1 if source_width is None else int(source_width)
    p_width = max(piv_vocab.values(), default=-1) + 1 if pivot_width is None else int(pivot_width)
    src_pieces = pieces_by_id(src_vocab, width)
    piv_pieces = pieces_by_id(piv_vocab, max(p_width, counts.n_pivot))
    for p in range(p_width, len(piv_pieces)):  # the pivot model cannot output these ids
        piv_pieces[p] = None
    piv_index = {piece: i for i, piece in enumerate(piv_pieces) if piece is not None}

    keys_of = [None if x is None else src_spec.replace_marker(x, piv_spec) for x in src_pieces]
    exact_ids = np.fromiter((-1 if k is None else piv_index.get(k, -1) for k in keys_of), dtype=np.int64,
                            count=width)
    exact = exact_ids >= 0
    has_piece = np.fromiter((x is not None for x in src_pieces), dtype=bool, count=width)

    def usable(i: int | None) -> int | None:
        return i if i is not None and 0 <= i < p_width else None

    fallback = usable(_role_id(pivot_tokenizer, "unk"))
    if fallback is None:
        fallback = usable(_role_id(pivot_tokenizer, "eos"))
    overrides: dict[int, int] = {}
    for role in ("bos", "eos"):
        s, p = _role_id(source_tokenizer, role), usable(_role_id(pivot_tokenizer, role))
        if s is not None and p is not None and 0 <= s < width:
            overrides[s] = p

    need = np.flatnonzero(has_piece & ~exact)
    stats = ms_statistical_map(counts, src_pieces, piv_pieces, source_marker=src_spec.marker,
                               pivot_marker=piv_spec.marker, weighting=weighting,
                               fallback_id=-1 if fallback is None else fallback, overrides=overrides,
                               sources=need)
    ids = np.where(exact, exact_ids, np.where(has_piece, stats, -1)).astype(np.int64)
    keys: dict[str, int] = {}
    for s, k in enumerate(keys_of):
        if k is not None:
            keys.setdefault(k, s)
    return VocabMap(ids=ids, exact=exact, keys=keys, by_string=None)


# --------------------------------------------------------------------------------------------------
# 4. FuseChat's released alignment, reproduced for reference_compat (spec §2.3, §11)
# --------------------------------------------------------------------------------------------------
#
# FuseBench's own path aligns by byte offsets and moves distributions with :func:`fusers._align.map_distribution`
# (surface match, same byte end, summed collisions). ``align="dtw_fusechat"`` and ``distribution="fusechat"``
# instead do what FuseChat's ``align_token_and_vocab.py`` does, rule for rule:
#
# * token strings are the raw pieces (``convert_ids_to_tokens``) with Llama-3 byte-level spellings rewritten
#   as Mistral's (:data:`FUSECHAT_PIECE_SUBSTITUTIONS`) -- the released code uses pieces, not decoded text;
# * DTW cost: edit distance of the marker-stripped pieces, or, where either stripped string is empty, of the
#   source piece with its marker swapped for the pivot's against the pivot piece; backtrack ties
#   (diag, left, up);
# * distribution alignment ("stage 3"): the ``endswith`` rule for single positions, the first matching piece
#   or the greedy prefix decomposition for one-to-many positions, lookups through the exact piece else the
#   statistical map, the first of colliding entries kept, one-hot on the next pivot token otherwise.
#
# Markers come from FuseBench's per-tokenizer table (:func:`fusers._align.detect_spec`), not from the released
# code's table keyed on the tokenizer's Python class, which gives a Llama *fast* tokenizer the byte-level
# marker: that is a bug, not a behaviour worth reproducing.

#: (Llama-3 byte-level spelling, Mistral spelling), applied in this order to every piece of both sides.
FUSECHAT_PIECE_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("âĢĻ", "’"), ("âĢĶ", "—"), ("âĢĿ", "”"), ("č", "\r"), ("ĉ", "<0x09>"), ("Ċ", "<0x0A>"))


def fusechat_pieces(pieces: Sequence[str]) -> list[str]:
    """Pieces as FuseChat's alignment reads them: :data:`FUSECHAT_PIECE_SUBSTITUTIONS` applied."""
    out = []
    for piece in pieces:
        for old, new in FUSECHAT_PIECE_SUBSTITUTIONS:
            piece = piece.replace(old, new)
        out.append(piece)
    return out


def _without(piece: str, marker: str) -> str:
    return piece.replace(marker, "") if marker else piece


def _swapped(piece: str, marker: str, new: str) -> str:
    return piece.replace(marker, new) if marker else piece


def fusechat_dtw_align(pivot: Any, source: Any) -> Alignment:
    """FuseChat's sequence alignment of two tokenizations of one text (pivot = base), spec §2.3 stage 1."""
    from fusers._align import dtw_from_cost, edit_distance_matrix

    piv, src = fusechat_pieces(pivot.pieces), fusechat_pieces(source.pieces)
    pm, sm = pivot.spec.marker, source.spec.marker
    stripped_src, stripped_piv = [_without(p, sm) for p in src], [_without(p, pm) for p in piv]
    cost = edit_distance_matrix(stripped_src, stripped_piv)  # [source, pivot]
    empty_src = np.array([not s for s in stripped_src], dtype=bool)
    empty_piv = np.array([not s for s in stripped_piv], dtype=bool)
    if empty_src.any() or empty_piv.any():
        swapped = edit_distance_matrix([_swapped(p, sm, pm) for p in src], piv)
        either = empty_src[:, None] | empty_piv[None, :]
        cost = np.where(either, swapped, cost)
    return dtw_from_cost(cost, tie_order="fusechat", mode="dtw_fusechat")


def fusechat_distribution(alignment: Alignment, pivot: Any, source: Any, topk_ids: Any, topk_logits: Any,
                          vocab: VocabMap, *, base_width: int | None = None, k_out: int | None = None) -> Any:
    """FuseChat's distribution alignment (spec §2.3 stage 3, ``align_type=default`` with the token alignment
    matrix) as a :class:`fusers._align.MappedTopK`, the same structure :func:`fusers._align.map_distribution`
    returns, so :func:`fusers._distill.target_rows` stores it unchanged.

    Per pivot position ``i`` with aligned source positions ``js``:

    * one position ``j``: if the source piece (marker swapped to the pivot's) ends with the pivot piece or the
      pivot piece ends with it, ``j``'s distribution; else a one-hot on the next pivot token (FALLBACK);
    * several: on marker-stripped pieces, the first ``j`` whose piece ends with the pivot piece or is its
      suffix is used alone; else the greedy prefix decomposition of the pivot piece (every piece, in order,
      that starts what is left of it is consumed; nothing unless all of it is): if it or the whole
      concatenation matches at the end, the LAST decomposing piece's distribution when the decomposition
      spells the pivot piece exactly, otherwise nothing (EMPTY: the pivot's own distribution is used);
      otherwise the one-hot (FALLBACK).

    A used distribution is walked highest logit first; each source id maps through ``vocab`` (FuseChat's
    lookup: the exact piece, else the statistical map, :func:`ms_vocab_map`), and an id already present is
    skipped (collisions keep the first entry, quirk Q5).
    """
    from fusers._align import EMPTY, FALLBACK, MAPPED, MappedTopK

    piv, src = fusechat_pieces(pivot.pieces), fusechat_pieces(source.pieces)
    pm, sm = pivot.spec.marker, source.spec.marker
    ids = np.asarray(topk_ids, dtype=np.int64)
    logits = np.asarray(topk_logits, dtype=np.float64)
    k = ids.shape[1]
    k_out = k if k_out is None else int(k_out)
    lookup = np.asarray(vocab.ids, dtype=np.int64)
    n = len(piv)
    labels = np.concatenate([pivot.ids[1:], pivot.ids[-1:]]) if n else np.zeros(0, dtype=np.int64)
    out_ids = np.full((n, k_out), -1, dtype=np.int32)
    out_log = np.full((n, k_out), -np.inf, dtype=np.float32)
    status = np.full(n, FALLBACK, dtype=np.int8)
    used = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        js = alignment[i].tolist()
        use: int | None = None
        nothing = False
        if len(js) == 1:
            st = _swapped(src[js[0]], sm, pm)
            if st.endswith(piv[i]) or piv[i].endswith(st):
                use = js[0]
        else:
            bt = _without(piv[i], pm)
            pieces = [_without(src[j], sm) for j in js]
            use = next((j for j, p in zip(js, pieces, strict=True)
                        if bt != pm and (bt.endswith(p) or p.endswith(bt))), None)
            if use is None:
                taken = _greedy_prefix_decomposition(bt, pieces)
                whole = "".join(pieces)
                if taken or whole.endswith(bt) or bt.endswith(whole):
                    if taken and "".join(pieces[t] for t in taken) == bt:
                        use = js[taken[-1]]
                    else:
                        nothing = True
        if nothing:
            status[i] = EMPTY
            continue
        if use is None:
            out_ids[i, 0], out_log[i, 0] = labels[i], 1.0
            continue
        order = np.argsort(-logits[use], kind="stable")
        kept: list[int] = []
        for c in order:
            v = int(ids[use, c])
            if v < 0 or v >= len(lookup) or not np.isfinite(logits[use, c]):
                continue
            target = int(lookup[v])
            if target < 0 or target in kept or len(kept) == k_out:
                continue
            out_ids[i, len(kept)], out_log[i, len(kept)] = target, logits[use, c]
            kept.append(target)
        status[i] = MAPPED if kept else EMPTY
        used[i] = use
    if base_width is not None and (out_ids >= base_width).any():
        raise ValueError(f"pivot id {int(out_ids.max())} ≥ base_width {base_width}")
    return MappedTopK(ids=out_ids, logits=out_log, status=status, source=np.where(status == MAPPED, used, -1))


def _greedy_prefix_decomposition(word: str, pieces: Sequence[str]) -> list[int]:
    """Indices of the pieces that, taken in order whenever they start what is left of ``word``, consume it
    entirely; ``[]`` when something is left over."""
    taken, rest = [], word
    for index, piece in enumerate(pieces):
        if rest.startswith(piece):
            taken.append(index)
            rest = rest[len(piece):]
    return taken if not rest else []

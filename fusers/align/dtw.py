"""The reference MinED DTW (FuseLLM ``others.py::dtw``), exact and fast, and its banded variant.

:func:`dtw_align` / :func:`dtw_from_cost` reproduce the reference's DP, greedy backtrack and tie order
bit for bit, with a C edit distance over the *unique* pieces (rapidfuzz) and the cumulative matrix and
backtrack compiled by numba (a numpy row recurrence and the plain Python backtrack without it): ≈1.5
µs/cell in the reference (spec §12), ≈0.008 µs/cell here (``benchmarks/bench_align.py``).
:func:`banded_dtw` runs the same DP restricted to a band around another alignment.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from fusers.align.alignment import Alignment

TieOrder = Literal["fusellm", "fusechat"] | tuple[str, str, str]
_MOVES = {"diag": 0, "up": 1, "left": 2}
TIE_ORDERS: dict[str, tuple[str, str, str]] = {
    "fusellm": ("diag", "up", "left"),
    "fusechat": ("diag", "left", "up"),
}


def tie_codes(tie_order: TieOrder) -> tuple[int, int, int]:
    order = TIE_ORDERS[tie_order] if isinstance(tie_order, str) else tuple(tie_order)
    if sorted(order) != sorted(_MOVES):
        raise ValueError(f"tie_order must be 'fusellm', 'fusechat' or a permutation of diag/up/left, got {tie_order!r}")
    return tuple(_MOVES[m] for m in order)  # type: ignore[return-value]


def _factorize(strings: Sequence[str]) -> tuple[list[str], np.ndarray]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(s, len(index)) for s in strings), dtype=np.intp, count=len(strings))
    return list(index), codes


def _unique_distances(rows: Sequence[str], cols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(table, row_codes, col_codes)`` with ``ED(rows[a], cols[b]) = table[row_codes[a], col_codes[b]]``.

    The Levenshtein distance (unit costs over code points, like the reference's ``editdistance.eval``)
    is computed once per pair of *distinct* strings, with rapidfuzz's bit-parallel C implementation: a
    2048-token text has a few hundred distinct pieces. Threads only for large tables: for small ones
    they cost more than they save.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    ur, row_codes = _factorize(rows)
    uc, col_codes = _factorize(cols)
    if not ur or not uc:
        return np.zeros((len(ur), len(uc)), dtype=np.int32), row_codes, col_codes
    workers = -1 if len(ur) * len(uc) > 250_000 else 1
    table = process.cdist(ur, uc, scorer=Levenshtein.distance, workers=workers, dtype=np.int32)
    return table, row_codes, col_codes


def edit_distance_matrix(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """Levenshtein distance of every (row, column) pair of strings, int32 ``[len(rows), len(cols)]``."""
    table, rc, cc = _unique_distances(rows, cols)
    return table[np.ix_(rc, cc)]


def _prefix_min(values: np.ndarray, out: np.ndarray) -> Any:
    """A function computing ``out[:] = running minimum of values[:]`` into preallocated buffers.

    ``torch.cummin`` is about twice as fast on CPU as numpy's non-vectorised ``np.minimum.accumulate``
    and writes through tensors sharing the numpy buffers. It is used only when torch is already loaded
    (always, inside a fuser), so aligning never pays torch's import time; both give identical values.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: np.minimum.accumulate(values, out=out)
    tv, to = torch.from_numpy(values), torch.from_numpy(out)
    ti = torch.empty(len(values), dtype=torch.int64)
    return lambda: torch.cummin(tv, 0, out=(to, ti))


def _cumulative(table: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray | None) -> np.ndarray:
    """The reference's DTW cumulative matrix ``D[r, c]`` for ``cost[r, c] = table[row_codes[r], col_codes[c]]``.

    Recurrence: ``D(r, c) = cost(r, c) + min(D(r-1, c), D(r, c-1), D(r-1, c-1))``, D(0, 0) = cost(0, 0),
    +inf outside (the reference's padded border). Row by row: with ``m(c) = min(D(r-1, c), D(r-1, c-1))``
    and the row's prefix sums ``S``, unrolling the left dependency gives
    ``D(r, c) = S(c) + min_{k≤c} (cost(r, k) - S(k) + m(k))`` — elementwise operations and one running
    minimum per row, all in C. ``cost - S`` and ``S`` depend only on the row's piece, so they are built once
    per distinct piece. Integer costs keep every value exact (int32 when the largest possible path cost
    fits, else int64), so equal values compare equal and the backtrack breaks ties exactly like the
    float64 reference.
    """
    rows = len(row_codes)
    cols = table.shape[1] if col_codes is None else len(col_codes)
    bound = int(table.max(initial=0)) * (rows + cols)
    dtype = np.int32 if bound < 2**31 - 1 else np.int64
    kernel = _compiled_cumulative()
    if kernel is not None:  # the same integer recurrence, one compiled double loop reading the table directly
        columns = np.arange(cols) if col_codes is None else col_codes
        return kernel(np.ascontiguousarray(table, dtype=dtype), np.ascontiguousarray(row_codes, dtype=np.int64),
                      np.ascontiguousarray(columns, dtype=np.int64))
    per_piece = table if col_codes is None else np.take(table, col_codes, axis=1)  # C-contiguous rows
    per_piece = per_piece.astype(dtype, copy=False)
    prefix = np.empty_like(per_piece)
    for u in range(len(per_piece)):  # 1-D cumsums: numpy's axis=1 cumsum is several times slower
        np.cumsum(per_piece[u], out=prefix[u])
    minus_prefix = per_piece - prefix
    d = np.empty((rows, cols), dtype=dtype)
    d[0] = prefix[row_codes[0]]
    m = np.empty(cols, dtype=dtype)
    scan = np.empty(cols, dtype=dtype)
    prefix_min = _prefix_min(m, scan)
    # Row views made once: building slice objects per row costs as much as a small ufunc call.
    d_rows, d_tail, d_head = list(d), list(d[:, 1:]), list(d[:, :-1])
    a_rows, s_rows = list(minus_prefix), list(prefix)
    m_tail = m[1:]
    minimum, add = np.minimum, np.add
    codes = row_codes.tolist()
    for r in range(1, rows):
        u = codes[r]
        m[0] = d_head[r - 1][0]
        minimum(d_tail[r - 1], d_head[r - 1], out=m_tail)
        add(m, a_rows[u], out=m)
        prefix_min()
        add(scan, s_rows[u], out=d_rows[r])
    return d


@functools.cache
def _compiled_cumulative() -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    """numba-compiled cell loop for :func:`_cumulative` (None when numba is not installed).

    The row-wise numpy recurrence above is exact but pays one ufunc call per row; the compiled loop does
    the same integer arithmetic cell by cell. Cell by cell, each cell waits for its left neighbour (a chain
    of compare-and-add), so four rows run as a staircase: step c computes row r at column c, row r+1 at
    c-1, row r+2 at c-2 and row r+3 at c-3, each needing only cells of earlier steps, so the four chains
    overlap in the processor (about three times faster than one row at a time). ``cache=True`` keeps the
    compiled code on disk, so only the first process ever compiles it.
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, inline="always")
    def cell(d: np.ndarray, cost: np.ndarray, col_codes: np.ndarray, r: int, c: int) -> None:  # pragma: no cover
        if c == 0:
            d[r, 0] = cost[col_codes[0]] + d[r - 1, 0]
            return
        best = d[r - 1, c - 1]
        if d[r - 1, c] < best:
            best = d[r - 1, c]
        if d[r, c - 1] < best:
            best = d[r, c - 1]
        d[r, c] = cost[col_codes[c]] + best

    @numba.njit(cache=True, nogil=True)
    def cumulative(table: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray) -> np.ndarray:  # pragma: no cover
        rows, cols = row_codes.shape[0], col_codes.shape[0]
        d = np.empty((rows, cols), dtype=table.dtype)
        first = table[row_codes[0]]
        acc = first[0] - first[0]
        for c in range(cols):
            acc += first[col_codes[c]]
            d[0, c] = acc
        r = 1
        while r + 4 <= rows:
            c0, c1 = table[row_codes[r]], table[row_codes[r + 1]]
            c2, c3 = table[row_codes[r + 2]], table[row_codes[r + 3]]
            for c in range(min(4, cols + 3)):  # the staircase's first steps
                for k in range(4):
                    if 0 <= c - k < cols:
                        cell(d, table[row_codes[r + k]], col_codes, r + k, c - k)
            for c in range(4, cols):
                cell(d, c0, col_codes, r, c)
                cell(d, c1, col_codes, r + 1, c - 1)
                cell(d, c2, col_codes, r + 2, c - 2)
                cell(d, c3, col_codes, r + 3, c - 3)
            for c in range(max(cols, 4), cols + 3):  # and its last ones
                for k in range(1, 4):
                    if 0 <= c - k < cols:
                        cell(d, table[row_codes[r + k]], col_codes, r + k, c - k)
            r += 4
        while r < rows:
            cost = table[row_codes[r]]
            for c in range(cols):
                cell(d, cost, col_codes, r, c)
            r += 1
        return d

    return cumulative


@functools.cache
def _compiled_backtrack() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """:func:`_backtrack` compiled by numba (None without numba: the plain function then runs as Python)."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True)(_backtrack)


def _backtrack(flat: np.ndarray, sj: int, si: int, n_src: int, n_base: int, c0: int, c1: int,
               c2: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's greedy backtrack from (M-1, N-1): move to the smallest of diag/up/left, ties in
    ``(c0, c1, c2)`` order (``np.argmin`` semantics: the first minimum wins), then add (0, 0).

    ``flat[j*sj + i*si]`` is D(j, i); "up" decrements the source index j, "left" the base index i. Written in
    the subset of Python numba compiles, so the compiled and the fallback path are one function.
    """
    out_j = np.empty(n_src + n_base, dtype=np.int64)
    out_i = np.empty(n_src + n_base, dtype=np.int64)
    vals = np.empty(3, dtype=np.float64)
    j, i, n = n_src - 1, n_base - 1, 0
    while j > 0 or i > 0:
        out_j[n], out_i[n] = j, i
        n += 1
        k = j * sj + i * si
        vals[0] = flat[k - sj - si] if (j > 0 and i > 0) else np.inf
        vals[1] = flat[k - sj] if j > 0 else np.inf
        vals[2] = flat[k - si] if i > 0 else np.inf
        best = c0
        if vals[c1] < vals[best]:
            best = c1
        if vals[c2] < vals[best]:
            best = c2
        if best == 0:
            j -= 1
            i -= 1
        elif best == 1:
            j -= 1
        else:
            i -= 1
    out_j[n], out_i[n] = 0, 0
    return out_j[: n + 1], out_i[: n + 1]


def _dtw(table: np.ndarray, src_codes: np.ndarray, base_codes: np.ndarray | None, n_base: int,
         tie_order: TieOrder, mode: str, *, transposed: bool = False) -> Alignment:
    """DTW over ``cost[j, i] = table[src_codes[j], base_codes[i]]`` (source rows, base columns), or
    ``table[base_codes[i], src_codes[j]]`` when ``transposed``.

    The recurrence is symmetric in (up, left), so the row loop runs over the shorter side: fewer, longer
    numpy calls. The backtrack then reads D through strides that undo the swap.
    """
    codes = tie_codes(tie_order)
    n_src = len(src_codes)
    if n_src == 0 or n_base == 0:
        raise ValueError("DTW needs at least one token on each side")
    if transposed and n_src <= n_base:
        table, transposed = np.ascontiguousarray(table.T), False
    if n_src <= n_base:
        d = _cumulative(table, src_codes, base_codes)  # d[j, i]
        sj, si = n_base, 1
    else:
        t = table if transposed else np.ascontiguousarray(table.T)
        base_rows = np.arange(n_base) if base_codes is None else base_codes
        d = _cumulative(t, base_rows, src_codes)  # d[i, j]
        sj, si = 1, n_src
    backtrack = _compiled_backtrack() or _backtrack
    js, is_ = backtrack(d.reshape(-1), sj, si, n_src, n_base, *codes)
    return Alignment.from_pairs(np.asarray(is_)[::-1], np.asarray(js)[::-1], n_base, n_src, mode)  # start first


def dtw_from_cost(cost: np.ndarray, tie_order: TieOrder = "fusellm", *, mode: str = "dtw_ed") -> Alignment:
    """The reference DTW on a precomputed integer cost matrix ``cost[j, i]`` (source j × base i).

    The orientation is the reference's ``dtw(blending, base)``: rows are the blending (source) tokens,
    "up" moves to the previous source token and "left" to the previous base token. FuseChat builds its
    own cost (decoded strings, empty-piece fallback) and calls this. Costs must be integers (edit
    distances are): the vectorised recurrence is exact only then.
    """
    cost = np.asarray(cost)
    if cost.ndim != 2:
        raise ValueError("cost must be a 2-D [source, base] matrix")
    if cost.dtype.kind == "f":
        if not np.all(np.isfinite(cost)) or not np.array_equal(cost, np.round(cost)):
            raise ValueError("DTW costs must be finite integers (edit distances) for an exact result")
        cost = cost.astype(np.int64)
    elif cost.dtype.kind not in "iu":
        raise ValueError(f"unsupported cost dtype {cost.dtype}")
    if (cost < 0).any():
        raise ValueError("DTW costs must be non-negative")
    return _dtw(np.ascontiguousarray(cost), np.arange(cost.shape[0]), None, cost.shape[1], tie_order, mode)


def dtw_align(base_strings: Sequence[str], source_strings: Sequence[str], tie_order: TieOrder = "fusellm") -> Alignment:
    """Reference DTW with edit-distance costs between already-normalised strings (e.g. marker-stripped)."""
    ub, base_codes = _factorize(base_strings)
    us, src_codes = _factorize(source_strings)
    return dtw_align_distinct(ub, base_codes, us, src_codes, tie_order)


def dtw_align_distinct(base_strings: Sequence[str], base_codes: np.ndarray, source_strings: Sequence[str],
                       source_codes: np.ndarray, tie_order: TieOrder = "fusellm", mode: str = "dtw_ed") -> Alignment:
    """:func:`dtw_align` for sequences given as codes into lists of strings (base position i is
    ``base_strings[base_codes[i]]``): the distances are computed once per pair of listed strings, so callers that
    know which tokens repeat (equal ids) normalise and compare each distinct piece once."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    def distances(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
        workers = -1 if len(rows) * len(cols) > 250_000 else 1  # threads only pay off on large tables
        return process.cdist(rows, cols, scorer=Levenshtein.distance, workers=workers, dtype=np.int32)

    base_codes, source_codes = np.asarray(base_codes, dtype=np.int64), np.asarray(source_codes, dtype=np.int64)
    if not len(base_codes) or not len(source_codes):
        raise ValueError("DTW needs at least one token on each side")
    if len(source_codes) <= len(base_codes):
        return _dtw(distances(source_strings, base_strings), source_codes, base_codes, len(base_codes), tie_order, mode)
    # the row loop will run over the base side: build the table in that orientation (no transposed copy)
    return _dtw(distances(base_strings, source_strings), source_codes, base_codes, len(base_codes), tie_order, mode,
                transposed=True)


def banded_dtw(src: Sequence[str], base: Sequence[str], lo: np.ndarray, hi: np.ndarray,
                codes: tuple[int, int, int]) -> Alignment:
    """The reference DP restricted to base columns ``lo[j]..hi[j]`` of each source row (inf outside).

    Same recurrence and backtrack; the result equals :func:`dtw_from_cost` whenever the full greedy path
    and every value it compares lie inside the band (e.g. a band as wide as the matrix).
    """
    table, cs, cb = _unique_distances(src, base)
    dist = table.astype(np.float64)
    n_src = len(src)
    width = int((hi - lo).max()) + 1
    band = np.full((n_src, width), np.inf)
    for j in range(n_src):
        lj, h = int(lo[j]), int(hi[j])
        c = dist[cs[j], cb[lj : h + 1]]
        s = np.cumsum(c)
        if j == 0:
            band[0, : h + 1] = s  # lo[0] == 0
            continue
        pl = int(lo[j - 1])
        ext = np.full(h - lj + 2, np.inf)  # D(j-1, lj-1 .. h)
        a, b = max(lj - 1, pl), min(h, int(hi[j - 1]))
        if a <= b:
            ext[a - (lj - 1) : b - (lj - 1) + 1] = band[j - 1, a - pl : b - pl + 1]
        m = np.minimum(ext[1:], ext[:-1])
        band[j, : h - lj + 1] = s + np.minimum.accumulate(c + m - s)

    inf = math.inf

    def value(j: int, i: int) -> float:
        k = i - lo[j]
        return band[j, k] if 0 <= k < width else inf

    j, i = n_src - 1, len(base) - 1
    pairs_j, pairs_i = [], []
    while j > 0 or i > 0:
        pairs_j.append(j)
        pairs_i.append(i)
        vals = (value(j - 1, i - 1) if (j > 0 and i > 0) else inf,
                value(j - 1, i) if j > 0 else inf,
                value(j, i - 1) if i > 0 else inf)
        best = min(codes, key=lambda c: (vals[c], codes.index(c)))
        j, i = (j - 1, i - 1) if best == 0 else (j - 1, i) if best == 1 else (j, i - 1)
    pairs_j.append(0)
    pairs_i.append(0)
    return Alignment.from_pairs(np.asarray(pairs_i), np.asarray(pairs_j), len(base), n_src, "dtw_ed_banded")

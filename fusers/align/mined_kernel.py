"""The compiled MinED search behind :func:`fusers.align.vocab.vocab_map`, on one core or several.

For each query string, the first candidate at the minimal Levenshtein distance (the reference's nearest
piece), found from a hash table of one-deletion neighbourhoods, length buckets and edit-distance lower
bounds instead of scoring every pair. The algorithm is described in :func:`compiled_first_min_ed`; the
numba kernels are in :mod:`fusers.align.mined_numba`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: queries per task handed to a thread: small enough to balance uneven queries, large enough that the
#: per-task cost (a dispatch and the scratch arrays) stays negligible
BLOCK = 64


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def compiled_first_min_ed() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """The compiled search for :func:`fusers.align.vocab._nearest_pieces` (None without numba).

    ``kernel(q_chars, q_starts, c_chars, c_starts, workers=1)`` takes queries and candidates as CSR code
    points (:func:`fusers.align.vocab._code_points`) and returns ``(index, exact)``: per query, the first
    candidate at the minimal distance, and whether that distance is 0.

    1. **Index** (once per candidate list, :func:`fusers.align.mined_numba.build_index`): candidates ordered
       by (length, index) into length buckets, their code points renumbered densely (1, 2, ... in order of
       first appearance; 0 for characters only queries have), per candidate a 64-bit character mask and a
       count signature (32 classes of characters balanced by frequency, 8 bits of count each), per length
       the largest count of each character (128 count slots: one per frequent character, the rest share
       one), and every candidate and every string one deletion away from a candidate by 64-bit polynomial
       hash (radix-sorted; the entries of one key in ascending candidate order).
    2. **Distance 0 and 1** (most queries of a real vocabulary): a candidate within one edit of the query
       equals it, equals one of its deletions, has it as one of its deletions, or shares a deletion with it
       (a substitution). The entries of the query's key and of its ``m`` deletions' keys hold every such
       candidate; each hit is verified against the strings (a hash collision costs time, never a wrong
       answer) and the lowest verified index wins, the first equal candidate before anything else.
    3. **Distance ≥ 2**, with that floor known. A first upper bound comes from the longest substrings of the
       query that are candidates (a length-L one is at distance m - L). **Phase 1** finds the minimal
       distance d* of a query of length m: it visits the lengths m, m-1, m+1, m-2, m+2, ..., each bucket in
       index order, a candidate counting only if it beats the best distance so far, and stops once the
       length difference reaches it (``ED(q, c) ≥ |len(q) - len(c)|``) or it reaches the floor. Every
       candidate phase 1 passed over before its last improvement is farther than d* (its limit was at least
       d* there). **Phase 2** finds the first index at d* among the rest: the buckets visited after the last
       improvement or not at all (within d* of m), each below the lowest index found so far. So ties go to
       the lowest index, exactly as in the plain loop, whatever order the buckets were visited in.

    Lower bounds prune before any scoring, all from ``ED(q, c) ≥ max(len(q), len(c)) - matches``: per
    bucket, the matches a candidate of that length can have (the query's count of each slot capped by the
    largest count of that slot in the bucket); per candidate, cheapest first, the distinct characters one
    string has and the other lacks (each edit removes at most one; 64-bit masks), the matches the count
    signatures allow (per class, the smaller count; eight classes per 64-bit word, SWAR), and the exact
    multiset intersection. Scoring is Hyyrö's bit-parallel Levenshtein (one 64-bit word: queries up to 64
    code points) or, for longer queries, the row DP; both stop as soon as the distance can no longer come
    under the limit.

    **Cores**: with ``workers > 1``, threads answer blocks of :data:`BLOCK` queries against the one shared,
    read-only index; the kernels release the GIL and each call has its own scratch, so the answer does not
    depend on the number of threads. ``cache=True`` keeps the compiled code on disk (compiling takes
    seconds, once).
    """
    try:
        from fusers.align import mined_numba
    except ImportError:
        return None

    def first_min_ed(q_chars: np.ndarray, q_starts: np.ndarray, c_chars: np.ndarray, c_starts: np.ndarray,
                     workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        index = mined_numba.build_index(c_chars, c_starts)
        n_q = len(q_starts) - 1
        out = np.empty(n_q, dtype=np.int64)
        exact = np.zeros(n_q, dtype=np.bool_)
        blocks = [(lo, min(lo + BLOCK, n_q)) for lo in range(0, n_q, BLOCK)]
        workers = max(1, min(int(workers), len(blocks)))
        if workers == 1:
            mined_numba.search_range(q_chars, q_starts, 0, n_q, index, out, exact)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mined") as pool:
                list(pool.map(lambda b: mined_numba.search_range(q_chars, q_starts, b[0], b[1], index, out, exact),
                              blocks))
        return out, exact

    return first_min_ed

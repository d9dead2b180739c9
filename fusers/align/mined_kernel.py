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
from typing import Any

import numpy as np

#: queries per task handed to a thread: small enough to balance uneven queries, large enough that the
#: per-task cost (a dispatch and the scratch arrays) stays negligible
BLOCK = 64

#: the one-deletion table pays for itself from about this many queries on: building it costs about as much as
#: scanning the buckets for the distance-1 queries of a few thousand source pieces (measured on SmolLM2's
#: 49k pieces and a 256k base: 5% and 11% slower with it for a 1,536-piece source)
DELETION_TABLE_QUERIES = 4096

#: below this many query × candidate pairs a whole map takes a few milliseconds, less than starting threads
#: and splitting the index build costs: ``workers=None`` then means one thread
THREADS_FROM_PAIRS = 20_000_000


def default_workers(n_queries: int, n_candidates: int) -> int:
    """Threads for ``workers=None``: every core this process may use, or one for a small map."""
    return available_cores() if n_queries * n_candidates >= THREADS_FROM_PAIRS else 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def compiled_first_min_ed() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """The compiled search for :func:`fusers.align.vocab._nearest_pieces` (None without numba).

    ``kernel(q_chars, q_starts, c_chars, c_starts, workers=1, deletions=None)`` takes queries and candidates as
    CSR code points (:func:`fusers.align.vocab._code_points`) and returns ``(index, exact)``: per query, the
    first candidate at the minimal distance, and whether that distance is 0. ``deletions``: build the
    one-deletion table (None: from :data:`DELETION_TABLE_QUERIES` queries on).

    1. **Index** (once per candidate list, :func:`fusers.align.mined_numba.build_index`): candidates ordered
       by (length, index) into length buckets, their code points renumbered densely (1, 2, ... in order of
       first appearance; 0 for characters only queries have), per candidate a 64-bit character mask and a
       count signature (32 classes of characters balanced by frequency, 8 bits of count each), per length
       the largest count of each character (128 count slots: one per frequent character, the rest share
       one), and every candidate and (with ``deletions``) every string one deletion away from a candidate by
       64-bit polynomial hash (radix-sorted; the entries of one key in ascending candidate order).
    2. **Distance 0 and 1**: the first equal candidate comes from the query's key (verified against the
       strings: a hash collision costs time, never a wrong answer). With the deletion entries, so does
       distance 1: a candidate within one edit of the query equals one of its deletions, has the query as one
       of its deletions, or shares a deletion with it (a substitution), so the entries of the query's key and
       of its ``m`` deletions' keys hold every such candidate; the lowest verified index wins.
    3. **Distance ≥ 2** (≥ 1 without the deletion entries), with that floor known. A first upper bound comes from the longest substrings of the
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

    **Cores**: with ``workers > 1``, threads build the index by ranges (all but its serial core, which numbers
    the characters in order of appearance) and answer blocks of :data:`BLOCK` queries against the one shared,
    read-only index; the kernels release the GIL and each call has its own scratch, so the answer does not
    depend on the number of threads. ``cache=True`` keeps the compiled code on disk (compiling takes
    seconds, once).
    """
    try:
        from fusers.align import mined_numba
    except ImportError:
        return None

    def first_min_ed(q_chars: np.ndarray, q_starts: np.ndarray, c_chars: np.ndarray, c_starts: np.ndarray,
                     workers: int = 1, deletions: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        n_q = len(q_starts) - 1
        if deletions is None:
            deletions = n_q >= DELETION_TABLE_QUERIES
        out = np.empty(n_q, dtype=np.int64)
        exact = np.zeros(n_q, dtype=np.bool_)
        blocks = [(lo, min(lo + BLOCK, n_q)) for lo in range(0, n_q, BLOCK)]
        workers = max(1, int(workers))
        if workers == 1:
            index = build_index(mined_numba, c_chars, c_starts, lambda fn, tasks: [fn(t) for t in tasks], 1, deletions)
            mined_numba.search_range(q_chars, q_starts, 0, n_q, index, out, exact)
            return out, exact
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mined") as pool:
            index = build_index(mined_numba, c_chars, c_starts, lambda fn, tasks: list(pool.map(fn, tasks)),
                                4 * workers, deletions)
            list(pool.map(lambda b: mined_numba.search_range(q_chars, q_starts, b[0], b[1], index, out, exact),
                          blocks))
        return out, exact

    return first_min_ed


def build_index(kernels: Any, c_chars: np.ndarray, c_starts: np.ndarray,
                run: Callable[[Callable[[Any], Any], list[Any]], list[Any]], parts: int, deletions: bool = True) -> tuple:
    """The candidates' index for ``kernels.search_range`` (:mod:`fusers.align.mined_numba`): the serial core,
    then signatures, per-length counts and table entries over ``parts`` ranges of candidates, and the two
    stable radix passes that sort the entries by their keys' top bits, each over ``parts`` ranges of entries.
    ``run(fn, tasks)`` maps ``fn`` over ``tasks`` (in order, or on threads)."""
    (bucket, s_idx, s_start, s_mask, s_chars, pos_of, len_of, dense, n_alpha, cls,
     entry_at) = kernels.build_core(c_chars, c_starts, deletions)
    n_c, n_e = len(s_idx), int(entry_at[-1])
    s_sig = np.zeros((n_c, kernels.SIG_WORDS), dtype=np.uint64)
    keys = np.empty(n_e, dtype=np.uint64)
    codes = np.empty(n_e, dtype=np.int32)
    # candidate ranges of about equal entry counts (the work of build_rows is about proportional to them)
    cuts = np.searchsorted(entry_at, np.linspace(0, n_e, parts + 1)[1:-1])
    bounds = [0, *sorted({int(c) for c in cuts} - {0, n_c}), n_c]
    shares = run(lambda r: kernels.build_rows(r[0], r[1], s_start, s_chars, pos_of, len_of, cls, entry_at, s_sig,
                                              keys, codes), list(zip(bounds[:-1], bounds[1:], strict=True)))
    most = np.zeros((len(bucket) - 1, kernels.N_SLOTS), dtype=np.int32)
    for share in shares:
        np.maximum(most[: len(share)], share, out=most[: len(share)])
    top = int(min(max(8, int(np.ceil(np.log2(max(n_e, 2))))), 26))
    low = top // 2
    ent_key, ent_code = np.empty_like(keys), np.empty_like(codes)
    entry_ranges = [(int(a), int(b)) for a, b in zip(np.linspace(0, n_e, parts + 1).astype(np.int64)[:-1],
                                                     np.linspace(0, n_e, parts + 1).astype(np.int64)[1:], strict=True)]
    _radix_pass(kernels, keys, codes, ent_key, ent_code, 64 - top, low, run, entry_ranges)
    _radix_pass(kernels, ent_key, ent_code, keys, codes, 64 - top + low, top - low, run, entry_ranges)
    return (bucket, s_idx, s_start, s_mask, s_sig, s_chars, pos_of, len_of, dense, n_alpha, cls, most, keys, codes,
            kernels.entry_starts(keys, top), deletions)


def _radix_pass(kernels: Any, keys: np.ndarray, codes: np.ndarray, keys_out: np.ndarray, codes_out: np.ndarray,
                shift: int, bits: int, run: Callable[[Callable[[Any], Any], list[Any]], list[Any]],
                ranges: list[tuple[int, int]]) -> None:
    """One stable counting-sort pass by ``bits`` key bits from ``shift`` up: per range a histogram, then each
    range scatters from its own first slot per digit (digit-major, ranges in order)."""
    counts = np.array(run(lambda r: kernels.radix_histogram(keys, r[0], r[1], shift, bits), ranges))
    starts = np.cumsum(counts.sum(axis=0)) - counts.sum(axis=0)  # where each digit starts
    at = starts[None, :] + np.cumsum(counts, axis=0) - counts  # ... and each range within it
    run(lambda k: kernels.radix_scatter(keys, codes, ranges[k][0], ranges[k][1], shift, bits, at[k].copy(),
                                        keys_out, codes_out), list(range(len(ranges))))

"""The numba-compiled parts of the MinED search; :mod:`fusers.align.mined_kernel` drives them.

Imported only by :func:`fusers.align.mined_kernel.compiled_first_min_ed` (importing numba costs time that a
process which never builds a vocabulary map should not pay). Two kernels:

* :func:`build_core`, :func:`build_rows`, :func:`radix_histogram` / :func:`radix_scatter` and
  :func:`entry_starts` index the candidates (the base vocabulary) once: length buckets, dense character ids,
  64-bit character masks, character-count signatures, per-length largest character counts, and a table of
  every candidate string and every string one deletion away from a candidate, by hash. All but the core
  work on ranges, so threads share them.
* :func:`search_range` answers a range of queries against that index. It holds no shared mutable state
  (each call allocates its own scratch), so threads can answer disjoint ranges at once (``nogil``).

The algorithm is described in :func:`fusers.align.mined_kernel.compiled_first_min_ed`.
"""

from __future__ import annotations

import numba
import numpy as np

N_SLOTS = 128  # character-count slots: one per frequent character id, the rest share the last one
_BIG = np.int64(1) << np.int64(40)

_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_LOW63 = np.uint64(63)
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # polynomial hash base (odd)
_GOLD = np.uint64(0xC2B2AE3D27D4EB4F)
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S33 = np.uint64(33)
_S56 = np.uint64(56)
_S7 = np.uint64(7)
_GUARD = np.uint64(0x8080808080808080)
_BYTE = np.uint64(0xFF)
N_CLASSES = 32  # character classes of the count signatures ...
SIG_WORDS = N_CLASSES // 8  # ... eight 8-bit counts per 64-bit word
SIG_LONGEST = 127  # strings longer than this have no count signature (a count must fit 7 bits)


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x: np.uint64) -> np.uint64:  # pragma: no cover
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    return (((x + (x >> _S4)) & _M4) * _H01) >> _S56


@numba.njit(cache=True, nogil=True, inline="always")
def _common(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover
    """Sum over the eight byte lanes of ``min(a, b)`` (every lane at most 127, the sum at most 255)."""
    ge = (((a | _GUARD) - b) & _GUARD) >> _S7  # 1 in the lanes where a >= b
    take_b = ge * _BYTE
    return (((b & take_b) | (a & ~take_b)) * _H01) >> _S56


@numba.njit(cache=True, nogil=True, inline="always")
def _key(h: np.uint64, n: np.int64) -> np.uint64:  # pragma: no cover
    """Table key of a string from its polynomial hash ``h`` and its length ``n``."""
    h = h ^ (np.uint64(n) * _GOLD)
    h = (h ^ (h >> _S33)) * _MIX
    return h ^ (h >> _S33)


@numba.njit(cache=True, nogil=True)
def radix_histogram(keys: np.ndarray, lo: np.int64, hi: np.int64, shift: np.int64, bits: np.int64) -> np.ndarray:  # pragma: no cover
    """Counts of the digit ``(key >> shift) & (2**bits - 1)`` over ``keys[lo:hi]`` (one radix pass, one range)."""
    mask = np.uint64((np.int64(1) << bits) - 1)
    sh = np.uint64(shift)
    count = np.zeros(np.int64(1) << bits, dtype=np.int64)
    for j in range(lo, hi):
        count[np.int64((keys[j] >> sh) & mask)] += 1
    return count


@numba.njit(cache=True, nogil=True)
def radix_scatter(keys: np.ndarray, codes: np.ndarray, lo: np.int64, hi: np.int64, shift: np.int64, bits: np.int64,
                  at: np.ndarray, keys_out: np.ndarray, codes_out: np.ndarray) -> None:  # pragma: no cover
    """Move ``keys[lo:hi]`` (and codes) to their digit's next slot, ``at`` holding this range's first slot per digit:
    ranges in order and each range in order keep the pass stable."""
    mask = np.uint64((np.int64(1) << bits) - 1)
    sh = np.uint64(shift)
    for j in range(lo, hi):
        d = np.int64((keys[j] >> sh) & mask)
        p = at[d]
        keys_out[p] = keys[j]
        codes_out[p] = codes[j]
        at[d] = p + 1


@numba.njit(cache=True, nogil=True)
def _within_one(q: np.ndarray, m: np.int64, s_chars: np.ndarray, a: np.int64, n: np.int64) -> bool:  # pragma: no cover
    """Whether ``ED(q[:m], s_chars[a:a + n]) <= 1``."""
    if n == m:
        wrong = 0
        for k in range(m):
            if q[k] != s_chars[a + k]:
                wrong += 1
                if wrong > 1:
                    return False
        return True
    if n == m + 1:  # the candidate has one character more
        k = 0
        while k < m and q[k] == s_chars[a + k]:
            k += 1
        for j in range(k, m):  # noqa: SIM110  (numba compiles no generator for all())
            if q[j] != s_chars[a + j + 1]:
                return False
        return True
    if n == m - 1:
        k = 0
        while k < n and q[k] == s_chars[a + k]:
            k += 1
        for j in range(k, n):  # noqa: SIM110
            if q[j + 1] != s_chars[a + j]:
                return False
        return True
    return False


@numba.njit(cache=True, nogil=True)
def build_core(c_chars: np.ndarray, c_starts: np.ndarray, deletions: bool):  # pragma: no cover
    """The serial part of indexing the candidates ``c_chars[c_starts[i]:c_starts[i + 1]]`` (code points).

    Returns ``bucket`` (sorted positions of the length-n candidates are ``bucket[n]:bucket[n + 1]``, by index
    inside a length); per sorted position ``s_idx`` (the candidate's index), ``s_start`` (where its dense
    character ids start in ``s_chars``) and ``s_mask`` (64-bit character mask); ``s_chars``; ``pos_of`` (index
    -> sorted position); ``len_of`` (index -> length); ``dense`` (code point -> dense id, 0 for code points no
    candidate has); ``n_alpha`` (the largest dense id); ``cls`` (dense id -> signature class: the ids by
    frequency, each into the class with the fewest occurrences so far); ``entry_at`` (index -> where its
    entries start: the candidate itself and, with ``deletions``, each distinct string one deletion away from
    it). Dense ids are
    numbered in order of first appearance, which is what makes this part serial; :func:`build_rows` and the
    radix passes do the rest by ranges.
    """
    n_c = c_starts.shape[0] - 1
    max_cp = 0
    for p in range(c_chars.shape[0]):
        max_cp = max(max_cp, c_chars[p])
    max_len = 0
    for i in range(n_c):
        max_len = max(max_len, c_starts[i + 1] - c_starts[i])

    bucket = np.zeros(max_len + 2, dtype=np.int64)
    for i in range(n_c):
        bucket[c_starts[i + 1] - c_starts[i] + 1] += 1
    chars_at = np.zeros(max_len + 1, dtype=np.int64)  # where the length-n candidates' characters start
    for n in range(1, max_len + 1):
        chars_at[n] = chars_at[n - 1] + (n - 1) * bucket[n]
    for n in range(1, max_len + 2):
        bucket[n] += bucket[n - 1]
    fill = bucket.copy()
    s_idx = np.empty(n_c, dtype=np.int64)
    s_start = np.empty(n_c, dtype=np.int64)
    s_mask = np.empty(n_c, dtype=np.uint64)
    pos_of = np.empty(n_c, dtype=np.int64)
    len_of = np.empty(n_c, dtype=np.int64)
    entry_at = np.zeros(n_c + 1, dtype=np.int64)
    s_chars = np.empty(c_chars.shape[0], dtype=np.int32)
    dense = np.zeros(max_cp + 1, dtype=np.int32)
    n_alpha = 0
    for i in range(n_c):
        a = c_starts[i]
        n = c_starts[i + 1] - a
        p = fill[n]
        fill[n] += 1
        at = chars_at[n] + (p - bucket[n]) * n
        s_idx[p] = i
        s_start[p] = at
        pos_of[i] = p
        len_of[i] = n
        mask = _ZERO
        entries = 1
        for k in range(n):
            t = dense[c_chars[a + k]]
            if t == 0:
                n_alpha += 1
                t = n_alpha
                dense[c_chars[a + k]] = t
            s_chars[at + k] = t
            mask |= _ONE << (np.uint64(t) & _LOW63)
            if deletions and (k == 0 or c_chars[a + k] != c_chars[a + k - 1]):
                entries += 1  # deleting any character of a run gives the same string
        s_mask[p] = mask
        entry_at[i + 1] = entry_at[i] + entries

    freq = np.zeros(n_alpha + 1, dtype=np.int64)
    for k in range(c_chars.shape[0]):
        freq[s_chars[k]] += 1
    cls = np.zeros(n_alpha + 1, dtype=np.int64)
    load = np.zeros(N_CLASSES, dtype=np.int64)
    for t in np.argsort(-freq[1:], kind="mergesort") + 1:
        lightest = np.argmin(load)
        cls[t] = lightest
        load[lightest] += freq[t]
    return bucket, s_idx, s_start, s_mask, s_chars, pos_of, len_of, dense, np.int64(n_alpha), cls, entry_at


@numba.njit(cache=True, nogil=True)
def build_rows(lo: np.int64, hi: np.int64, s_start: np.ndarray, s_chars: np.ndarray, pos_of: np.ndarray,
               len_of: np.ndarray, cls: np.ndarray, entry_at: np.ndarray, s_sig: np.ndarray, keys: np.ndarray,
               codes: np.ndarray) -> np.ndarray:  # pragma: no cover
    """For candidates ``lo..hi-1`` (by index): their count signatures into ``s_sig`` (by sorted position) and
    their entries (the candidate's key, code ``2i``, then each distinct one-deletion key, code ``2i + 1``) into
    ``keys``/``codes`` from ``entry_at[i]``. Returns this range's share of ``most`` (per length and count slot,
    the largest count); ranges write disjoint slots, so threads can fill them at once."""
    max_len = 0
    for i in range(lo, hi):
        max_len = max(max_len, len_of[i])
    most = np.zeros((max_len + 1, N_SLOTS), dtype=np.int32)
    scratch = np.zeros(N_SLOTS, dtype=np.int32)
    pw = np.empty(max_len + 1, dtype=np.uint64)
    pw[0] = _ONE
    for k in range(1, max_len + 1):
        pw[k] = pw[k - 1] * _BASE
    pre = np.empty(max_len + 1, dtype=np.uint64)
    for i in range(lo, hi):
        p = pos_of[i]
        a = s_start[p]
        n = len_of[i]
        if n > SIG_LONGEST:
            s_sig[p, :] = _GUARD - _H01  # 127 in every lane: never prunes
        else:
            for k in range(a, a + n):
                c = cls[s_chars[k]]
                s_sig[p, c >> 3] += _ONE << np.uint64(8 * (c & 7))
        for k in range(a, a + n):
            scratch[min(s_chars[k], N_SLOTS - 1)] += 1
        for k in range(a, a + n):
            t = min(s_chars[k], N_SLOTS - 1)
            if scratch[t]:
                most[n, t] = max(most[n, t], scratch[t])
                scratch[t] = 0
        pre[0] = _ZERO
        for k in range(n):
            pre[k + 1] = pre[k] * _BASE + np.uint64(s_chars[a + k] + 1)
        e = entry_at[i]
        keys[e] = _key(pre[n], n)
        codes[e] = 2 * i
        e += 1
        for v in range(n if e < entry_at[i + 1] else 0):  # no deletion entries were counted: none
            if v > 0 and s_chars[a + v] == s_chars[a + v - 1]:
                continue  # the same string as deleting v - 1
            keys[e] = _key(pre[n] + (pre[v] - pre[v + 1]) * pw[n - 1 - v], n - 1)
            codes[e] = 2 * i + 1
            e += 1
    return most


@numba.njit(cache=True, nogil=True)
def entry_starts(ent_key: np.ndarray, top: np.int64) -> np.ndarray:  # pragma: no cover
    """``ent_at`` over entries sorted by their keys' top ``top`` bits: those starting with t are
    ``ent_at[t]:ent_at[t + 1]``."""
    ent_at = np.zeros((np.int64(1) << top) + 1, dtype=np.int32)
    shift = np.uint64(64 - top)
    for e in range(ent_key.shape[0]):
        ent_at[np.int64(ent_key[e] >> shift) + 1] += 1
    for t in range(np.int64(1) << top):
        ent_at[t + 1] += ent_at[t]
    return ent_at


@numba.njit(cache=True, nogil=True)
def _distance_within(q_ids: np.ndarray, m: np.int64, peq: np.ndarray, row: np.ndarray, s_chars: np.ndarray,
                     ca: np.int64, n: np.int64, limit: np.int64) -> np.int64:  # pragma: no cover
    """``ED(query, candidate)`` if it is at most ``limit``, else a value above ``limit`` (stops early).

    Hyyrö's bit-parallel Levenshtein (2003) for queries of at most 64 characters (``peq``: per dense id,
    its positions in the query), the row DP over the candidate for longer ones.
    """
    if m == 0 or n == 0:
        return m + n
    if m <= 64:
        top = np.uint64(m - 1)
        vp = ~_ZERO
        vn = _ZERO
        d = m
        for j in range(n):
            pm = peq[s_chars[ca + j]]
            d0 = (((pm & vp) + vp) ^ vp) | pm | vn
            hp = vn | ~(d0 | vp)
            hn = d0 & vp
            d += np.int64((hp >> top) & _ONE) - np.int64((hn >> top) & _ONE)  # the last row's step, branch-free
            if d - (n - 1 - j) > limit:
                return limit + 1
            hp = (hp << _ONE) | _ONE
            hn = hn << _ONE
            vp = hn | ~(d0 | hp)
            vn = hp & d0
        return d
    for k in range(n + 1):
        row[k] = k
    for a in range(m):
        ch = q_ids[a]
        diag = row[0]
        row[0] = a + 1
        lowest = row[0]
        for k in range(1, n + 1):
            up = row[k]
            v = diag if s_chars[ca + k - 1] == ch else diag + 1
            if up + 1 < v:
                v = up + 1
            if row[k - 1] + 1 < v:
                v = row[k - 1] + 1
            row[k] = v
            diag = up
            if v < lowest:
                lowest = v
        if lowest > limit:
            return limit + 1
    return row[n]


@numba.njit(cache=True, nogil=True)
def _scan(lo: np.int64, hi: np.int64, n: np.int64, limit: np.int64, q_ids: np.ndarray, m: np.int64,
          q_mask: np.uint64, q_sig: np.ndarray, avail: np.ndarray, q_count: np.ndarray,
          peq: np.ndarray, row: np.ndarray, s_mask: np.ndarray, s_sig: np.ndarray, s_start: np.ndarray,
          s_chars: np.ndarray) -> tuple[np.int64, np.int64]:  # pragma: no cover
    """``(position, distance)`` of the first sorted position in ``[lo, hi)`` (length-n candidates) within
    ``limit`` of the query, ``(hi, 0)`` if none.

    Lower bounds first, cheapest first, all from ``ED ≥ max(m, n) - matches``: the distinct characters one
    string has and the other lacks (each edit removes at most one; 64-bit masks); the matches the count
    signatures allow (per class, the smaller count); then the exact multiset intersection.
    """
    longer = max(m, n)
    need = np.uint64(max(longer - limit, 0))  # matches a candidate needs to be within the limit
    signed = m <= SIG_LONGEST
    for r in range(lo, hi):
        c_mask = s_mask[r]
        if _popcount(q_mask & ~c_mask) > limit or _popcount(c_mask & ~q_mask) > limit:
            continue
        if signed:
            common = _ZERO
            for w in range(SIG_WORDS):
                common += _common(q_sig[w], s_sig[r, w])
            if common < need:
                continue
        ca = s_start[r]
        matches = 0
        for j in range(ca, ca + n):
            t = s_chars[j]
            if avail[t] > 0:
                avail[t] -= 1
                matches += 1
        for j in range(ca, ca + n):
            avail[s_chars[j]] = q_count[s_chars[j]]
        if longer - matches > limit:
            continue
        d = _distance_within(q_ids, m, peq, row, s_chars, ca, n, limit)
        if d <= limit:
            return r, d
    return hi, np.int64(0)


@numba.njit(cache=True, nogil=True)
def _length_bound(n: np.int64, m: np.int64, floor: np.int64, n_q_slots: np.int64, q_slots: np.ndarray,
                  count: np.ndarray, most: np.ndarray) -> np.int64:  # pragma: no cover
    """A lower bound of the query's distance to every length-n candidate: the length difference, ``floor``
    (what is already known), and ``max(m, n)`` minus the matches a length-n candidate can have (per count
    slot, the query's count capped by the largest count a length-n candidate has)."""
    common = 0
    for k in range(n_q_slots):
        s = q_slots[k]
        common += min(count[s], most[n, s])
    return max(abs(n - m), floor, max(m, n) - min(common, n))


@numba.njit(cache=True, nogil=True)
def search_range(q_chars: np.ndarray, q_starts: np.ndarray, lo: np.int64, hi: np.int64, index,
                 out: np.ndarray, exact: np.ndarray) -> None:  # pragma: no cover
    """Answer queries ``lo..hi-1``: ``out[q]`` the first candidate at the minimal distance, ``exact[q]``
    whether that distance is 0. Writes nothing else, so disjoint ranges can run in parallel."""
    (bucket, s_idx, s_start, s_mask, s_sig, s_chars, pos_of, len_of, dense, n_alpha, cls, most, ent_key, ent_code,
     ent_at, deletions) = index
    top = 0
    while (np.int64(1) << top) < ent_at.shape[0] - 1:
        top += 1
    shift = np.uint64(64 - top)  # an entry key's top bits: where its entries start in ent_at
    n_c = s_idx.shape[0]
    max_len = bucket.shape[0] - 2
    max_cp = dense.shape[0] - 1
    max_q = 0
    for q in range(lo, hi):
        max_q = max(max_q, q_starts[q + 1] - q_starts[q])
    pw = np.empty(max_q + 1, dtype=np.uint64)
    pw[0] = _ONE
    for k in range(1, max_q + 1):
        pw[k] = pw[k - 1] * _BASE
    q_ids = np.empty(max_q, dtype=np.int32)
    pre = np.empty(max_q + 1, dtype=np.uint64)
    q_slots = np.empty(N_SLOTS, dtype=np.int64)
    count = np.zeros(N_SLOTS, dtype=np.int64)  # per query: its characters per count slot
    peq = np.zeros(n_alpha + 1, dtype=np.uint64)  # per query: dense id -> its positions in the query
    q_count = np.zeros(n_alpha + 1, dtype=np.int64)  # per query: dense id -> its count in the query
    q_sig = np.zeros(SIG_WORDS, dtype=np.uint64)  # per query: its count signature
    avail = np.zeros(n_alpha + 1, dtype=np.int64)  # scratch of the multiset bound (equal to q_count between uses)
    row = np.empty(max_len + 1, dtype=np.int64)
    for q in range(lo, hi):
        qa = q_starts[q]
        m = q_starts[q + 1] - qa
        pre[0] = _ZERO
        for j in range(m):
            cp = q_chars[qa + j]
            t = dense[cp] if 0 <= cp <= max_cp else 0
            q_ids[j] = t
            pre[j + 1] = pre[j] * _BASE + np.uint64(t + 1)

        # distance 0 or 1, from the chains of the query and of the strings one deletion away from it: a
        # candidate within one edit equals the query, equals one of its deletions, has the query as one of
        # its deletions, or shares a deletion with it (every chain hit is verified)
        best = n_c
        is_exact = False
        key = _key(pre[m], m)
        t = np.int64(key >> shift)
        for e in range(ent_at[t], ent_at[t + 1]):
            if ent_key[e] != key:
                continue
            c = ent_code[e] >> 1
            ca = s_start[pos_of[c]]
            if ent_code[e] & 1 == 0:
                if len_of[c] == m:
                    same = True
                    for k in range(m):
                        if q_ids[k] != s_chars[ca + k]:
                            same = False
                            break
                    if same:
                        is_exact = True
                        best = c
                        break
            elif c < best and _within_one(q_ids, m, s_chars, ca, len_of[c]):
                best = c
        if is_exact:
            out[q] = best
            exact[q] = True
            continue
        for v in range(m if deletions else 0):
            if v > 0 and q_ids[v] == q_ids[v - 1]:
                continue  # the same string as deleting v - 1
            key = _key(pre[m] + (pre[v] - pre[v + 1]) * pw[m - 1 - v], m - 1)
            t = np.int64(key >> shift)
            for e in range(ent_at[t], ent_at[t + 1]):
                c = ent_code[e] >> 1
                if c >= best:
                    break  # entries ascend
                if ent_key[e] == key and _within_one(q_ids, m, s_chars, s_start[pos_of[c]], len_of[c]):
                    best = c
                    break
        exact[q] = False
        if best < n_c:
            out[q] = best
            continue

        # distance >= 2 (>= 1 without the deletion entries): length buckets and lower bounds
        floor = 2 if deletions else 1
        q_mask = _ZERO
        q_sig[:] = _ZERO
        n_q_slots = 0
        for j in range(m):
            t = q_ids[j]
            q_mask |= _ONE << (np.uint64(t) & _LOW63)
            s = min(t, N_SLOTS - 1)
            if count[s] == 0:
                q_slots[n_q_slots] = s
                n_q_slots += 1
            count[s] += 1
            if t > 0:  # characters no candidate has match nothing
                q_count[t] += 1
                avail[t] += 1
                c = cls[t]
                q_sig[c >> 3] += _ONE << np.uint64(8 * (c & 7))
            if m <= 64:
                peq[t] |= _ONE << np.uint64(j)
        # Phase 1 finds the minimal distance d*: lengths in the order m, m-1, m+1, m-2, ..., each bucket in
        # index order, a candidate counting only if it beats the best so far. Every candidate it passed
        # over before its last improvement is farther than d* (the limit there was at least d*).
        best_d = _BIG
        best_i = n_c
        # A first upper bound: the longest substrings of the query that are candidates (at distance m - L),
        # the lowest index among them. Phase 1 then starts at that limit instead of improving from above.
        for length in range(m - 2, m // 2 - 1, -1):
            if length < 1 or bucket[length] == bucket[length + 1]:
                continue
            for i in range(m - length + 1):
                key = _key(pre[i + length] - pre[i] * pw[length], length)
                t = np.int64(key >> shift)
                for e in range(ent_at[t], ent_at[t + 1]):
                    c = ent_code[e] >> 1
                    if c >= best_i:
                        break
                    if ent_key[e] == key and ent_code[e] & 1 == 0 and len_of[c] == length:
                        ca = s_start[pos_of[c]]
                        same = True
                        for k in range(length):
                            if q_ids[i + k] != s_chars[ca + k]:
                                same = False
                                break
                        if same:
                            best_d = m - length
                            best_i = c
                            break
            if best_i < n_c:
                break
        visit_best = -1  # no improvement yet: phase 2 covers every length if none comes
        visit = -1
        while True:
            visit += 1
            delta = (visit + 1) // 2
            if delta >= best_d or best_d <= floor or (delta > m and m + delta > max_len):
                break
            n = m + delta if visit % 2 == 0 else m - delta
            if n < 0 or n > max_len or bucket[n] == bucket[n + 1]:
                continue
            if _length_bound(n, m, floor, n_q_slots, q_slots, count, most) > best_d - 1:
                continue
            r = bucket[n]
            end = bucket[n + 1]
            while r < end:
                r, d = _scan(r, end, n, best_d - 1, q_ids, m, q_mask, q_sig, avail, q_count, peq, row,
                             s_mask, s_sig, s_start, s_chars)
                if r >= end:
                    break
                best_d = d
                best_i = s_idx[r]
                visit_best = visit
                if best_d <= floor or _length_bound(n, m, floor, n_q_slots, q_slots, count, most) > best_d - 1:
                    break
                r += 1
        # Phase 2: the first index at d* among the rest (the lengths phase 1 reached after its last
        # improvement or not at all), below the index phase 1 found: ties go to the lowest index.
        d_star = best_d
        for n in range(max(m - d_star, 0), min(m + d_star, max_len) + 1):
            delta = abs(n - m)
            if 2 * delta - (1 if n < m else 0) <= visit_best or bucket[n] == bucket[n + 1]:
                continue
            if _length_bound(n, m, floor, n_q_slots, q_slots, count, most) > d_star:
                continue
            start = bucket[n]
            cut = start + np.searchsorted(s_idx[start:bucket[n + 1]], best_i)
            r, d = _scan(start, cut, n, d_star, q_ids, m, q_mask, q_sig, avail, q_count, peq, row,
                             s_mask, s_sig, s_start, s_chars)
            if r < cut:
                best_i = s_idx[r]
        out[q] = best_i
        for j in range(m):
            t = q_ids[j]
            peq[t] = _ZERO
            q_count[t] = 0
            avail[t] = 0
            count[min(t, N_SLOTS - 1)] = 0

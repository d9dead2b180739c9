"""The numba-compiled MinED search behind :func:`fusers.align.vocab.vocab_map`.

For each query string, the first candidate at the minimal Levenshtein distance (the reference's nearest
piece), found with length buckets and edit-distance lower bounds instead of scoring every pair. The
algorithm is described in :func:`compiled_first_min_ed`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np


@functools.cache
def compiled_first_min_ed() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """numba-compiled search for :func:`fusers.align.vocab._nearest_pieces` (None without numba).

    ``kernel(q_chars, q_starts, c_chars, c_starts)`` takes queries and candidates as CSR code points
    (:func:`fusers.align.vocab._code_points`) and returns ``(index, exact)``.

    1. Exact matches come from a hash table of the candidates (open addressing, first index kept). Every
       other query is at distance ≥ 1 from every candidate.
    2. Candidates are ordered by (length, index) into length buckets, their code points renumbered
       densely (1, 2, ... in order of first appearance; 0 for characters only queries have).
       **Phase 1** finds the minimal distance d* of a query of length m: it visits the lengths m, m-1,
       m+1, m-2, m+2, ..., each bucket in index order, a candidate counting only if it beats the best
       distance so far, and stops once the length difference reaches it (``ED(q, c) ≥ |len(q) - len(c)|``)
       or it is 1. Every candidate phase 1 passed over before its last improvement is farther than d*
       (its limit was at least d* there). **Phase 2** finds the first index at d* among the rest: the
       buckets visited after the last improvement or not at all (within d* of m), merged in index order,
       below the index phase 1 found; the first candidate at d* ends it. So ties go to the lowest index,
       exactly as in the plain loop, whatever order the buckets were visited in.

    Lower bounds prune before any scoring, all from ``ED(q, c) ≥ max(len(q), len(c)) - matches``:

    * per bucket, recomputed after each improvement (once the best distance is at most the longer
      length): the matches a candidate of that length can have, from the query's count of each of its
      characters, capped by the largest count any candidate of that length has where that could rule out
      the whole bucket (128 character slots: one per frequent character, the rest share one; 64-bit
      presence per bucket; counts filled in lazily, one slot or, once a bucket has needed four, the whole
      bucket);
    * per candidate: the distinct characters one string has and the other lacks (each edit removes at
      most one), counted on 64-bit presence masks; then the candidate's characters found in the query.

    Scoring is Hyyrö's bit-parallel Levenshtein (one 64-bit word: queries up to 64 code points) or, for
    longer queries, the row DP; both stop as soon as the distance can no longer come under the limit.
    ``cache=True`` keeps the compiled code on disk (compiling takes a few seconds, once).
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def first_min_ed(q_chars: np.ndarray, q_starts: np.ndarray, c_chars: np.ndarray,
                     c_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        one = np.uint64(1)
        zero = np.uint64(0)
        low63 = np.uint64(63)
        m1 = np.uint64(0x5555555555555555)
        m2 = np.uint64(0x3333333333333333)
        m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
        h01 = np.uint64(0x0101010101010101)
        fnv = np.uint64(0x100000001B3)
        basis = np.uint64(0xCBF29CE484222325)
        mix = np.uint64(0xFF51AFD7ED558CCD)
        n_slots = 128
        n_q = q_starts.shape[0] - 1
        n_c = c_starts.shape[0] - 1

        max_cp = 0
        for p in range(c_chars.shape[0]):
            max_cp = max(max_cp, c_chars[p])
        max_len = 0
        for i in range(n_c):
            max_len = max(max_len, c_starts[i + 1] - c_starts[i])
        # candidates by (length, index): bucket[n]:bucket[n + 1] holds the length-n ones, their code
        # points (dense ids) from chars_at[n] on
        bucket = np.zeros(max_len + 2, dtype=np.int64)
        for i in range(n_c):
            bucket[c_starts[i + 1] - c_starts[i] + 1] += 1
        chars_at = np.zeros(max_len + 1, dtype=np.int64)
        for n in range(1, max_len + 1):
            chars_at[n] = chars_at[n - 1] + (n - 1) * bucket[n]
        for n in range(1, max_len + 2):
            bucket[n] += bucket[n - 1]
        fill = bucket.copy()
        s_idx = np.empty(n_c, dtype=np.int64)
        s_start = np.empty(n_c, dtype=np.int64)
        s_mask = np.empty(n_c, dtype=np.uint64)
        n_mask = np.zeros(max_len + 1, dtype=np.uint64)  # per length: the union of the masks
        s_chars = np.empty(c_chars.shape[0], dtype=np.int32)
        dense = np.zeros(max_cp + 1, dtype=np.int32)
        n_alpha = 0
        size = 1
        while size < 2 * n_c:
            size *= 2
        table = np.full(size, -1, dtype=np.int64)  # hash slot -> first candidate index
        c_hash = np.empty(n_c, dtype=np.uint64)
        for i in range(n_c):
            a = c_starts[i]
            n = c_starts[i + 1] - a
            p = fill[n]
            fill[n] += 1
            at = chars_at[n] + (p - bucket[n]) * n
            s_idx[p] = i
            s_start[p] = at
            mask = zero
            h = basis
            for k in range(n):
                cp = c_chars[a + k]
                t = dense[cp]
                if t == 0:
                    n_alpha += 1
                    t = n_alpha
                    dense[cp] = t
                s_chars[at + k] = t
                mask |= one << (np.uint64(t) & low63)
                h = (h ^ np.uint64(cp)) * fnv
            s_mask[p] = mask
            n_mask[n] |= mask
            h = (h ^ (h >> np.uint64(33))) * mix
            h ^= h >> np.uint64(33)
            c_hash[i] = h
            slot = np.int64(h & np.uint64(size - 1))
            while table[slot] >= 0:
                j = table[slot]
                if c_hash[j] == h and c_starts[j + 1] - c_starts[j] == n:
                    same = True
                    for k in range(n):
                        if c_chars[c_starts[j] + k] != c_chars[a + k]:
                            same = False
                            break
                    if same:
                        break
                slot = (slot + 1) & (size - 1)
            if table[slot] < 0:
                table[slot] = i

        most = np.full((max_len + 1, n_slots), -1, dtype=np.int64)  # per length and slot: largest count
        lazy = np.zeros(max_len + 1, dtype=np.int64)  # single slots filled in per bucket
        scratch = np.zeros(n_slots, dtype=np.int64)
        bound_of = np.zeros(max_len + 1, dtype=np.int64)  # per query: bound_of[n] if bound_for[n] == q
        bound_for = np.full(max_len + 1, -1, dtype=np.int64)
        head = np.empty(max_len + 1, dtype=np.int64)  # phase 2: next position per length merged
        head_n = np.empty(max_len + 1, dtype=np.int64)
        lb = 0
        max_q = 0
        for q in range(n_q):
            max_q = max(max_q, q_starts[q + 1] - q_starts[q])
        q_ids = np.empty(max_q, dtype=np.int32)
        q_slots = np.empty(n_slots, dtype=np.int64)
        count = np.zeros(n_slots, dtype=np.int64)  # per query: characters per slot
        peq = np.zeros(n_alpha + 1, dtype=np.uint64)  # per query: id -> its positions in the query
        seen = np.zeros(n_alpha + 1, dtype=np.int64)  # per query: 1 for its ids
        row = np.empty(max_len + 1, dtype=np.int64)
        out = np.empty(n_q, dtype=np.int64)
        exact = np.zeros(n_q, dtype=np.bool_)
        for q in range(n_q):
            qa = q_starts[q]
            m = q_starts[q + 1] - qa
            h = basis
            for j in range(m):
                h = (h ^ np.uint64(q_chars[qa + j])) * fnv
            h = (h ^ (h >> np.uint64(33))) * mix
            h ^= h >> np.uint64(33)
            slot = np.int64(h & np.uint64(size - 1))
            found = -1
            while table[slot] >= 0:
                j = table[slot]
                if c_hash[j] == h and c_starts[j + 1] - c_starts[j] == m:
                    same = True
                    for k in range(m):
                        if c_chars[c_starts[j] + k] != q_chars[qa + k]:
                            same = False
                            break
                    if same:
                        found = j
                        break
                slot = (slot + 1) & (size - 1)
            if found >= 0:
                out[q] = found
                exact[q] = True
                continue

            q_mask = zero
            n_q_slots = 0
            for j in range(m):
                cp = q_chars[qa + j]
                t = dense[cp] if cp <= max_cp else 0
                q_ids[j] = t
                q_mask |= one << (np.uint64(t) & low63)
                s = min(t, n_slots - 1)
                if count[s] == 0:
                    q_slots[n_q_slots] = s
                    n_q_slots += 1
                count[s] += 1
                seen[t] = 1
            bits = 0 < m <= 64
            if bits:
                for j in range(m):
                    peq[q_ids[j]] |= one << np.uint64(j)
            last = one << np.uint64(max(m - 1, 0))
            best_d = max(m, max_len) + 1  # above any distance
            best_i = n_c
            # Phase 1 finds the minimal distance d*: lengths in the order m, m-1, m+1, m-2, ..., each
            # bucket in index order, a candidate counting only if it beats the best so far. Everything it
            # passed over before its last improvement is farther than d*: there the limit was at least
            # d*. Phase 2 finds the first index at d* among the rest: the lengths phase 1 reached later or
            # not at all, merged in index order, below the index phase 1 found.
            phase = 1
            visit = -1  # the how-many-th length phase 1 is at
            visit_best = 0  # ... and was at when it last improved
            p = 0
            p_end = 0
            bound = 1  # no candidate of the current length is closer
            resume = -1  # where to go on in the current length once its bound is (re)computed
            d_star = 0
            n_heads = 0
            while True:
                if phase == 1:
                    if resume < 0 and (p >= p_end or best_d - 1 < bound):  # on to the next length
                        visit += 1
                        delta = (visit + 1) // 2
                        if delta >= best_d or best_d == 1 or (delta > m and m + delta > max_len):
                            phase = 2
                            d_star = best_d
                            for n in range(max(m - d_star, 0), min(m + d_star, max_len) + 1):
                                delta = abs(n - m)
                                if (bucket[n] == bucket[n + 1] or 2 * delta - (n < m) <= visit_best
                                        or (bound_for[n] == q and bound_of[n] > d_star)):
                                    continue
                                head[n_heads] = bucket[n]
                                head_n[n_heads] = n
                                n_heads += 1
                            continue
                        n = m - delta if visit % 2 else m + delta
                        p = p_end = 0
                        if n < 0 or n > max_len or bucket[n] == bucket[n + 1]:
                            continue
                        resume = bucket[n]
                    if resume >= 0:  # the bound of this length, again after each improvement
                        delta = abs(n - m)
                        bound = max(delta, 1)
                        if 1 < best_d <= max(m, n):
                            # the matches a length-n candidate can have: per slot of the query, none if
                            # no length-n candidate has it, else the query's count or, once known, the
                            # largest count a length-n candidate has
                            have = n_mask[n]
                            for attempt in range(2):
                                common = 0
                                spare = 0  # what the unknown largest counts could take off at most
                                for k in range(n_q_slots):
                                    s = q_slots[k]
                                    if s == 0 or (s < n_slots - 1 and (have >> np.uint64(s & 63)) & one == zero):
                                        continue
                                    if attempt and count[s] > 1 and most[n, s] < 0:
                                        if lazy[n] < 4:  # this slot only
                                            lazy[n] += 1
                                            v = 0
                                            for r in range(bucket[n], bucket[n + 1]):
                                                c = 0
                                                for j in range(s_start[r], s_start[r] + n):
                                                    if min(s_chars[j], n_slots - 1) == s:
                                                        c += 1
                                                v = max(v, c)
                                            most[n, s] = v
                                        else:  # every slot of this bucket
                                            for t in range(n_slots):
                                                most[n, t] = 0
                                            for r in range(bucket[n], bucket[n + 1]):
                                                for j in range(s_start[r], s_start[r] + n):
                                                    scratch[min(s_chars[j], n_slots - 1)] += 1
                                                for j in range(s_start[r], s_start[r] + n):
                                                    t = min(s_chars[j], n_slots - 1)
                                                    if scratch[t]:
                                                        most[n, t] = max(most[n, t], scratch[t])
                                                        scratch[t] = 0
                                    c = count[s] if most[n, s] < 0 else min(count[s], most[n, s])
                                    common += c
                                    if most[n, s] < 0:
                                        spare += c - 1
                                lb = max(m, n) - min(common, n)
                                # compute largest counts only where they could rule out the bucket
                                if attempt or lb >= best_d or max(m, n) - min(common - spare, n) < best_d:
                                    break
                            bound = max(bound, lb)
                        bound_of[n] = bound
                        bound_for[n] = q
                        p, p_end = resume, bucket[n + 1]
                        resume = -1
                        continue
                    cand = p
                    p += 1
                    limit = best_d - 1
                else:
                    pick = -1
                    lowest = best_i
                    for k in range(n_heads):
                        r = head[k]
                        if r < bucket[head_n[k] + 1] and s_idx[r] < lowest:
                            lowest = s_idx[r]
                            pick = k
                    if pick < 0:
                        break
                    cand = head[pick]
                    head[pick] += 1
                    n = head_n[pick]
                    limit = d_star
                c_mask = s_mask[cand]
                x = q_mask & ~c_mask
                x = x - ((x >> one) & m1)
                x = (x & m2) + ((x >> np.uint64(2)) & m2)
                x = (((x + (x >> np.uint64(4))) & m4) * h01) >> np.uint64(56)
                if x > limit:
                    continue
                x = c_mask & ~q_mask
                x = x - ((x >> one) & m1)
                x = (x & m2) + ((x >> np.uint64(2)) & m2)
                x = (((x + (x >> np.uint64(4))) & m4) * h01) >> np.uint64(56)
                if x > limit:
                    continue
                ca = s_start[cand]
                hits = 0
                for j in range(ca, ca + n):
                    hits += seen[s_chars[j]]
                if max(m, n) - hits > limit:
                    continue
                if m == 0 or n == 0:
                    d = m + n
                elif bits:  # Hyyrö 2003
                    vp = ~zero
                    vn = zero
                    d = m
                    for j in range(n):
                        pm = peq[s_chars[ca + j]]
                        d0 = (((pm & vp) + vp) ^ vp) | pm | vn
                        hp = vn | ~(d0 | vp)
                        hn = d0 & vp
                        if hp & last:
                            d += 1
                        elif hn & last:
                            d -= 1
                        if d - (n - 1 - j) > limit:
                            break
                        hp = (hp << one) | one
                        hn = hn << one
                        vp = hn | ~(d0 | hp)
                        vn = hp & d0
                else:  # query longer than a machine word: row DP over the candidate
                    for k in range(n + 1):
                        row[k] = k
                    d = -1
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
                            d = limit + 1
                            break
                    if d < 0:
                        d = row[n]
                if d <= limit:
                    best_d = d
                    best_i = s_idx[cand]
                    visit_best = visit
                    if phase == 2:
                        break
                    if p < p_end:
                        resume = p
            for j in range(m):
                t = q_ids[j]
                peq[t] = zero
                seen[t] = 0
                count[min(t, n_slots - 1)] = 0
            out[q] = best_i
        return out, exact

    return first_min_ed

"""Which positions of two tokenizations of one text correspond: :func:`align_sequences` and its default mode.

``"offsets"`` (default, O(N+M)) aligns a base token with every source token whose byte span of the shared
text overlaps its own (:func:`_overlap_alignment`); the DTW modes come from :mod:`fusers.align.dtw`, and
FuseChat's released DTW from :mod:`fusers.align.fusechat_released`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fusers.align.alignment import Alignment
from fusers.align.dtw import TieOrder, banded_dtw, dtw_align_distinct, tie_codes
from fusers.align.fusechat_released import fusechat_dtw_align
from fusers.align.tokenization import Tokenization, map_spans


def _overlap_alignment(bs: np.ndarray, be: np.ndarray, ss: np.ndarray, se: np.ndarray) -> Alignment:
    """Align two tokenizations of one byte stream by span overlap: O(N+M) plus O(#zero-width).

    Picture the stream as byte cells with a *gap* before each byte (and one at the end). A non-empty
    token covers its bytes and the gaps strictly inside it; a zero-width token (special token, empty
    piece, bytes the other side lacks) sits in the gap at its point ``p`` — the end of the preceding
    token. Two tokens are aligned when they share a cell:

    1. non-empty ↔ non-empty tokens that share a byte (binary search in the sorted, disjoint spans);
    2. zero-width ↔ zero-width tokens in the same gap, paired in order, proportionally when the counts
       differ (BOS ↔ BOS, EOS ↔ EOS);
    3. zero-width ↔ a non-empty token of the other side that strictly contains its point.

    Every token's cells come after the previous token's on the same side, so these pairs never cross.
    A token that shares no cell (a lone BOS before the first word, bytes only one side spells out) is
    anchored to the first token of the other side that does not end before it (:func:`_anchor`), the
    last one past the end: a lone BOS joins the first word and a lone EOS the last one. Base tokens are
    anchored first; source tokens still uncovered after that are anchored the same way, so every base
    and every source position is aligned and the result stays monotone, like a DTW path.
    """
    n_base, n_src = len(bs), len(ss)
    pairs_b: list[np.ndarray] = []
    pairs_s: list[np.ndarray] = []

    def add(b: np.ndarray | list[int], s: np.ndarray | list[int]) -> None:
        pairs_b.append(np.asarray(b, dtype=np.int64))
        pairs_s.append(np.asarray(s, dtype=np.int64))

    b_nz, s_nz = np.flatnonzero(be > bs), np.flatnonzero(se > ss)
    b_zw, s_zw = np.flatnonzero(be <= bs), np.flatnonzero(se <= ss)

    # 1. shared bytes
    if len(b_nz) and len(s_nz):
        lo = np.searchsorted(se[s_nz], bs[b_nz], side="right")
        hi = np.searchsorted(ss[s_nz], be[b_nz], side="left")
        cnt = np.maximum(hi - lo, 0)
        within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        add(np.repeat(b_nz, cnt), s_nz[np.repeat(lo, cnt) + within])

    # 2. shared gaps
    by_point: dict[int, list[int]] = {}
    for j in s_zw.tolist():
        by_point.setdefault(int(ss[j]), []).append(j)
    b_groups: dict[int, list[int]] = {}
    for i in b_zw.tolist():
        b_groups.setdefault(int(bs[i]), []).append(i)
    gb: list[int] = []
    gs: list[int] = []
    for point, group in b_groups.items():
        other = by_point.get(point)
        if not other:
            continue
        a, b = len(group), len(other)
        for k, i in enumerate(group):
            first = k * b // a
            for j in other[first : max(first + 1, -(-(k + 1) * b // a))]:
                gb.append(i)
                gs.append(j)
    add(gb, gs)

    # 3. a gap strictly inside a non-empty token of the other side
    for zw, points, o_nz, o_s, o_e, base_side in ((b_zw, bs, s_nz, ss, se, True), (s_zw, ss, b_nz, bs, be, False)):
        if not len(zw) or not len(o_nz):
            continue
        p = points[zw]
        k = np.minimum(np.searchsorted(o_e[o_nz], p, side="right"), len(o_nz) - 1)
        inside = (o_s[o_nz[k]] < p) & (p < o_e[o_nz[k]])
        if base_side:
            add(zw[inside], o_nz[k[inside]])
        else:
            add(o_nz[k[inside]], zw[inside])

    b_done = np.zeros(n_base, dtype=bool)
    s_done = np.zeros(n_src, dtype=bool)
    for pb, ps in zip(pairs_b, pairs_s, strict=True):
        b_done[pb] = True
        s_done[ps] = True
    left_b = np.flatnonzero(~b_done)
    if len(left_b):
        targets = _anchor(bs[left_b], ss, se)
        add(left_b, targets)
        s_done[targets] = True
    left_s = np.flatnonzero(~s_done)
    if len(left_s):
        add(_anchor(ss[left_s], bs, be), left_s)
    return Alignment.from_pairs(np.concatenate(pairs_b), np.concatenate(pairs_s), n_base, n_src, "offsets")


def _anchor(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each start point p of an unaligned token, the first other-side token that does not end before
    it: a non-empty token with end > p, or a zero-width token at a point > p; the last token if none.

    (A zero-width token exactly at p would have shared p's gap.) ``key`` — end-1, or point-1 for
    zero-width tokens — is non-decreasing along a tokenization, so one binary search answers all.
    """
    key = np.where(ends > starts, ends, starts) - 1
    return np.minimum(np.searchsorted(key, points, side="left"), len(starts) - 1)


def _offset_spans(base: Tokenization, source: Tokenization) -> tuple[np.ndarray, ...]:
    """Byte spans of both tokenizations in the base's byte stream."""
    bstream, bs, be = base.byte_spans()
    sstream, ss, se = source.byte_spans()
    if base.text is not None and source.text is not None and base.text != source.text:
        raise ValueError("the two tokenizations were made from different texts")
    if sstream != bstream:
        ss, se = map_spans(sstream, bstream, ss, se)
    return bs, be, ss, se


Mode = Literal["offsets", "dtw_ed", "dtw_ed_banded"]


def align_sequences(base: Tokenization, source: Tokenization, mode: Mode = "offsets", *,
                    tie_order: TieOrder = "fusellm", band: int = 16) -> Alignment:
    """For every base position, the sorted source positions aligned to it.

    ``mode="offsets"`` (default): byte-span overlap of the two tokenizations of the same text
    (:func:`_overlap_alignment`). ``"dtw_ed"``: the reference DTW with cost = Levenshtein distance of the
    marker-stripped pieces, backtrack ties in ``tie_order`` (``"fusellm"`` = diag, up, left;
    ``"fusechat"`` = diag, left, up; "up" = previous source token). ``"dtw_ed_banded"``: that DP within
    ``band`` base positions of the offsets alignment (an approximation of ``"dtw_ed"``, exact when the
    band is wide enough). ``"dtw_fusechat"``: FuseChat's released DTW
    (:func:`fusers.align.fusechat_released.fusechat_dtw_align`).
    """
    if len(base) == 0 or len(source) == 0:
        raise ValueError("cannot align an empty tokenization")
    if mode == "offsets":
        return _overlap_alignment(*_offset_spans(base, source))
    if mode == "dtw_fusechat":  # FuseChat's released DTW (its own piece spellings and cost), for reference_compat
        return fusechat_dtw_align(base, source)
    if mode == "dtw_ed":
        return dtw_align_distinct(*base.distinct(base.spec.strip_marker), *source.distinct(source.spec.strip_marker),
                                  tie_order)
    base_strings = [base.spec.strip_marker(p) for p in base.pieces]
    source_strings = [source.spec.strip_marker(p) for p in source.pieces]
    if mode == "dtw_ed_banded":
        guide = _overlap_alignment(*_offset_spans(base, source))
        b, s = guide.pairs()
        n_src, n_base = len(source), len(base)
        lo = np.full(n_src, n_base, dtype=np.int64)
        hi = np.full(n_src, -1, dtype=np.int64)
        np.minimum.at(lo, s, b)
        np.maximum.at(hi, s, b)
        lo = np.maximum(lo - band, 0)
        hi = np.minimum(hi + band, n_base - 1)
        lo[0], hi[-1] = 0, n_base - 1
        hi = np.maximum.accumulate(hi)
        lo = np.minimum.accumulate(lo[::-1])[::-1]
        lo[1:] = np.minimum(lo[1:], hi[:-1] + 1)  # keep consecutive rows connected
        return banded_dtw(source_strings, base_strings, lo, hi, tie_codes(tie_order))
    raise ValueError(f"unknown alignment mode {mode!r}; expected 'offsets', 'dtw_ed', 'dtw_ed_banded' or 'dtw_fusechat'")

"""FuseChat v2's vocabulary map from co-alignment counts, stages 2 and 3 of its "MS" alignment (spec §2.3).

FuseChat maps every source token to ONE pivot token learned from how the two tokenizations of a corpus line
up (:class:`fusers.align.ms_counts.CoAlignmentCounts`), instead of FuseLLM's nearest-string vocabulary map
(§2.2):

* **Statistical vocabulary map** (:func:`ms_statistical_map`, the reference's ``blending_to_base``). Per
  source id ``s``, among the pivot ids it was ever aligned with: the closest piece by a weighted edit
  distance, weighted by ``sigmoid(count)`` (``weighting="reference"``, quirk Q2: at equal distance the
  *rarer* co-alignment wins), or, FuseBench's default ``weighting="frequency"``, the most frequent
  co-alignment, ties broken by that distance. Never aligned: the pivot's unk (else eos). BOS→BOS, EOS→EOS.
* **Lookup rule of the distribution alignment** (:func:`ms_vocab_map`). A source piece that, with its word
  marker swapped, IS a pivot piece maps there; any other goes through the statistical map. The result is a
  :class:`fusers.align.vocab.VocabMap`, so :func:`fusers.align.distribution.map_distribution` and
  :func:`fusers.distill.target_rows` move top-k distributions through it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from fusers.align.ms_counts import CoAlignmentCounts
from fusers.align.spec import TokenizerSpec, detect_spec
from fusers.align.vocab import VocabMap

Weighting = Literal["frequency", "reference"]
WEIGHTINGS: tuple[str, ...] = ("frequency", "reference")


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
    beyond ``pivot_width`` are never targets. Markers come from :func:`fusers.align.spec.detect_spec` unless
    ``source_spec`` / ``pivot_spec`` are given. ``keys`` maps each marker-replaced source piece to its lowest
    source id, as :func:`fusers.align.vocab.vocab_map` does, so :meth:`VocabMap.lookup` works the same.
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

"""Moving a source's per-position top-k distribution onto the base positions and vocabulary (spec §2.2).

:func:`map_distribution` takes an :class:`~fusers.align.alignment.Alignment`, the two tokenizations and a
vocabulary map, and returns a :class:`MappedTopK`: per base position, a sparse distribution over base ids
(1-1 / many-to-one / one-to-many / unmatched handled), with the corrected defaults and the reference
behaviour behind switches (:data:`FUSELLM_REFERENCE`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fusers.align.alignment import Alignment
from fusers.align.compat import compat_set
from fusers.align.tokenization import Tokenization
from fusers.align.vocab import VocabMap

MAPPED, FALLBACK, EMPTY = 0, 1, 2

# Keyword arguments of map_distribution that reproduce FuseLLM's transform_step_logits (soft MinED).
FUSELLM_REFERENCE: dict[str, Any] = {
    "one_to_many": "fallback",
    "match": "reference",
    "reference_compat": frozenset({"q1", "q5"}),
}


@dataclass(frozen=True)
class MappedTopK:
    """Per base position, a sparse distribution over base ids (fixed width, padded).

    ``ids`` (int32, -1 padding) and ``logits`` (float32, -inf padding) hold the entries, highest first;
    a softmax over a row's entries is the target distribution. ``status`` is :data:`MAPPED` (from the
    source distribution at ``source[i]``), :data:`FALLBACK` (one-hot, logit 1.0 as in the reference) or
    :data:`EMPTY` (aligned, but no top-k entry maps into the base vocabulary: the reference's "bad case",
    where the collator substitutes the base model's own distribution).
    """

    ids: np.ndarray
    logits: np.ndarray
    status: np.ndarray
    source: np.ndarray

    def row(self, i: int) -> list[tuple[int, float]]:
        keep = self.ids[i] >= 0
        return list(zip(self.ids[i][keep].tolist(), self.logits[i][keep].tolist(), strict=True))


def _fallback_ids(base_ids: np.ndarray, current: bool) -> np.ndarray:
    """One-hot target per position: the next base token (row i predicts i+1; the last repeats itself,
    as FuseChat's shifted labels do) or, under Q1, the current one."""
    if current or len(base_ids) == 0:
        return base_ids.copy()
    return np.concatenate([base_ids[1:], base_ids[-1:]])


def _same_pieces(base: Tokenization, source: Tokenization, at: np.ndarray, js: np.ndarray) -> np.ndarray:
    """Per pair ``(at[k], js[k])``: whether the source piece, marker replaced by the base's, is the base piece
    (the string test of :func:`_match_single`), with the marker replaced once per distinct source piece."""
    replaced: dict[str, str] = {}
    for piece in map(source.pieces.__getitem__, js.tolist()):
        if piece not in replaced:
            replaced[piece] = source.spec.replace_marker(piece, base.spec)
    return np.fromiter(map(str.__eq__, map(replaced.__getitem__, map(source.pieces.__getitem__, js.tolist())),
                           map(base.pieces.__getitem__, at.tolist())), dtype=bool, count=len(at))


def _match_single(base: Tokenization, source: Tokenization, i: int, j: int, vmap_ids: np.ndarray,
                  vm: VocabMap | None, match: str) -> bool:
    """Whether base position i and its single aligned source position j stand for the same token.

    ``"reference"``: FuseLLM soft check, ``vocab_map(st) == bt`` (st = source piece with the base
    marker), including its first-token case: at i = 0, a source without a dummy prefix space and a
    base piece starting with the marker, the marker is prepended to st before comparing.
    ``"surface"`` (default) also accepts equal surfaces (dummy prefix removed, so the first-token case
    needs no special rule, and 'Ċ' matches '<0x0A>') and equal roles for special tokens (BOS ↔ BOS).
    """
    sid = int(source.ids[j])
    bid = int(base.ids[i])
    bt = base.pieces[i]
    st = source.spec.replace_marker(source.pieces[j], base.spec)
    mapped = 0 <= sid < len(vmap_ids) and vmap_ids[sid] == bid  # vocab_map(st) == bt
    if match == "reference":
        marker = base.spec.marker
        if (i == 0 and marker and not source.spec.prefix_space and bt.startswith(marker)
                and not st.startswith(marker)):
            st = marker + st  # the rewritten string is what the reference compares and looks up
            return st == bt or (vm is not None and vm.lookup(st) == bid)
        return st == bt or mapped
    if st == bt or mapped:
        return True
    b_surf = base.surfaces[i]
    if b_surf:
        return b_surf == source.surfaces[j]
    role = base.spec.role(bt)
    return role is not None and role == source.spec.role(source.pieces[j])


def _rows_numpy(rows: np.ndarray, src_rows: np.ndarray, tids: np.ndarray, tlog: np.ndarray, vmap_ids: np.ndarray,
                collision: str, out_ids: np.ndarray, out_log: np.ndarray, status: np.ndarray) -> None:
    """Base rows ``rows`` take source rows ``src_rows``: walk each highest logit first (ties: column order),
    map the ids through ``vmap_ids`` (dropping -1 ids, -inf/NaN logits and unmapped ids), merge entries of one
    base id (``"first"`` keeps the first, ``"sum"`` adds their probabilities: logaddexp in walk order), order
    by value (ties: first walk position), keep ``out_ids.shape[1]``; status MAPPED, or EMPTY if nothing is
    left. Whole-array numpy; :func:`_compiled_rows` does the same row by row."""
    k = tids.shape[1]
    k_out = out_ids.shape[1]
    ids = tids[src_rows]
    lg = tlog[src_rows]
    order = np.argsort(-lg, axis=1, kind="stable")  # the reference walks highest logit first
    ids = np.take_along_axis(ids, order, axis=1)
    lg = np.take_along_axis(lg, order, axis=1)
    valid = (ids >= 0) & (lg > -np.inf)  # -1 ids / -inf logits are padding; NaN is dropped too
    mapped = np.where(valid, vmap_ids[np.where(ids >= 0, ids, 0)], -1)
    r_idx = np.repeat(np.arange(len(rows)), k)
    c_idx = np.tile(np.arange(k), len(rows))
    m_flat = mapped.reshape(-1)
    l_flat = lg.reshape(-1)
    keep = m_flat >= 0
    r_idx, c_idx, m_flat, l_flat = r_idx[keep], c_idx[keep], m_flat[keep], l_flat[keep]
    # group entries by (row, base id), each group in walk order
    srt = np.lexsort((c_idx, m_flat, r_idx))
    r_idx, c_idx, m_flat, l_flat = r_idx[srt], c_idx[srt], m_flat[srt], l_flat[srt]
    new_group = np.ones(len(r_idx), dtype=bool)
    new_group[1:] = (r_idx[1:] != r_idx[:-1]) | (m_flat[1:] != m_flat[:-1])
    starts = np.flatnonzero(new_group)
    g_row, g_id, g_col = r_idx[starts], m_flat[starts], c_idx[starts]
    if len(starts) == 0:
        g_val = l_flat[:0]
    elif collision == "first":
        g_val = l_flat[starts]
    else:
        g_val = np.logaddexp.reduceat(l_flat, starts)
    # order within each row: highest value first, ties in walk order; then truncate to k_out
    srt = np.lexsort((g_col, -g_val, g_row))
    g_row, g_id, g_val = g_row[srt], g_id[srt], g_val[srt]
    row_start = np.searchsorted(g_row, g_row, side="left")
    rank = np.arange(len(g_row)) - row_start
    fit = rank < k_out
    out_ids[rows[g_row[fit]], rank[fit]] = g_id[fit]
    out_log[rows[g_row[fit]], rank[fit]] = g_val[fit]
    status[rows] = EMPTY
    status[rows[np.unique(g_row)]] = MAPPED


@functools.cache
def _compiled_rows() -> Any:
    """:func:`_rows_numpy` compiled by numba, one row at a time (None without numba): for a 2,048-token chunk
    the numpy version's sorts of every entry cost more than the rest of the mapping."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def logaddexp(x: float, y: float) -> float:  # pragma: no cover
        if x == y:
            return x + 0.6931471805599453  # numpy's formula, branch for branch
        tmp = x - y
        if tmp > 0:
            return x + np.log1p(np.exp(-tmp))
        if tmp <= 0:
            return y + np.log1p(np.exp(tmp))
        return tmp

    @numba.njit(cache=True, nogil=True)
    def map_rows(rows, src_rows, tids, tlog, vmap_ids, first, out_ids, out_log, status):  # pragma: no cover
        k = tids.shape[1]
        k_out = out_ids.shape[1]
        walk = np.empty(k, dtype=np.int64)
        g_id = np.empty(k, dtype=np.int64)
        g_val = np.empty(k, dtype=np.float64)
        g_pos = np.empty(k, dtype=np.int64)
        for n in range(rows.shape[0]):
            s = src_rows[n]
            n_walk = 0  # the entries that can map, in walk order: logit descending, stable (insertion sort)
            for c in range(k):
                sid = tids[s, c]
                if sid < 0 or not tlog[s, c] > -np.inf or vmap_ids[sid] < 0:
                    continue
                t = n_walk
                while t > 0 and tlog[s, walk[t - 1]] < tlog[s, c]:
                    walk[t] = walk[t - 1]
                    t -= 1
                walk[t] = c
                n_walk += 1
            n_groups = 0
            for w in range(n_walk):
                c = walk[w]
                target = vmap_ids[tids[s, c]]
                value = tlog[s, c]
                g = 0
                while g < n_groups and g_id[g] != target:
                    g += 1
                if g == n_groups:
                    g_id[g], g_val[g], g_pos[g] = target, value, w
                    n_groups += 1
                elif not first:
                    g_val[g] = logaddexp(g_val[g], value)
            for g in range(1, n_groups):  # value descending, ties by first walk position
                gid, gval, gpos = g_id[g], g_val[g], g_pos[g]
                t = g
                while t > 0 and (g_val[t - 1] < gval or (g_val[t - 1] == gval and g_pos[t - 1] > gpos)):
                    g_id[t], g_val[t], g_pos[t] = g_id[t - 1], g_val[t - 1], g_pos[t - 1]
                    t -= 1
                g_id[t], g_val[t], g_pos[t] = gid, gval, gpos
            i = rows[n]
            for g in range(min(n_groups, k_out)):
                out_ids[i, g] = g_id[g]
                out_log[i, g] = g_val[g]
            status[i] = 0 if n_groups else 2  # MAPPED, EMPTY

    return map_rows


def map_distribution(alignment: Alignment, base: Tokenization, source: Tokenization, topk_ids: Any,
                     topk_logits: Any, vocab: VocabMap | np.ndarray, *,
                     one_to_many: Literal["last", "fallback"] = "last",
                     fallback: Literal["next", "current"] | None = None,
                     collision: Literal["sum", "first"] | None = None,
                     match: Literal["surface", "reference"] = "surface",
                     base_width: int | None = None, k_out: int | None = None,
                     reference_compat: str | Iterable[str] | None = None) -> MappedTopK:
    """Move the source's per-position top-k (ids ``[M, k]``, logits or log-probs ``[M, k]``) onto the
    base positions of ``alignment`` (spec §2.2).

    Per base position i with aligned source positions js:

    * one source position (1-1 or many-to-one): if i and j match (:func:`_match_single`), the source
      distribution at j is used; otherwise one-hot fallback.
    * several (one-to-many): ``one_to_many="last"`` (default) uses the distribution of the LAST source
      token when the source surfaces concatenate to the base token's surface — it predicts what follows
      the whole word, as row i does; otherwise fallback. ``"fallback"`` always falls back (FuseLLM).
    * fallback: one-hot on the next base token (``fallback="next"``, default) or on the current one
      (``"current"``, Q1 / FuseLLM).

    A used distribution is walked in descending logit order; each source id goes through ``vocab``
    (entries without a base id are dropped); entries landing on the same base id are merged by
    ``collision``: ``"sum"`` (default; logsumexp of their logits, i.e. their probability mass is summed)
    or ``"first"`` (Q5; keep the first, highest). If nothing survives the row is :data:`EMPTY`. Rows keep
    at most ``k_out`` entries (default: k). ``base_width`` is the base model's logit width (Q11): mapped
    or fallback ids at or beyond it raise. ``fallback``/``collision`` left as None follow
    ``reference_compat`` (``"q1"``, ``"q5"``); explicit values win. :data:`FUSELLM_REFERENCE` holds the
    keyword arguments that reproduce FuseLLM.
    """
    compat = compat_set(reference_compat)
    fallback = fallback or ("current" if "q1" in compat else "next")
    collision = collision or ("first" if "q5" in compat else "sum")
    if one_to_many not in ("last", "fallback") or fallback not in ("next", "current") \
            or collision not in ("sum", "first") or match not in ("surface", "reference"):
        raise ValueError("bad option: one_to_many in {last, fallback}, fallback in {next, current}, "
                         "collision in {sum, first}, match in {surface, reference}")
    if base.ids is None or source.ids is None:
        raise ValueError("map_distribution needs token ids on both tokenizations")
    n_base, n_src = len(base), len(source)
    if len(alignment) != n_base or alignment.n_source != n_src:
        raise ValueError(f"alignment is {len(alignment)}×{alignment.n_source}, tokenizations {n_base}×{n_src}")
    tids = np.asarray(topk_ids).astype(np.int64, copy=False)
    tlog = np.asarray(topk_logits, dtype=np.float64)
    if tids.shape != tlog.shape or tids.ndim != 2 or tids.shape[0] != n_src:
        raise ValueError(f"top-k arrays must both be [{n_src}, k]; got {tids.shape} and {tlog.shape}")
    vm = vocab if isinstance(vocab, VocabMap) else None
    vmap_ids = np.asarray(vocab.ids if vm is not None else vocab, dtype=np.int64)
    if (tids >= len(vmap_ids)).any():
        raise ValueError(f"source top-k id {int(tids.max())} is outside the vocab map (width {len(vmap_ids)}); "
                         "build the map with source_width = the source model's logit width")
    k = tids.shape[1]
    k_out = max(k, 1) if k_out is None else int(k_out)
    if k_out < 1:
        raise ValueError("k_out must be at least 1")

    # Decide, per base position, whose distribution it gets. The test every match rule starts with (same
    # piece, or the vocabulary map gives the base token) is decided for all single positions at once; only
    # what it leaves open goes through _match_single one by one: under "reference" position 0 (its
    # first-token case), under "surface" every position it did not accept (surfaces, roles).
    use = np.full(n_base, -1, dtype=np.int64)
    counts = alignment.counts()
    single = np.flatnonzero(counts == 1)
    js_single = alignment.indices[alignment.indptr[single]]
    sid, bid = source.ids[js_single], base.ids[single]
    known = (sid >= 0) & (sid < len(vmap_ids))
    accept = (known & (vmap_ids[np.where(known, sid, 0)] == bid)) | _same_pieces(base, source, single, js_single)
    undecided = (single == 0) if match == "reference" else ~accept
    decided = accept & ~undecided
    use[single[decided]] = js_single[decided]
    for i, j in zip(single[undecided].tolist(), js_single[undecided].tolist(), strict=True):
        if _match_single(base, source, i, j, vmap_ids, vm, match):
            use[i] = j
    if one_to_many == "last":
        for i in np.flatnonzero(counts > 1).tolist():
            js = alignment[i]
            b_surf = base.surfaces[i]
            if b_surf and b"".join(source.surfaces[j] for j in js.tolist()) == b_surf:
                use[i] = int(js[-1])

    out_ids = np.full((n_base, k_out), -1, dtype=np.int32)
    out_log = np.full((n_base, k_out), -np.inf, dtype=np.float32)
    status = np.full(n_base, FALLBACK, dtype=np.int8)

    rows = np.flatnonzero(use >= 0)
    if len(rows):
        kernel = _compiled_rows()
        if kernel is not None:
            kernel(rows, use[rows], tids, tlog, vmap_ids, collision == "first", out_ids, out_log, status)
        else:
            _rows_numpy(rows, use[rows], tids, tlog, vmap_ids, collision, out_ids, out_log, status)

    fb_rows = np.flatnonzero(use < 0)
    fb = _fallback_ids(base.ids, current=fallback == "current")
    out_ids[fb_rows, 0] = fb[fb_rows]
    out_log[fb_rows, 0] = 1.0
    if base_width is not None and (out_ids >= base_width).any():
        raise ValueError(f"base id {int(out_ids.max())} ≥ base_width {base_width}")
    source_used = np.where(status == FALLBACK, -1, use)
    return MappedTopK(ids=out_ids, logits=out_log, status=status, source=source_used)

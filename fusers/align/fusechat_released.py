"""FuseChat's released alignment (``align_token_and_vocab.py``) for ``reference_compat`` (spec §2.3, §11).

FuseBench's own path aligns by byte offsets and moves distributions with
:func:`fusers.align.distribution.map_distribution` (surface match, same byte end, summed collisions).
``align="dtw_fusechat"`` and ``distribution="fusechat"`` instead do what FuseChat's
``align_token_and_vocab.py`` does, rule for rule:

* token strings are the raw pieces (``convert_ids_to_tokens``) with Llama-3 byte-level spellings rewritten
  as Mistral's (:data:`FUSECHAT_PIECE_SUBSTITUTIONS`) -- the released code uses pieces, not decoded text;
* DTW cost: edit distance of the marker-stripped pieces, or, where either stripped string is empty, of the
  source piece with its marker swapped for the pivot's against the pivot piece; backtrack ties
  (diag, left, up);
* distribution alignment ("stage 3"): the ``endswith`` rule for single positions, the first matching piece
  or the greedy prefix decomposition for one-to-many positions, lookups through the exact piece else the
  statistical map, the first of colliding entries kept, one-hot on the next pivot token otherwise.

Markers come from FuseBench's per-tokenizer table (:func:`fusers.align.spec.detect_spec`), not from the
released code's table keyed on the tokenizer's Python class, which gives a Llama *fast* tokenizer the
byte-level marker: that is a bug, not a behaviour worth reproducing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusers.align.alignment import Alignment
from fusers.align.distribution import EMPTY, FALLBACK, MAPPED, MappedTopK
from fusers.align.dtw import _dtw, edit_distance_matrix
from fusers.align.vocab import VocabMap

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
    """FuseChat's sequence alignment of two tokenizations of one text (pivot = base), spec §2.3 stage 1.

    Costs are computed once per pair of distinct tokens (:meth:`Tokenization.distinct`): the edit distance of
    the marker-stripped pieces, and, for a pair where either strips to nothing, of the marker-swapped source
    piece against the raw pivot piece, the only pairs that rule needs.
    """
    piv, piv_codes = pivot.distinct(lambda p: fusechat_pieces([p])[0])
    src, src_codes = source.distinct(lambda p: fusechat_pieces([p])[0])
    pm, sm = pivot.spec.marker, source.spec.marker
    stripped_src, stripped_piv = [_without(p, sm) for p in src], [_without(p, pm) for p in piv]
    table = edit_distance_matrix(stripped_src, stripped_piv)  # [distinct source, distinct pivot]
    empty_src = np.flatnonzero([not s for s in stripped_src])
    empty_piv = np.flatnonzero([not s for s in stripped_piv])
    if len(empty_src) or len(empty_piv):
        swapped = [_swapped(p, sm, pm) for p in src]
        if len(empty_src):
            table[empty_src, :] = edit_distance_matrix([swapped[u] for u in empty_src.tolist()], piv)
        if len(empty_piv):
            table[:, empty_piv] = edit_distance_matrix(swapped, [piv[v] for v in empty_piv.tolist()])
    return _dtw(table, src_codes, piv_codes, len(piv_codes), "fusechat", "dtw_fusechat")


def fusechat_distribution(alignment: Alignment, pivot: Any, source: Any, topk_ids: Any, topk_logits: Any,
                          vocab: VocabMap, *, base_width: int | None = None, k_out: int | None = None) -> Any:
    """FuseChat's distribution alignment (spec §2.3 stage 3, ``align_type=default`` with the token alignment
    matrix) as a :class:`fusers.align.distribution.MappedTopK`, the same structure
    :func:`fusers.align.distribution.map_distribution` returns, so :func:`fusers.distill.target_rows` stores
    it unchanged.

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

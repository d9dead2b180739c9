"""The reference MinED vocabulary map (FuseLLM ``vocab_mapping.py``) as an id→id array, and byte twins.

:func:`vocab_map` maps every source piece (word marker replaced by the base's) to the base piece equal to
it, else to the first base piece at the minimum edit distance in vocabulary order. The search is compiled
by numba (:mod:`fusers.align.mined_kernel`, on every core), or done by rapidfuzz in length buckets without it; both equal
the plain O(|Vs|·|Vb|) loop exactly. :func:`surface_vocab_map` then sends every source piece that spells
exactly the bytes of a base piece to that piece.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fusers.align.compat import compat_set
from fusers.align.mined_kernel import compiled_first_min_ed, default_workers
from fusers.align.spec import detect_spec


@dataclass(frozen=True)
class VocabMap:
    """Source id → base id (``-1``: no base token), from :func:`vocab_map`.

    ``exact`` marks source ids whose marker-replaced piece is itself a base piece (the reference's
    "EM"/hard alignment keeps only those: :attr:`hard_ids`). ``keys`` maps each marker-replaced source
    piece to its first source id, for string look-ups. ``by_string`` is only built under
    ``reference_compat`` ``"q12"``: the reference's own structure, marker-replaced source piece → base
    piece.
    """

    ids: np.ndarray
    exact: np.ndarray
    keys: dict[str, int] = field(repr=False)
    by_string: dict[str, str] | None = field(default=None, repr=False)

    @property
    def hard_ids(self) -> np.ndarray:
        return np.where(self.exact, self.ids, -1)

    def lookup(self, key: str) -> int:
        """Base id for a marker-replaced source string, -1 if it is no source piece."""
        j = self.keys.get(key)
        return -1 if j is None else int(self.ids[j])


def _as_vocab(vocab: Mapping[str, int] | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(pieces in iteration order, their ids). A sequence's ids are its indices."""
    if isinstance(vocab, Mapping):
        return list(vocab.keys()), np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    pieces = list(vocab)
    return pieces, np.arange(len(pieces), dtype=np.int64)


def _nearest_pieces(queries: list[str], cands: list[str], workers: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(index, exact)`` per query: the first candidate equal to it if there is one (``exact``), else the
    first candidate at the minimal Levenshtein distance.

    Both are the first minimum of ``ED(q, cands[c])`` over ``c`` (an equal string is at distance 0), so
    ``index`` equals ``min(range(len(cands)), key=lambda c: ED(q, cands[c]))`` for every query. With numba,
    one compiled search over code points does it (:func:`fusers.align.mined_kernel.compiled_first_min_ed`);
    without it, a dict for the exact matches and rapidfuzz in length buckets for the rest
    (:func:`_first_min_ed_buckets`). ``workers``: threads for the compiled search (None: every core this
    process may use, one for a small map: :func:`fusers.align.mined_kernel.default_workers`); the answer
    does not depend on it.
    """
    if not queries:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if not cands:
        raise ValueError("the base vocabulary is empty")
    kernel = compiled_first_min_ed()
    if kernel is not None:
        q_chars, q_starts = _code_points(queries)
        c_chars, c_starts = _code_points(cands)
        return kernel(q_chars, q_starts, c_chars, c_starts,
                      default_workers(len(queries), len(cands)) if workers is None else workers)
    # first occurrence wins, like the plain loop's list order: build from the back
    first = dict(zip(reversed(cands), range(len(cands) - 1, -1, -1), strict=True))
    index = np.fromiter(map(first.get, queries, itertools.repeat(-1)), dtype=np.int64, count=len(queries))
    exact = index >= 0
    inexact = np.flatnonzero(~exact)
    if len(inexact):
        missing = list(dict.fromkeys(queries[k] for k in inexact.tolist()))
        nearest = dict(zip(missing, _first_min_ed_buckets(missing, cands).tolist(), strict=True))
        index[inexact] = [nearest[queries[k]] for k in inexact.tolist()]
    return index, exact


def _first_min_ed(queries: list[str], cands: list[str]) -> np.ndarray:
    """For each query, the index of the FIRST candidate with minimal Levenshtein distance (ties: lowest
    index), i.e. ``min(range(len(cands)), key=lambda c: ED(q, cands[c]))`` without scoring every pair."""
    return _nearest_pieces(queries, cands)[0]


def _code_points(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CSR code points: ``strings[k]`` is ``chars[starts[k]:starts[k + 1]]`` (int32; lone surrogates kept)."""
    chars = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), dtype="<i4")
    starts = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)), out=starts[1:])
    return chars, starts


def _first_min_ed_buckets(queries: list[str], cands: list[str]) -> np.ndarray:
    """:func:`_first_min_ed` with rapidfuzz only (the path without numba).

    Callers pass queries that are not candidates, so every distance is ≥ 1, and in a real vocabulary
    most queries have a candidate at distance 1. Since ``ED(q, c) ≥ |len(q) - len(c)|``, those candidates
    have a length within one of the query's:

    1. For each candidate length n, one rapidfuzz ``cdist`` call scores the bucket of length-n candidates
       against the queries of length n-1, n, n+1 with ``score_cutoff=1`` (larger distances come back as
       2). A query that meets distance ≤ 1 is settled: its answer is the lowest-index candidate at its
       minimum over its three buckets, which hold every candidate that can be that close.
    2. The queries left (minimum ≥ 2) are scored against all candidates in one call.

    rapidfuzz converts its Python string arguments on every call, which costs more than the distances
    here, so the calls are arranged to convert each candidate once or twice in total.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    n_cands = len(cands)
    result = np.full(len(queries), n_cands, dtype=np.int64)
    if not queries:
        return result
    if not cands:
        raise ValueError("the base vocabulary is empty")
    qlen = np.fromiter((len(q) for q in queries), dtype=np.int64, count=len(queries))
    clen = np.fromiter((len(c) for c in cands), dtype=np.int64, count=n_cands)
    best = np.full(len(queries), 2, dtype=np.int64)  # distance of result[q]; 2 = "none ≤ 1 yet"
    order = np.argsort(clen, kind="stable")  # candidates grouped by length, index order inside a group
    lengths, starts = np.unique(clen[order], return_index=True)
    ends = np.append(starts[1:], n_cands)
    by_length = [cands[c] for c in order.tolist()]
    for n, a, b in zip(lengths.tolist(), starts.tolist(), ends.tolist(), strict=True):
        near = np.flatnonzero(np.abs(qlen - n) <= 1)
        if not len(near):
            continue
        idx = order[a:b]
        d = process.cdist([queries[q] for q in near.tolist()], by_length[a:b],
                          scorer=Levenshtein.distance, score_cutoff=1, workers=1, dtype=np.int32)
        dist = d.min(axis=1)
        first = np.where(d == dist[:, None], idx[None, :], n_cands).min(axis=1)
        better = (dist <= 1) & ((dist < best[near]) | ((dist == best[near]) & (first < result[near])))
        best[near[better]] = dist[better]
        result[near[better]] = first[better]
    left = np.flatnonzero(result == n_cands)
    if len(left):
        d = process.cdist([queries[q] for q in left.tolist()], cands, scorer=Levenshtein.distance, workers=-1,
                          dtype=np.int64)
        result[left] = d.argmin(axis=1)  # np.argmin: the first minimum
    return result


def vocab_map(source_vocab: Mapping[str, int] | Sequence[str], base_vocab: Mapping[str, int] | Sequence[str], *,
              source_marker: str, base_marker: str, source_width: int | None = None,
              base_width: int | None = None, reference_compat: str | Iterable[str] | None = None,
              workers: int | None = None) -> VocabMap:
    """The reference MinED vocabulary map (FuseLLM ``vocab_mapping.py``, type ``default``), id → id.

    For every source piece ``x``: ``x' = x.replace(source_marker, base_marker)`` (all occurrences; no
    replacement when the source has no marker); if ``x'`` is a base piece it maps there, otherwise to the
    base piece with the smallest edit distance to ``x'``, the first in ``base_vocab``'s iteration order
    winning ties. Markers are replaced, not stripped, so 'Ċ' vs '<0x0A>' gets an arbitrary nearest piece,
    exactly like the reference.

    ``base_vocab`` order matters for ties: pass ``tokenizer.get_vocab()`` for the reference's dict order
    (a hash order for fast tokenizers) or a list in id order for a deterministic one. ``source_width`` /
    ``base_width`` are the models' logit widths (Q11): the result has ``source_width`` entries (ids without
    a piece map to -1) and base ids ≥ ``base_width`` are not candidates, since the model cannot predict
    them. With ``"q12"`` in ``reference_compat`` the reference's string-keyed dictionary is built too;
    ``ids`` is then read from it, which gives the same array (the value depends only on ``x'``).
    ``workers``: threads searching (None: every core this process may use, one for a small map); the map
    does not depend on it.
    """
    compat = compat_set(reference_compat)
    src_pieces, src_ids = _as_vocab(source_vocab)
    base_pieces, base_ids = _as_vocab(base_vocab)
    if base_width is not None:
        keep = base_ids < base_width
        base_pieces = [p for p, k in zip(base_pieces, keep.tolist(), strict=True) if k]
        base_ids = base_ids[keep]
    width = int(src_ids.max(initial=-1)) + 1 if source_width is None else int(source_width)
    if len(src_ids) and src_ids.max() >= width:
        raise ValueError(f"source id {int(src_ids.max())} ≥ source_width {width}")

    key_of = [p.replace(source_marker, base_marker) for p in src_pieces] if source_marker else list(src_pieces)
    keys = dict(zip(reversed(key_of), reversed(src_ids.tolist()), strict=True))
    pos, exact_src = _nearest_pieces(key_of, base_pieces, workers)

    ids = np.full(width, -1, dtype=np.int64)
    exact = np.zeros(width, dtype=bool)
    by_string = None
    if "q12" in compat:  # the reference's structure, then read back through it
        by_string = {k: base_pieces[p] for k, p in zip(key_of, pos.tolist(), strict=True)}
        base_id_of = dict(zip(reversed(base_pieces), reversed(base_ids.tolist()), strict=True))
        ids[src_ids] = [base_id_of[by_string[k]] for k in key_of]
    else:
        ids[src_ids] = base_ids[pos]
    exact[src_ids] = exact_src
    return VocabMap(ids=ids, exact=exact, keys=keys, by_string=by_string)


def vocab_map_for_tokenizers(source_tokenizer: Any, base_tokenizer: Any, *, source_width: int | None = None,
                             base_width: int | None = None, order: Literal["id", "dict"] = "id",
                             reference_compat: str | Iterable[str] | None = None, workers: int | None = None) -> VocabMap:
    """:func:`vocab_map` between two transformers tokenizers, markers from their detected specs.

    ``order="id"`` scans base candidates in id order (deterministic, and what a slow SentencePiece
    tokenizer's ``get_vocab()`` gives); ``"dict"`` uses ``get_vocab()``'s own order like the reference.
    """
    src_spec, base_spec = detect_spec(source_tokenizer), detect_spec(base_tokenizer)
    src_vocab = source_tokenizer.get_vocab()
    base_vocab = base_tokenizer.get_vocab()
    if order == "id":
        base_vocab = dict(sorted(base_vocab.items(), key=lambda kv: kv[1]))
    return vocab_map(src_vocab, base_vocab, source_marker=src_spec.marker, base_marker=base_spec.marker,
                     source_width=source_width, base_width=base_width, reference_compat=reference_compat,
                     workers=workers)


def surface_vocab_map(vocab: VocabMap, source_tokenizer: Any, target_tokenizer: Any, target_width: int) -> VocabMap:
    """``vocab`` with every source piece that spells exactly the bytes of a target piece mapped to that piece.

    Why: the reference MinED map compares piece *strings* after swapping word markers, so a newline
    (``'\\n'`` in a Unigram vocabulary, ``'<0x0A>'`` with byte fallback) lands on an arbitrary nearest string
    instead of byte-level ``'Ċ'``, and a predicted newline teaches the target something else. Pieces with
    no exact byte twin keep their MinED target. Special tokens map by role (EOS to EOS).
    """
    src_spec, tgt_spec = detect_spec(source_tokenizer), detect_spec(target_tokenizer)
    by_bytes: dict[bytes, int] = {}
    for piece, tid in sorted(target_tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        surface = tgt_spec.surface(piece)
        if surface and tid < target_width:
            by_bytes.setdefault(surface, tid)
    ids = vocab.ids.copy()
    exact = vocab.exact.copy()
    for piece, sid in source_tokenizer.get_vocab().items():
        if sid >= len(ids):
            continue
        tid = by_bytes.get(src_spec.surface(piece)) if src_spec.surface(piece) else None
        if tid is not None:
            ids[sid], exact[sid] = tid, True
    for role in ("eos", "bos", "unk"):
        sid, tid = getattr(source_tokenizer, f"{role}_token_id"), getattr(target_tokenizer, f"{role}_token_id")
        if sid is not None and tid is not None and sid < len(ids) and tid < target_width:
            ids[sid], exact[sid] = tid, True
    return VocabMap(ids=ids, exact=exact, keys=vocab.keys, by_string=vocab.by_string)

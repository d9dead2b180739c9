"""Where the fusion gets its candidates' rows, per block of the target stream (:class:`CandidateBlock`).

Candidate 0 is the target's own initial distribution, the others the sources aligned into the target.
:class:`StreamCandidates` reads them from stores (or arrays); :class:`OnlineCandidates` runs the teachers
per batch instead, for small sources whose passes cost less than the student's step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fusers.align import EMPTY, MAPPED, Tokenization, VocabMap
from fusers.distill.aligned import TARGET_ROW_FIELDS, AlignOptions, TargetRows, self_rows, target_rows
from fusers.distill.chunks import ChunkEncoder, TextChunk
from fusers.distill.shards import ShardedStore
from fusers.distill.teachers import SUM_FIELDS, TeacherRows, teacher_rows

if TYPE_CHECKING:
    from torch import nn


@dataclass
class CandidateBlock:
    """All candidates' rows for positions ``[start, stop)`` of the packed target stream (L rows, C candidates).

    Candidate 0 is the target's own initial distribution. The ``seq_*`` fields repeat, per row, the sums of
    the chunk that row belongs to (each candidate's own), which is all the granularities need.
    """

    ids: np.ndarray  # int [L, C, k]
    logp: np.ndarray  # float [L, C, k]
    status: np.ndarray  # int8 [L, C]
    token_ce: np.ndarray  # float [L, C]
    token_bytes: np.ndarray  # float [L, C]
    seq_nats: np.ndarray  # float [L, C]
    seq_tokens: np.ndarray  # float [L, C]
    seq_bytes: np.ndarray  # float [L, C]

    @classmethod
    def of_chunks(cls, rows: Sequence[Sequence[TargetRows]], start: int = 0, stop: int | None = None) -> CandidateBlock:
        """The block of consecutive chunks' rows: ``rows[j][c]`` is candidate c's rows of the j-th chunk; the block
        holds rows ``[start, stop)`` of those chunks' rows in order (default: all), each with its chunk's sums.
        EMPTY rows are not substituted yet (:meth:`substitute_empty`)."""
        n_candidates = len(rows[0]) if rows else 0
        lengths = [len(chunk[0].status) for chunk in rows]
        cols: dict[str, list[np.ndarray]] = {name: [] for name in (*TARGET_ROW_FIELDS, *SUM_FIELDS)}
        for c in range(n_candidates):
            per_chunk = [chunk[c] for chunk in rows]
            for name in TARGET_ROW_FIELDS:
                cols[name].append(np.concatenate([getattr(r, name) for r in per_chunk]))
            for name in SUM_FIELDS:
                cols[name].append(np.repeat([float(getattr(r, name)) for r in per_chunk], lengths))
        stop = sum(lengths) if stop is None else stop

        def stacked(name: str, dtype: Any) -> np.ndarray:
            return np.stack([col[start:stop] for col in cols[name]], axis=1).astype(dtype)

        return cls(ids=stacked("ids", np.int64), logp=stacked("logp", np.float32), status=stacked("status", np.int8),
                   token_ce=stacked("token_ce", np.float32), token_bytes=stacked("token_bytes", np.float32),
                   seq_nats=stacked("nats", np.float64), seq_tokens=stacked("n_tokens", np.float64),
                   seq_bytes=stacked("n_bytes", np.float64))

    def substitute_empty(self) -> CandidateBlock:
        """EMPTY rows take candidate 0's row (the reference collator's "bad case": the base model's own)."""
        empty = self.status == EMPTY  # [L, C]
        if empty.any():
            self.ids = np.where(empty[..., None], self.ids[:, :1], self.ids)
            self.logp = np.where(empty[..., None], self.logp[:, :1], self.logp)
        return self


class CandidateSource:
    """Where a :class:`FusionCorpus` gets candidate rows: ``block(start, stop)`` over the packed target stream.

    ``prepare`` announces the blocks of a batch first, so that an online source can run its teachers on all
    of them at once.
    """

    names: list[str]

    def prepare(self, spans: Sequence[tuple[int, int]]) -> None:  # optional hook
        pass

    def block(self, start: int, stop: int) -> CandidateBlock:
        raise NotImplementedError


class StreamCandidates(CandidateSource):
    """Candidates whose rows are whole-stream arrays (memory-mapped stores, or arrays in memory).

    ``columns[c]`` maps each of :data:`TARGET_ROW_FIELDS` to something sliceable by stream row (an array or a
    :class:`RowView`); ``sums[c]`` maps each of :data:`SUM_FIELDS` to one value per chunk; ``chunk_of_row``
    [N] says which chunk each stream row belongs to.
    """

    def __init__(self, names: list[str], columns: list[dict[str, Any]], sums: list[dict[str, np.ndarray]],
                 chunk_of_row: np.ndarray):
        self.names = names
        self.columns = columns
        self.sums = [{k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for s in sums]
        self.chunk_of_row = chunk_of_row

    @classmethod
    def from_stores(cls, names: list[str], stores: list[ShardedStore]) -> StreamCandidates:
        """Candidate 0 is a teacher store of the target (its rows are the target's own), the rest aligned stores."""
        columns, sums = [], []
        for c, store in enumerate(stores):
            if c == 0:
                status = np.full(len(store.rows("tokens")), MAPPED, dtype=np.int8)
                columns.append({"ids": store.rows("topk_ids"), "logp": store.rows("topk_logp"), "status": status,
                                "token_ce": store.rows("token_ce"), "token_bytes": store.rows("token_bytes")})
            else:
                columns.append({name: store.rows(name) for name in TARGET_ROW_FIELDS})
            sums.append({name: store.sums(name) for name in SUM_FIELDS})
        offsets = stores[0].item_offsets()
        chunk_of_row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        return cls(names, columns, sums, chunk_of_row)

    def block(self, start: int, stop: int) -> CandidateBlock:
        chunk = self.chunk_of_row[start:stop]
        per = [{name: np.asarray(col[name][start:stop]) for name in TARGET_ROW_FIELDS} for col in self.columns]
        return CandidateBlock(
            ids=np.stack([p["ids"] for p in per], axis=1).astype(np.int64),
            logp=np.stack([p["logp"] for p in per], axis=1).astype(np.float32),
            status=np.stack([p["status"] for p in per], axis=1).astype(np.int8),
            token_ce=np.stack([p["token_ce"] for p in per], axis=1).astype(np.float32),
            token_bytes=np.stack([p["token_bytes"] for p in per], axis=1).astype(np.float32),
            seq_nats=np.stack([s["nats"][chunk] for s in self.sums], axis=1),
            seq_tokens=np.stack([s["n_tokens"][chunk] for s in self.sums], axis=1),
            seq_bytes=np.stack([s["n_bytes"][chunk] for s in self.sums], axis=1),
        ).substitute_empty()


@dataclass
class OnlineTeacher:
    """A teacher run on the fly: its (frozen) model, how it tokenizes, and how its rows reach the target."""

    name: str
    model: nn.Module
    encoder: ChunkEncoder
    vocab: VocabMap | None = None  # None for the target itself
    shared_vocab: bool = True


def onto_target(targets: Sequence[Tokenization], encoded: Sequence[Tokenization], rows: Sequence[TeacherRows],
                vocab: VocabMap | None, width: int, options: AlignOptions, *, is_target: bool,
                shared_vocab: bool = True) -> list[TargetRows]:
    """One teacher's rows of some chunks (``encoded``: the chunks as it tokenizes them) in the target's positions
    (``targets``): the target's own rows as they are (``is_target``, :func:`self_rows`), any other teacher's aligned
    (:func:`target_rows`)."""
    if is_target:
        return [self_rows(r) for r in rows]
    return [target_rows(t, s, r, vocab, width, options, shared_vocab=shared_vocab)
            for t, s, r in zip(targets, encoded, rows, strict=True)]


def candidate_rows(teachers: Sequence[OnlineTeacher], chunks: Sequence[TextChunk], k: int, width: int,
                   options: AlignOptions, *, batch_size: int = 16) -> list[list[TargetRows]]:
    """Run the teachers over ``chunks`` and move their rows onto the target: ``out[j][c]`` is teacher c's rows of
    chunk j in the target's positions. ``teachers[0]`` is the target's own initial model."""
    targets = [teachers[0].encoder.encode(chunk) for chunk in chunks]
    per_teacher: list[list[TargetRows]] = []
    for c, teacher in enumerate(teachers):
        encoded = targets if c == 0 else [teacher.encoder.encode(chunk) for chunk in chunks]
        rows = teacher_rows(teacher.model, encoded, k, batch_size)
        per_teacher.append(onto_target(targets, encoded, rows, teacher.vocab, width, options, is_target=c == 0,
                                       shared_vocab=teacher.shared_vocab))
    return [list(chunk) for chunk in zip(*per_teacher, strict=True)]


class OnlineCandidates(CandidateSource):
    """Candidates computed per batch instead of stored: the same rows as the stored path, no disk.

    For small sources the teacher passes cost less than the student's step, and nothing has to be kept
    (spec §12). Chunk results are kept in a small LRU cache because a block usually shares a chunk with its
    neighbour. ``teachers[0]`` must be a frozen copy of the target's initial model.
    """

    def __init__(self, teachers: list[OnlineTeacher], chunks: Sequence[TextChunk], chunk_offsets: np.ndarray,
                 k: int, width: int, options: AlignOptions, *, batch_size: int = 16, cache_chunks: int = 256):
        self.teachers = teachers
        self.names = [t.name for t in teachers]
        self.chunks = chunks
        self.offsets = chunk_offsets
        self.k, self.width, self.options, self.batch_size = k, width, options, batch_size
        self._cache: OrderedDict[int, list[TargetRows]] = OrderedDict()
        self._cache_size = cache_chunks

    def _chunks_of(self, start: int, stop: int) -> range:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        return range(first, last)

    def prepare(self, spans: Sequence[tuple[int, int]]) -> None:
        needed = sorted({i for a, b in spans for i in self._chunks_of(a, b)} - set(self._cache))
        if not needed:
            return
        rows = candidate_rows(self.teachers, [self.chunks[i] for i in needed], self.k, self.width, self.options,
                              batch_size=self.batch_size)
        for i, chunk_rows in zip(needed, rows, strict=True):
            self._cache[i] = chunk_rows
        while len(self._cache) > max(self._cache_size, len(needed)):
            self._cache.popitem(last=False)

    def block(self, start: int, stop: int) -> CandidateBlock:
        self.prepare([(start, stop)])
        ids = self._chunks_of(start, stop)
        first = int(self.offsets[ids.start])
        return CandidateBlock.of_chunks([self._cache[i] for i in ids], start - first,
                                        stop - first).substitute_empty()

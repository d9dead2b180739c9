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

from fusers.align import EMPTY, MAPPED, VocabMap
from fusers.distill.aligned import TARGET_ROW_FIELDS, AlignOptions, TargetRows, self_rows, target_rows
from fusers.distill.chunks import ChunkEncoder, TextChunk
from fusers.distill.shards import ShardedStore
from fusers.distill.teachers import SUM_FIELDS, teacher_rows

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
        target_enc = self.teachers[0].encoder
        bases = [target_enc.encode(self.chunks[i]) for i in needed]
        per_teacher: list[list[TargetRows]] = []
        for c, teacher in enumerate(self.teachers):
            encoded = bases if c == 0 else [teacher.encoder.encode(self.chunks[i]) for i in needed]
            rows = teacher_rows(teacher.model, encoded, self.k, self.batch_size)
            if c == 0:
                per_teacher.append([self_rows(r) for r in rows])
            else:
                per_teacher.append([target_rows(b, s, r, teacher.vocab, self.width, self.options,
                                                shared_vocab=teacher.shared_vocab)
                                    for b, s, r in zip(bases, encoded, rows, strict=True)])
        for n, i in enumerate(needed):
            self._cache[i] = [rows[n] for rows in per_teacher]
        while len(self._cache) > max(self._cache_size, len(needed)):
            self._cache.popitem(last=False)

    def block(self, start: int, stop: int) -> CandidateBlock:
        self.prepare([(start, stop)])
        ids = self._chunks_of(start, stop)
        cols: dict[str, list[np.ndarray]] = {name: [] for name in (*TARGET_ROW_FIELDS, *SUM_FIELDS)}
        for c in range(len(self.teachers)):
            per_chunk = [self._cache[i][c] for i in ids]
            lengths = [len(r.status) for r in per_chunk]
            for name in TARGET_ROW_FIELDS:
                cols[name].append(np.concatenate([getattr(r, name) for r in per_chunk]))
            for name in SUM_FIELDS:
                cols[name].append(np.repeat([float(getattr(r, name)) for r in per_chunk], lengths))
        a, b = start - int(self.offsets[ids.start]), stop - int(self.offsets[ids.start])

        def stacked(name: str, dtype: Any) -> np.ndarray:
            return np.stack([col[a:b] for col in cols[name]], axis=1).astype(dtype)

        return CandidateBlock(ids=stacked("ids", np.int64), logp=stacked("logp", np.float32),
                              status=stacked("status", np.int8), token_ce=stacked("token_ce", np.float32),
                              token_bytes=stacked("token_bytes", np.float32), seq_nats=stacked("nats", np.float64),
                              seq_tokens=stacked("n_tokens", np.float64),
                              seq_bytes=stacked("n_bytes", np.float64)).substitute_empty()

"""The fused store: per target token, only the fused sparse target that training reads (FuseLLM ``teacher_mode=fused``).

A training step reads, per row of the target stream, one fused distribution: under MinCE the winning candidate's
k entries, under the averages the C·k weighted entries (:func:`~fusers.distill.fusion.fuse_block`). The stored
mode keeps every candidate's rows instead, a teacher store per model (6·k + 8 bytes per token) and an aligned
store per source (6·k + 5), so that any fusion can be chosen later. This store keeps the fused rows alone,
compactly: the target's input id, and K = k (MinCE) or C·k entries per row, each an id (uint16 when the
target's ids fit, else uint32) and its log-probability, by default quantised to one byte:

    code = round(-log q · 16), clipped to 0..254; 255 = no entry (probability 0).

Decoded as ``-code / 16`` and renormalised over the row's entries (the softmax that the training batch applies
anyway), each entry's log-probability is off by at most 1/32 nat before renormalising, i.e. a probability by at
most e^(1/32) - 1 = 3.2 %, and by at most e^(1/16) - 1 = 6.5 % after it (the normaliser moves by at most the
same factor). Entries below e^-15.9 ≈ 1.3e-7 are clipped up to it. ``logp="float16"`` / ``"float32"`` keep the
log-probabilities unquantised (2 or 4 bytes per entry). MinCE at k = 10 with ``uint8``: 2 + 10·(2 + 1) = 32 bytes
per target token.

The store is built shard by shard (:func:`ensure_fused_store`) with the same content keys, resumability and
process/job split (:class:`~fusers.distill.shards.ShardSplit`) as the teacher stores. A shard's candidate rows
(:class:`CandidateRows`) come from a teacher or aligned store that already holds that shard, else from the
teachers themselves, loaded on first need and then kept resident together, so no teacher or aligned store is
written and the disk holds the fused store alone.

What it costs: the fusion (function, granularity, temperature, τ, CE per token or per byte) is fixed when the
store is built, so another one needs a new store (its key differs); the teachers are resident together while
the store is built; and the ``block`` granularity (quirk Q6: one choice per packed block, and packed blocks
cross chunk and shard boundaries) cannot be computed shard by shard and is refused.

Training reads it as one candidate (:class:`FusedCandidates`) through :func:`fused_corpus`: with one candidate
MinCE is the identity, and the temperature, applied once when the rows were fused, is 1 there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fusers.align import MAPPED, VocabMap
from fusers.distill.aligned import AlignOptions, TargetRows, stored_target_rows
from fusers.distill.candidates import CandidateBlock, CandidateSource, onto_target
from fusers.distill.chunks import ChunkEncoder, TextChunk
from fusers.distill.corpus import FusionCorpus
from fusers.distill.fusion import FUSIONS, Fusion, Granularity, fuse_block
from fusers.distill.shards import ShardedStore, ShardSplit, fill_shards, shard_progress, store_key
from fusers.distill.teachers import stored_teacher_rows, teacher_rows

if TYPE_CHECKING:
    from torch import nn

#: How the fused log-probabilities are kept: one byte (quantised, see the module docstring), or a float.
LOGP_FORMATS: tuple[str, ...] = ("uint8", "float16", "float32")
#: uint8 codes per nat of log-probability.
STEPS_PER_NAT = 16
#: The uint8 code of an entry with no mass (padding, or a candidate weighted 0).
NO_ENTRY = 255
#: Fusion granularities a fused store can hold: those whose choice at a row depends on the row's chunk alone.
FUSED_GRANULARITIES: tuple[str, ...] = ("sequence", "token")

FUSED_ROW_FIELDS = ("tokens", "ids", "logq")
FUSED_SUM_FIELDS = ("candidate_weight", "status_counts")


@dataclass(frozen=True)
class FusedSettings:
    """Everything besides the candidates' rows that decides a fused row: the fusion function and granularity,
    the teacher temperature, ``tau`` (``avg_ce_softmax`` only), CE per token instead of per byte, the log-prob
    format."""

    fusion: Fusion
    granularity: Granularity
    temperature: float = 1.0
    tau: float = 1.0
    per_token: bool = False
    logp: str = "uint8"

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {FUSIONS}")
        if self.granularity not in FUSED_GRANULARITIES:
            raise ValueError(f"a fused store fuses each chunk on its own, so granularity {self.granularity!r} cannot be "
                             f"stored (block: one choice per packed block); use one of {FUSED_GRANULARITIES}")
        if self.logp not in LOGP_FORMATS:
            raise ValueError(f"unknown fused log-prob format {self.logp!r}; expected one of {LOGP_FORMATS}")

    def key(self) -> dict[str, Any]:
        """The settings as they change the rows (``tau`` only where the fusion reads it)."""
        return {"fusion": self.fusion, "granularity": self.granularity, "temperature": self.temperature,
                "tau": self.tau if self.fusion == "avg_ce_softmax" else None, "per_token": self.per_token,
                "logp": self.logp}

    def entries(self, k: int, n_candidates: int) -> int:
        """Entries per fused row: the winner's k under MinCE, every candidate's k under the averages."""
        return k if self.fusion == "min_ce" else n_candidates * k


def fused_store_key(candidate_keys: Sequence[str], settings: FusedSettings) -> str:
    """The content key of a fused store: the keys of the rows it fuses (the target's teacher store, then each source's
    aligned store: models, precisions, corpus, k, alignment, vocabulary maps) and the :class:`FusedSettings`."""
    return store_key("fused", list(candidate_keys), settings.key())


def id_dtype(id_bound: int) -> np.dtype:
    """uint16 for ids below 65,536 (a target of at most that many logits and tokens), else uint32."""
    return np.dtype(np.uint16 if id_bound <= 1 << 16 else np.uint32)


def encode_logp(probs: np.ndarray, fmt: str) -> np.ndarray:
    """Probabilities [..., K] as stored: log-probs in ``fmt`` (``-inf`` for 0), or uint8 codes (module docstring)."""
    with np.errstate(divide="ignore"):
        logp = np.log(np.asarray(probs, dtype=np.float64))
    if fmt != "uint8":
        return logp.astype(fmt)
    codes = np.clip(np.rint(-logp * STEPS_PER_NAT), 0, NO_ENTRY - 1)
    return np.where(np.asarray(probs) > 0, codes, NO_ENTRY).astype(np.uint8)


def decode_logp(stored: np.ndarray, fmt: str) -> np.ndarray:
    """float32 log-probs (``-inf``: no entry) of stored ones; not renormalised (the softmax of a training batch is)."""
    if fmt != "uint8":
        return np.asarray(stored, dtype=np.float32)
    codes = np.asarray(stored)
    return np.where(codes == NO_ENTRY, -np.inf, -codes.astype(np.float32) / STEPS_PER_NAT).astype(np.float32)


@dataclass
class FusedRows:
    """One chunk's fused rows (n target tokens, K entries each) and what its fusion chose.

    ``candidate_weight[c]``: candidate c's weight summed over the chunk's rows (MinCE: the rows it won);
    ``status_counts[c]``: candidate c's rows that were mapped, fallback, empty (as aligned)."""

    tokens: np.ndarray  # uint16/uint32 [n]: the target's input ids
    ids: np.ndarray  # uint16/uint32 [n, K]; 0 where there is no entry
    logq: np.ndarray  # uint8/float16/float32 [n, K]: the fused log-probabilities (module docstring)
    candidate_weight: np.ndarray  # float32 [C]
    status_counts: np.ndarray  # int32 [C, 3]


def fused_rows(tokens: Sequence[np.ndarray], rows: Sequence[Sequence[TargetRows]], settings: FusedSettings,
               id_bound: int) -> list[FusedRows]:
    """Fuse consecutive chunks: ``tokens[j]`` the target's ids of chunk j, ``rows[j][c]`` candidate c's rows of it
    (candidate 0: the target's own). Every row goes through :func:`fuse_block`, as a training batch does."""
    block = CandidateBlock.of_chunks(rows)
    status = block.status.copy()  # [L, C], as aligned (EMPTY rows still EMPTY)
    ids, probs, weights = fuse_block(block.substitute_empty(), settings.fusion, settings.granularity,
                                     temperature=settings.temperature, tau=settings.tau, per_token=settings.per_token)
    dtype = id_dtype(id_bound)
    ids_np = ids.clamp_min(0).numpy().astype(dtype)  # padding (-1) carries no mass: id 0, as the batch clamps it
    logq = encode_logp(probs.numpy(), settings.logp)
    weights_np = weights.double().numpy()
    n_candidates = status.shape[1]
    out, start = [], 0
    for chunk_tokens in tokens:
        stop = start + len(chunk_tokens)
        counts = np.stack([np.bincount(status[start:stop, c].astype(np.int64), minlength=3)[:3]
                           for c in range(n_candidates)])
        out.append(FusedRows(np.asarray(chunk_tokens).astype(dtype), ids_np[start:stop], logq[start:stop],
                             weights_np[start:stop].sum(axis=0).astype(np.float32), counts.astype(np.int32)))
        start = stop
    if start != len(status):
        raise ValueError(f"{start} target tokens for {len(status)} candidate rows")
    return out


@dataclass
class ResidentTeacher:
    """A candidate of the fused store: how to load its model (on first need), how it tokenizes, how its rows reach
    the target (``vocab``/``shared_vocab``; unused for the target itself), and where its rows may be stored already
    (``teacher_store``, ``aligned_store``: stores that exist, or None)."""

    name: str
    load: Callable[[], nn.Module]
    encoder: ChunkEncoder
    vocab: VocabMap | None = None
    shared_vocab: bool = True
    teacher_store: ShardedStore | None = None
    aligned_store: ShardedStore | None = None


class CandidateRows:
    """Every candidate's rows of one shard of chunks, in the target's positions, from wherever they are cheapest:
    an aligned store holding the shard, else a teacher store holding it (aligned here), else the teacher's own
    pass. Models are loaded on first need and kept, so the teachers that must run are resident together.
    ``origins[c]`` counts the shards candidate c took from each place."""

    def __init__(self, teachers: Sequence[ResidentTeacher], chunks: Sequence[TextChunk], k: int, width: int,
                 options: AlignOptions, *, batch_size: int = 16):
        self.teachers, self.chunks = list(teachers), chunks
        self.k, self.width, self.options, self.batch_size = k, width, options, batch_size
        self._models: dict[int, nn.Module] = {}
        self.origins: list[Counter[str]] = [Counter() for _ in self.teachers]

    def _model(self, c: int) -> nn.Module:
        if c not in self._models:
            self._models[c] = self.teachers[c].load()
        return self._models[c]

    def shard(self, shard: int, items: range) -> tuple[list[np.ndarray], list[list[TargetRows]]]:
        """The target's ids of every chunk in ``items`` (shard ``shard`` of the stores), and ``rows[j][c]``."""
        chunks = [self.chunks[i] for i in items]
        targets = [self.teachers[0].encoder.encode(chunk) for chunk in chunks]
        per_candidate: list[list[TargetRows]] = []
        for c, teacher in enumerate(self.teachers):
            aligned, stored = teacher.aligned_store, teacher.teacher_store
            if c > 0 and aligned is not None and aligned.has(shard):
                per_candidate.append(stored_target_rows(aligned, shard))
                self.origins[c]["aligned store"] += 1
                continue
            encoded = targets if c == 0 else [teacher.encoder.encode(chunk) for chunk in chunks]
            if stored is not None and stored.has(shard):
                rows = stored_teacher_rows(stored, shard)
                self.origins[c]["teacher store"] += 1
            else:
                rows = teacher_rows(self._model(c), encoded, self.k, self.batch_size)
                self.origins[c]["computed"] += 1
            per_candidate.append(onto_target(targets, encoded, rows, teacher.vocab, self.width, self.options,
                                             is_target=c == 0, shared_vocab=teacher.shared_vocab))
        return [np.asarray(t.ids) for t in targets], [list(chunk) for chunk in zip(*per_candidate, strict=True)]


def fused_layout(settings: FusedSettings, k: int, n_candidates: int, id_bound: int) -> dict[str, Any]:
    """What a fused store holds (its :class:`ShardedStore` layout)."""
    return {"kind": "fused", "k": k, "candidates": n_candidates, "entries": settings.entries(k, n_candidates),
            "ids": id_dtype(id_bound).name, **settings.key()}


def ensure_fused_store(root: Path, chunks: Sequence[TextChunk], rows: CandidateRows, settings: FusedSettings,
                       id_bound: int, *, shard_size: int = 128, about: dict[str, Any] | None = None,
                       split: ShardSplit | None = None) -> ShardedStore:
    """The fused store of ``chunks``, computing only the shards that are missing (this process's share of them,
    ``split``, as :func:`fusers.distill.teachers.ensure_teacher_store`). ``id_bound``: more than any id (input or
    fused) the target can have, which sets the id type. ``shard_size`` must be the teacher stores' for ``rows`` to
    read their shards."""
    split = split or ShardSplit.of_processes()
    layout = fused_layout(settings, rows.k, len(rows.teachers), id_bound)
    store = ShardedStore(root, len(chunks), shard_size, layout, about)
    for teacher in rows.teachers:
        for existing in (teacher.teacher_store, teacher.aligned_store):
            if existing is not None and existing.shard_size != shard_size:
                raise ValueError(f"store {existing.root} has shards of {existing.shard_size} chunks, the fused store "
                                 f"{shard_size}: its shards cannot be read one for one")

    def compute(shards: list[int]) -> None:
        for shard in shard_progress(shards, "fuse", show=split.process == 0):
            items = store.shard_items(shard)
            tokens, candidate_rows = rows.shard(shard, items)
            store.write(shard, fused_rows(tokens, candidate_rows, settings, id_bound), FUSED_ROW_FIELDS,
                        FUSED_SUM_FIELDS)

    fill_shards(store, split, compute)
    return store


class FusedCandidates(CandidateSource):
    """A fused store as a training batch's one candidate: rows of its fused entries, decoded (not renormalised: the
    batch's softmax is), and neutral scores. With one candidate MinCE picks it at every row."""

    def __init__(self, store: ShardedStore):
        self.names = ["fused"]
        self.fmt = store.layout["logp"]
        self.ids, self.logq = store.rows("ids"), store.rows("logq")

    def block(self, start: int, stop: int) -> CandidateBlock:
        ids = np.asarray(self.ids[start:stop]).astype(np.int64)[:, None]  # [L, 1, K]
        logp = decode_logp(self.logq[start:stop], self.fmt)[:, None]
        n = len(ids)
        ones = np.ones((n, 1))
        return CandidateBlock(ids=ids, logp=logp, status=np.full((n, 1), MAPPED, dtype=np.int8),
                              token_ce=np.zeros((n, 1), np.float32), token_bytes=np.ones((n, 1), np.float32),
                              seq_nats=np.zeros((n, 1)), seq_tokens=ones, seq_bytes=ones)


def fused_corpus(store: ShardedStore, seq_len: int) -> FusionCorpus:
    """The training corpus of a fused store: its target tokens in packed ``seq_len`` blocks, each row's target the
    stored fused entries renormalised. Fusion, granularity and temperature were applied when the store was built:
    here MinCE over the one candidate and temperature 1 leave the rows as they are."""
    return FusionCorpus(store.rows("tokens")[:], FusedCandidates(store), seq_len=seq_len, fusion="min_ce",
                        granularity="sequence", temperature=1.0)


def fused_shares(store: ShardedStore) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, its weight summed over every row of the store (MinCE: the rows it won) and its
    mapped/fallback/empty row counts [C, 3], as recorded when the store was built."""
    return (store.sums("candidate_weight").sum(axis=0, dtype=np.float64),
            store.sums("status_counts").sum(axis=0, dtype=np.int64))

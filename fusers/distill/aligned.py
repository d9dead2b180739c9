"""Teacher rows moved into the target's positions and vocabulary (:func:`target_rows`), stored or not.

A teacher that tokenizes a chunk exactly like the target is used as is (the target itself, or a source
sharing its vocabulary); any other goes through :mod:`fusers.align`: sequence alignment, vocabulary map,
distribution mapping, as :class:`AlignOptions` say. Each target position then holds, per candidate, k (id,
log-prob) entries and a status (mapped / one-hot fallback / empty); empty rows take the target's own
distribution, as the reference's collator does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusers.align import (
    EMPTY,
    FALLBACK,
    MAPPED,
    Alignment,
    Tokenization,
    VocabMap,
    align_sequences,
    fusechat_distribution,
    map_distribution,
)
from fusers.distill.chunks import ChunkEncoder, TextChunk
from fusers.distill.shards import ShardedStore, ShardSplit, fill_shards, shard_progress
from fusers.distill.teachers import SUM_FIELDS, TeacherRows, stored_teacher_rows


@dataclass
class TargetRows:
    """One chunk and one candidate teacher, in the TARGET's positions (n_T) and vocabulary.

    ``status`` per row: MAPPED (the teacher's distribution), FALLBACK (one-hot on a target token) or EMPTY
    (nothing usable: the target's own distribution is substituted when batches are built). ``token_ce`` /
    ``token_bytes``: the teacher's CE of the token its row predicts and that token's bytes (NaN / 0 where
    the row is not MAPPED or predicts nothing). The sums are the teacher's, over its own tokenization.
    """

    ids: np.ndarray  # int32 [n_T, k], -1 padding
    logp: np.ndarray  # float16 [n_T, k], -inf padding
    status: np.ndarray  # int8 [n_T]
    token_ce: np.ndarray  # float16 [n_T]
    token_bytes: np.ndarray  # uint16 [n_T]
    nats: float
    n_tokens: int
    n_bytes: int


TARGET_ROW_FIELDS = ("ids", "logp", "status", "token_ce", "token_bytes")


@dataclass(frozen=True)
class AlignOptions:
    """How a teacher's rows are moved onto the target (see :func:`fusers.align.map_distribution`).

    ``fallback="current"`` is quirk Q1, ``collision="first"`` quirk Q5; ``match``/``one_to_many`` default to
    FuseBench's corrected rules, ``"reference"``/``"fallback"`` reproduce FuseLLM's ``transform_step_logits``.
    ``same_end``: a teacher row is only used where its token ends at the same byte of the text as the target
    token, i.e. where both rows predict what follows the same point. The MinED match alone also accepts
    e.g. SentencePiece ``'has▁'`` for byte-level ``'Ġhas'``, whose row predicts the text after the space
    (``'27'`` where the target needs ``'Ġ27'``); such rows fall back instead (off: the reference).
    """

    mode: str = "offsets"
    fallback: Literal["next", "current"] = "next"
    collision: Literal["sum", "first"] = "sum"
    match: Literal["surface", "reference"] = "surface"
    one_to_many: Literal["last", "fallback"] = "last"
    same_end: bool = True
    #: "fusebench": :func:`fusers.align.map_distribution` with the options above; "fusechat": FuseChat's
    #: released stage 3 (:func:`fusers.align.fusechat_distribution`), which has rules of its own (the
    #: options above except ``mode`` do not apply).
    distribution: Literal["fusebench", "fusechat"] = "fusebench"
    #: Whose vocabulary a MAPPED row's entries are in. "target": the teacher's entries moved into the target's
    #: vocabulary through the map (what a loss over the target's ids needs). "teacher": the teacher's own top-k
    #: at the aligned row as it is, ids in the TEACHER's vocabulary and no entry dropped or merged (ULD compares
    #: sorted probabilities only, :mod:`fusers.distill.uld`); the sequence alignment, its match test and the
    #: fallback rows are those of "target".
    vocabulary: Literal["target", "teacher"] = "target"

    def to_dict(self) -> dict[str, str]:
        """The options as store keys and reports hold them; ``vocabulary`` only when it is not the default, so the
        keys of the stores made before it existed stay valid."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.vocabulary == "target":
            del out["vocabulary"]
        return out


def identity_rows(rows: TeacherRows, width: int) -> TargetRows:
    """A teacher that tokenizes like the target: rows unchanged, ids the target cannot output dropped."""
    ids = rows.topk_ids.copy()
    logp = rows.topk_logp.copy()
    outside = ids >= width
    ids[outside] = -1
    logp[outside] = -np.inf
    status = np.where((ids >= 0).any(axis=1), MAPPED, EMPTY).astype(np.int8)
    return TargetRows(ids, logp, status, rows.token_ce.copy(), rows.token_bytes.copy(), rows.nats, rows.n_tokens,
                      rows.n_bytes)


def target_rows(target: Tokenization, source: Tokenization, rows: TeacherRows, vocab: VocabMap | None,
                width: int, options: AlignOptions, *, shared_vocab: bool = False,
                alignment: Alignment | None = None) -> TargetRows:
    """Move one chunk's teacher rows onto the target's positions (spec §2).

    With ``shared_vocab`` and identical ids the rows are used as they are; otherwise the tokenizations are
    aligned (``options.mode``) and each target position takes the teacher distribution of its aligned
    position through the vocabulary map (``options.same_end``: only where both tokens end at the same byte).
    Under the corrected fallback (next token), a fallback on the chunk's last row has no next token in the
    chunk and becomes EMPTY (the target's own distribution). Under ``options.vocabulary="teacher"`` a used row keeps
    the teacher's own entries (ids in its vocabulary), EMPTY only where it has none. ``alignment``: the chunk's
    alignment when the caller has it already (FuseChat aligns once for its co-alignment statistics and reuses it here).
    """
    if len(source) != len(rows.tokens) or not np.array_equal(source.ids, rows.tokens):
        raise ValueError("the stored teacher rows were computed from another tokenization of this chunk")
    own = options.vocabulary == "teacher"
    if own and options.distribution != "fusebench":
        raise ValueError("vocabulary='teacher' keeps the teacher's rows as they are; FuseChat's distribution "
                         "rules map entries into the target's vocabulary (use distribution='fusebench')")
    if shared_vocab and np.array_equal(target.ids, source.ids):
        return _teacher_vocabulary_rows(rows) if own else identity_rows(rows, width)
    if vocab is None:
        raise ValueError("a teacher with another tokenization needs a vocabulary map")
    if alignment is None:
        alignment = align_sequences(target, source, mode=options.mode)  # type: ignore[arg-type]
    if options.distribution == "fusechat":
        mapped = fusechat_distribution(alignment, target, source, rows.topk_ids, rows.topk_logp.astype(np.float32),
                                       vocab, base_width=width, k_out=rows.topk_ids.shape[1])
    else:
        mapped = map_distribution(alignment, target, source, rows.topk_ids, rows.topk_logp.astype(np.float32),
                                  vocab, one_to_many=options.one_to_many, fallback=options.fallback,
                                  collision=options.collision, match=options.match, base_width=width,
                                  k_out=rows.topk_ids.shape[1])
    status = mapped.status.copy()
    ids, logp = mapped.ids.astype(np.int32), mapped.logits.astype(np.float16)
    if own:  # the aligned row's own entries wherever map_distribution used a teacher row (MAPPED or EMPTY)
        aligned = np.flatnonzero(mapped.source >= 0)
        ids[aligned] = rows.topk_ids[mapped.source[aligned]]
        logp[aligned] = rows.topk_logp[mapped.source[aligned]]
        status[aligned] = np.where((ids[aligned] >= 0).any(axis=1), MAPPED, EMPTY)
    if options.same_end and options.distribution == "fusebench":
        _, _, target_ends = target.byte_spans()
        _, _, source_ends = source.byte_spans()
        rows_used = np.flatnonzero(status != FALLBACK)
        moved = rows_used[target_ends[rows_used] != source_ends[mapped.source[rows_used]]]
        if len(moved):  # the one-hot fallback of map_distribution, on the next (or, Q1, current) token
            step = 1 if options.fallback == "next" else 0
            fallback_ids = target.ids[np.minimum(moved + step, len(target) - 1)]
            status[moved] = FALLBACK
            ids[moved] = -1
            logp[moved] = -np.inf
            ids[moved, 0] = fallback_ids
            logp[moved, 0] = 1.0
    if options.fallback == "next" and len(status) and status[-1] == FALLBACK:
        status[-1] = EMPTY
    used = np.where(status == MAPPED, mapped.source, -1)
    token_ce = np.where(used >= 0, rows.token_ce[np.maximum(used, 0)], np.nan).astype(np.float16)
    token_bytes = np.where(used >= 0, rows.token_bytes[np.maximum(used, 0)], 0).astype(np.uint16)
    return TargetRows(ids, logp, status.astype(np.int8), token_ce, token_bytes, rows.nats, rows.n_tokens,
                      rows.n_bytes)


def _teacher_vocabulary_rows(rows: TeacherRows) -> TargetRows:
    """A teacher that tokenizes like the target, under ``vocabulary="teacher"``: every entry kept (none is dropped
    for lying beyond the target's logit width, as :func:`identity_rows` does)."""
    status = np.where((rows.topk_ids >= 0).any(axis=1), MAPPED, EMPTY).astype(np.int8)
    return TargetRows(rows.topk_ids.copy(), rows.topk_logp.copy(), status, rows.token_ce.copy(),
                      rows.token_bytes.copy(), rows.nats, rows.n_tokens, rows.n_bytes)


def self_rows(rows: TeacherRows) -> TargetRows:
    """The target's own (initial) distribution as a candidate: every row MAPPED."""
    return TargetRows(rows.topk_ids, rows.topk_logp, np.full(len(rows.tokens), MAPPED, dtype=np.int8),
                      rows.token_ce, rows.token_bytes, rows.nats, rows.n_tokens, rows.n_bytes)


def shares_vocabulary(a: Any, b: Any) -> bool:
    """Same token → id map: a teacher's ids then need no vocabulary map (alignment is still checked per chunk)."""
    return a.get_vocab() == b.get_vocab()


def aligned_layout(width: int, options: AlignOptions) -> dict[str, Any]:
    """What an aligned store holds (its :class:`ShardedStore` layout): rows in a target of ``width`` logits, moved
    there as ``options`` say."""
    return {"kind": "aligned", "width": width, **options.to_dict()}


def stored_target_rows(store: ShardedStore, shard: int) -> list[TargetRows]:
    """The :class:`TargetRows` of every chunk of one shard of an aligned store, as :func:`target_rows` made them."""
    offsets = np.concatenate([[0], np.cumsum(store.shard_sums(shard, "_counts"))]).astype(np.int64)
    cols = {name: store.shard_rows(shard, name) for name in TARGET_ROW_FIELDS}
    sums = {name: store.shard_sums(shard, name) for name in SUM_FIELDS}
    return [TargetRows(**{n: np.asarray(cols[n][offsets[j]:offsets[j + 1]]) for n in TARGET_ROW_FIELDS},
                       **{n: sums[n][j].item() for n in SUM_FIELDS}) for j in range(len(offsets) - 1)]


def ensure_aligned_store(root: Path, chunks: Sequence[TextChunk], target: ChunkEncoder, source: ChunkEncoder,
                         teacher: ShardedStore, vocab: VocabMap | None, width: int, options: AlignOptions, *,
                         shared_vocab: bool, about: dict[str, Any] | None = None,
                         alignments: Sequence[Alignment] | None = None,
                         split: ShardSplit | None = None) -> ShardedStore:
    """The aligned rows (target positions) of one teacher store, computing only the missing shards.

    ``alignments``: one per chunk, when already computed (else each chunk is aligned with ``options.mode``).
    ``split``: this process's share, as in :func:`fusers.distill.teachers.ensure_teacher_store` (every process of
    a launch calls this for the same store). Aligned shard s is made from teacher shard s alone (both have the
    teacher's shard size), so a job needs only its own share of the teacher store.
    """
    split = split or ShardSplit.of_processes()
    store = ShardedStore(root, len(chunks), teacher.shard_size, aligned_layout(width, options), about)

    def compute(shards: list[int]) -> None:
        for shard in shard_progress(shards, f"align {(about or {}).get('source', '')}".strip(),
                                    show=split.process == 0):
            items = [target_rows(target.encode(chunks[i]), source.encode(chunks[i]), rows, vocab, width, options,
                                 shared_vocab=shared_vocab, alignment=None if alignments is None else alignments[i])
                     for i, rows in zip(store.shard_items(shard), stored_teacher_rows(teacher, shard), strict=True)]
            store.write(shard, items, TARGET_ROW_FIELDS, SUM_FIELDS)

    fill_shards(store, split, compute)
    return store

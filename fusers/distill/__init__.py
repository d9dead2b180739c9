"""Distillation machinery shared by the training-based fusers (FuseLLM, FuseChat, ProFuser).

A training-based fuser teaches one *target* model from the next-token distributions of several *teachers*
(the sources, plus the target's own initial distribution, the reference's "ref model"). This package holds
every piece of that except the method-specific orchestration (spec ``fusion-algorithms.md`` §1, §3, §4, §12):

1. **Fusion corpus as text chunks** (:mod:`~fusers.distill.chunks`). Every model must see exactly the same
   text, so documents are cut into chunks that fit ``max_tokens`` under *every* tokenizer, preferably at line
   breaks. A document's first chunk is read after the model's EOS token.

2. **Teacher distributions** (:mod:`~fusers.distill.teachers`). Per chunk and teacher, in the teacher's own
   tokenization: the top-k next-token log-probabilities with their ids (over the model's logit width: quirk
   Q11), the per-token cross-entropy of the actual next token, and per-chunk sums.

3. **Storage** (:mod:`~fusers.distill.shards`). Rows live in memory-mapped ``.npy`` shards, about 6·k + 8
   bytes per token, keyed by content and resumable shard by shard; N processes or N independent jobs each
   compute 1/N of the shards (:class:`ShardSplit`). Small sources can skip storage: :class:`OnlineCandidates`
   computes the same rows per batch. A fused store (:mod:`~fusers.distill.fused_store`) keeps only the fused
   row training reads, about 32 bytes per target token at k = 10 under MinCE, with the fusion fixed ahead.

4. **Into the target's positions and vocabulary** (:mod:`~fusers.distill.aligned`). A teacher that
   tokenizes a chunk exactly like the target is used as is; any other goes through :mod:`fusers.align`.

5. **Candidates and fusion functions** (:mod:`~fusers.distill.candidates`, :mod:`~fusers.distill.fusion`).
   A cross-entropy score per position and candidate at ``sequence``, ``token`` or ``block`` granularity (per
   UTF-8 byte by default, quirk Q13), then MinCE, reference AvgCE or ``softmax(-CE/τ)``; the result stays
   sparse.

6. **Training data and the objective** (:mod:`~fusers.distill.corpus`, :func:`fusion_loss`):
   ``λ·CLM + (1-λ)·Σ_v -q_v·log_softmax(z)_v`` over the sparse entries only, both terms from one log-softmax.

7. **Preference training** (:mod:`~fusers.distill.preference`, FuseChat-3.0): response-only SFT, DPO and WRPO
   losses over sequence log-probs, with reference log-probs computed once.

8. **Training under accelerate** (:mod:`~fusers.distill.training`): the shared loop of :mod:`harness.train`,
   with the model, its optimizer and the dataloader prepared by ``accelerate.Accelerator`` (DDP, FSDP2 or
   DeepSpeed, as launched). Each process trains its slice of every global batch and masked means divide by
   the global count of counted rows, so the averaged gradient equals the single-process gradient of the same
   global batch; :func:`save_trained` gathers sharded weights and the main process writes the HF folder.
"""

from fusers.distill.aligned import (
    TARGET_ROW_FIELDS,
    AlignOptions,
    TargetRows,
    aligned_layout,
    ensure_aligned_store,
    identity_rows,
    self_rows,
    shares_vocabulary,
    stored_target_rows,
    target_rows,
)
from fusers.distill.candidates import (
    CandidateBlock,
    CandidateSource,
    OnlineCandidates,
    OnlineTeacher,
    StreamCandidates,
    candidate_rows,
    onto_target,
)
from fusers.distill.chunks import (
    ChunkEncoder,
    TextChunk,
    chunk_documents,
    chunks_fingerprint,
    predicted_bytes,
    rows_predicting,
    text_byte_spans,
)
from fusers.distill.corpus import FusionCorpus, ScheduledCorpus, StepBatches
from fusers.distill.fused_store import (
    FUSED_GRANULARITIES,
    LOGP_FORMATS,
    CandidateRows,
    FusedCandidates,
    FusedRows,
    FusedSettings,
    ResidentTeacher,
    decode_logp,
    encode_logp,
    ensure_fused_store,
    fused_corpus,
    fused_layout,
    fused_rows,
    fused_shares,
    fused_store_key,
)
from fusers.distill.fusion import (
    FUSIONS,
    GRANULARITIES,
    candidate_scores,
    fuse_block,
    fuse_topk,
    fusion_loss,
    fusion_weights,
    sparse_soft_ce,
)
from fusers.distill.preference import (
    PreferenceCorpus,
    PreferenceSchedule,
    ResponseCorpus,
    dpo_loss,
    preference_loss,
    reference_logps,
    response_ce_loss,
    sequence_logps,
    wrpo_loss,
)
from fusers.distill.shards import RowView, ShardedStore, ShardSplit, prepared_store, store_key
from fusers.distill.teachers import (
    ROW_FIELDS,
    SUM_FIELDS,
    TeacherRows,
    ensure_teacher_store,
    logit_width,
    masked_sums,
    stored_teacher_rows,
    teacher_layout,
    teacher_rows,
    teacher_store_key,
)
from fusers.distill.training import (
    details_of,
    distributed_details,
    main_process_value,
    make_accelerator,
    mean_across_processes,
    save_trained,
    train_with_accelerate,
)

__all__ = [
    "FUSIONS", "GRANULARITIES", "TextChunk", "chunk_documents", "chunks_fingerprint", "ChunkEncoder",
    "predicted_bytes", "text_byte_spans", "rows_predicting", "masked_sums", "TeacherRows", "ROW_FIELDS",
    "SUM_FIELDS", "teacher_rows", "teacher_store_key", "logit_width", "store_key", "ShardedStore", "ShardSplit", "prepared_store",
    "RowView",
    "ensure_teacher_store", "TargetRows", "TARGET_ROW_FIELDS", "AlignOptions", "identity_rows", "target_rows",
    "self_rows", "shares_vocabulary", "ensure_aligned_store", "CandidateBlock", "CandidateSource",
    "StreamCandidates", "OnlineTeacher", "OnlineCandidates", "candidate_scores", "fusion_weights",
    "fuse_topk", "FusionCorpus", "sparse_soft_ce", "fusion_loss", "StepBatches", "ScheduledCorpus",
    "make_accelerator", "train_with_accelerate", "mean_across_processes", "details_of", "save_trained",
    "main_process_value", "distributed_details",
    "aligned_layout", "stored_target_rows", "candidate_rows", "onto_target", "fuse_block", "stored_teacher_rows",
    "teacher_layout", "FUSED_GRANULARITIES", "LOGP_FORMATS", "CandidateRows", "FusedCandidates", "FusedRows",
    "FusedSettings", "ResidentTeacher", "decode_logp", "encode_logp", "ensure_fused_store", "fused_corpus",
    "fused_layout", "fused_rows", "fused_shares", "fused_store_key",
    "PreferenceCorpus", "PreferenceSchedule", "ResponseCorpus", "dpo_loss", "preference_loss", "reference_logps",
    "response_ce_loss", "sequence_logps", "wrpo_loss",
]

"""Teacher distributions: per chunk and teacher, in the teacher's own tokenization (:class:`TeacherRows`).

The top-k next-token log-probabilities with their ids (over the model's logit width, not the tokenizer's
length: quirk Q11), the per-token cross-entropy of the actual next token, and per-chunk sums (nats, predicted
tokens, predicted UTF-8 bytes). Top-k log-probs are the top-k logits shifted by one constant per row, so a
softmax over the kept entries is the reference's ``softmax(top-k logits)``; they are stored instead because
they also keep the absolute mass. Rows take int32 ids + float16 log-probs = 6·k bytes per token, plus 8
bytes per token for the input id, the float16 token CE and the uint16 byte length of the predicted token
(``benchmarks/bench_distill.py`` prints the measured total).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fusers.align import Tokenization
from fusers.distill.chunks import ChunkEncoder, TextChunk, predicted_bytes
from fusers.distill.shards import ShardedStore, ShardSplit, fill_shards, shard_progress, store_key

if TYPE_CHECKING:
    from torch import nn

    from harness.model import ModelRef


@dataclass
class TeacherRows:
    """One chunk through one teacher, in the teacher's tokenization (n tokens, k kept entries per row).

    Row t is the distribution of token t+1. ``token_ce[t]`` = -log p(token t+1) (NaN for the last row, which
    has no next token in the chunk); ``token_bytes[t]`` = UTF-8 bytes of token t+1. ``nats``/``n_tokens``/
    ``n_bytes`` sum over the predicted tokens in float64, before the float16 rounding of the stored rows.
    """

    tokens: np.ndarray  # int32 [n]
    topk_ids: np.ndarray  # int32 [n, k]
    topk_logp: np.ndarray  # float16 [n, k], highest first
    token_ce: np.ndarray  # float16 [n]
    token_bytes: np.ndarray  # uint16 [n]
    nats: float
    n_tokens: int
    n_bytes: int


ROW_FIELDS = ("tokens", "topk_ids", "topk_logp", "token_ce", "token_bytes")
SUM_FIELDS = ("nats", "n_tokens", "n_bytes")


def logit_width(model: nn.Module) -> int:
    """The model's output width (``config.vocab_size``, possibly padded past the tokenizer: Q11)."""
    emb = model.get_output_embeddings()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


@torch.no_grad()
def teacher_rows(model: nn.Module, encoded: Sequence[Tokenization], k: int, batch_size: int = 16) -> list[TeacherRows]:
    """Run ``model`` over tokenized chunks and keep, per position, the top-``k`` log-probs and the token CE.

    Chunks are batched by length (right padding plus attention mask; causal attention keeps padding from
    touching real positions). The top-k is taken over the model's full logit width (Q11).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[TeacherRows | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    try:
        for b in range(0, len(order), batch_size):
            group = order[b : b + batch_size]
            width = max(len(encoded[i]) for i in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(encoded[i])] = torch.as_tensor(encoded[i].ids)
                mask[row, : len(encoded[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
            logp = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V]
            top_logp, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # [B, L, k]
            ce = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]: row t scores token t+1
            top_logp, top_ids, ce = top_logp.cpu().numpy(), top_ids.cpu().numpy(), ce.double().cpu().numpy()
            for row, i in enumerate(group):
                n = len(encoded[i])
                token_ce = np.full(n, np.nan)
                token_ce[: n - 1] = ce[row, : n - 1]
                token_bytes = predicted_bytes(encoded[i])
                out[i] = TeacherRows(
                    tokens=np.asarray(encoded[i].ids, dtype=np.int32),
                    topk_ids=top_ids[row, :n].astype(np.int32),
                    topk_logp=top_logp[row, :n].astype(np.float16),
                    token_ce=token_ce.astype(np.float16),
                    token_bytes=token_bytes,
                    nats=float(ce[row, : n - 1].sum()),
                    n_tokens=n - 1,
                    n_bytes=int(token_bytes.sum(dtype=np.int64)),
                )
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def teacher_store_key(ref: ModelRef, fingerprint: str, k: int, *, dtype: str | None = None) -> str:
    """The content key of ``ref``'s teacher store over the corpus ``fingerprint`` at top-``k``: the model's bytes and
    the precision and device kind it runs in (``dtype``: what it is loaded in, default the placement's), which change
    its numbers, so a bfloat16 GPU pass is never read by a float32 run. float32 on a CPU adds nothing to the key: the
    stores made before the key held the precision are found."""
    from harness.model import current_placement

    where = current_placement().for_model(ref)
    precision = f"{dtype or where.load_dtype()}@{where.kind}"
    return store_key("teacher", ref.content_hash(), fingerprint, k, *(() if precision == "float32@cpu" else (precision,)))


def teacher_layout(k: int) -> dict[str, Any]:
    """What a teacher store at top-``k`` holds (its :class:`ShardedStore` layout)."""
    return {"kind": "teacher", "k": k}


def stored_teacher_rows(store: ShardedStore, shard: int) -> list[TeacherRows]:
    """The :class:`TeacherRows` of every chunk of one shard of a teacher store, as :func:`teacher_rows` made them
    (the sums as Python numbers)."""
    offsets = np.concatenate([[0], np.cumsum(store.shard_sums(shard, "_counts"))]).astype(np.int64)
    cols = {name: store.shard_rows(shard, name) for name in ROW_FIELDS}
    sums = {name: store.shard_sums(shard, name) for name in SUM_FIELDS}
    return [TeacherRows(**{n: np.asarray(cols[n][offsets[j]:offsets[j + 1]]) for n in ROW_FIELDS},
                        **{n: sums[n][j].item() for n in SUM_FIELDS}) for j in range(len(offsets) - 1)]


def ensure_teacher_store(root: Path, chunks: Sequence[TextChunk], encoder: ChunkEncoder,
                         model_fn: Callable[[], nn.Module], k: int, *, shard_size: int = 128,
                         batch_size: int = 16, about: dict[str, Any] | None = None,
                         split: ShardSplit | None = None) -> ShardedStore:
    """The teacher store of one model over ``chunks``, computing only the shards that are missing.

    ``split``: this process's share of the shards (default: its share among the processes of its launch,
    :meth:`ShardSplit.of_processes`; all of them in a single process). Every process of the launch must call
    this for the same store: each computes its share, then they wait for each other. The store is then
    complete, or, when the split has several jobs, holds at least this job's shards. ``model_fn`` loads the
    model; it is only called when this process has something to compute. Each shard is computed from its own
    chunks alone, so which process computed it changes no byte of it.
    """
    split = split or ShardSplit.of_processes()
    store = ShardedStore(root, len(chunks), shard_size, teacher_layout(k), about)
    loaded: list[nn.Module] = []

    def compute(shards: list[int]) -> None:
        if not loaded:
            loaded.append(model_fn())
        label = f"teacher {(about or {}).get('model', '')}".strip()
        for shard in shard_progress(shards, label, show=split.process == 0):
            items = store.shard_items(shard)
            rows = teacher_rows(loaded[0], [encoder.encode(chunks[i]) for i in items], k, batch_size)
            store.write(shard, rows, ROW_FIELDS, SUM_FIELDS)

    fill_shards(store, split, compute)
    return store


def masked_sums(store: ShardedStore, row_masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per chunk, a teacher store's ``nats``/``n_tokens``/``n_bytes`` over the rows in ``row_masks[i]`` only.

    ``row_masks[i]`` is in the store's own tokenization of chunk i (:func:`rows_predicting`). Sequence-level
    MinCE then judges each teacher on the responses alone, as FuseChat does per dialogue. Sums come from the
    stored float16 token CEs (the unmasked sums are exact float64; the difference is rounding).
    """
    offsets = store.item_offsets()
    if len(row_masks) != len(offsets) - 1:
        raise ValueError(f"{len(row_masks)} row masks for a store of {len(offsets) - 1} chunks")
    ce, nbytes = store.rows("token_ce"), store.rows("token_bytes")
    out = {name: np.zeros(len(row_masks), dtype=np.float64) for name in SUM_FIELDS}
    for i, mask in enumerate(row_masks):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if len(mask) != b - a:
            raise ValueError(f"chunk {i}: a row mask of {len(mask)} rows for {b - a} stored rows")
        rows = np.asarray(mask, dtype=bool) & ~np.isnan(np.asarray(ce[a:b], dtype=np.float64))
        out["nats"][i] = float(np.asarray(ce[a:b], dtype=np.float64)[rows].sum())
        out["n_tokens"][i] = float(rows.sum())
        out["n_bytes"][i] = float(np.asarray(nbytes[a:b], dtype=np.float64)[rows].sum())
    return out

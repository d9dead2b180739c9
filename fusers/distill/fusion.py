"""Fusion functions and the objective: which candidate teaches each row, and the loss that follows.

A score per position and candidate (its cross-entropy at ``sequence``, ``token`` or packed-``block``
granularity, per UTF-8 byte by default so that tokenizers with different granularities compare fairly,
quirk Q13: :func:`candidate_scores`), then MinCE (the lowest score wins), reference AvgCE (weights
``softmax(exp(-CE))``) or ``softmax(-CE/τ)`` (:func:`fuse_topk`). The result stays sparse: at most C·k (id,
probability) pairs per position. The objective (:func:`fusion_loss`) is ``λ·CLM + (1-λ)·Σ_v
-q_v·log_softmax(z)_v`` with the sum over the sparse entries only (a gather on the student's log-softmax;
never a dense [L, V] target), both terms from one log-softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from fusers.align import MAPPED
from fusers.distill.candidates import CandidateBlock

if TYPE_CHECKING:
    from torch import Tensor, nn

Fusion = Literal["min_ce", "avg_ce", "avg_ce_softmax"]
Granularity = Literal["sequence", "token", "block"]
FUSIONS: tuple[str, ...] = ("min_ce", "avg_ce", "avg_ce_softmax")
GRANULARITIES: tuple[str, ...] = ("sequence", "token", "block")


def candidate_scores(block: CandidateBlock, granularity: Granularity, *, per_token: bool = False) -> np.ndarray:
    """float64 [..., L, C]: the cross-entropy each candidate is judged by at each row (lower is better).

    * ``sequence``: the candidate's CE over the whole chunk the row belongs to (on its own tokenization).
    * ``token``: the candidate's CE of the token this row predicts; rows where the candidate has no
      distribution of its own (fallback, empty) are +inf, rows with no next token use the chunk CE.
    * ``block`` (quirk Q6, FuseLLM's packing): every row of a packed block gets the row-weighted mean of the
      chunk CEs over the block, i.e. one choice per block.

    CEs are per UTF-8 byte by default, so tokenizers that cut text into different numbers of tokens compare
    fairly; ``per_token`` (quirk Q13) divides by tokens like the reference. A chunk with nothing predicted
    scores +inf. The leading axes may be batch axes (``[B, L, C]``).
    """
    denom = block.seq_tokens if per_token else block.seq_bytes
    with np.errstate(divide="ignore", invalid="ignore"):
        seq = np.where(denom > 0, block.seq_nats / np.maximum(denom, 1), np.inf)
        if granularity == "sequence":
            return seq
        if granularity == "block":
            return np.broadcast_to(seq.mean(axis=-2, keepdims=True), seq.shape).copy()
        if granularity == "token":
            tok_denom = 1.0 if per_token else np.maximum(block.token_bytes, 1.0)
            tok = block.token_ce.astype(np.float64) / tok_denom
            tok = np.where(np.isnan(tok), seq, tok)
            return np.where(block.status == MAPPED, tok, np.inf)
    raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")


def fusion_weights(scores: Tensor, fusion: Fusion, tau: float = 1.0) -> Tensor:
    """[..., C] weights of each candidate from its scores (CE; +inf = not a candidate at this row).

    * ``min_ce``: one-hot on the lowest CE (ties: the lowest index, i.e. the target's own distribution first).
    * ``avg_ce``: the reference's AvgCE, ``softmax(exp(-CE))`` over the candidates (FuseLLM/FuseChat
      ``trainer.py``). Rewards lie in (0, 1], so the weights stay close to uniform.
    * ``avg_ce_softmax``: ``softmax(-CE / τ)``, a temperature-controlled AvgCE.

    If no candidate is finite at a row, every candidate is treated as equal (the scores carry no signal).
    """
    scores = scores.double()
    none = torch.isinf(scores).all(dim=-1, keepdim=True)
    scores = torch.where(none, torch.zeros_like(scores), scores)
    if fusion == "min_ce":
        return torch.nn.functional.one_hot(scores.argmin(dim=-1), scores.shape[-1]).double()
    if fusion == "avg_ce":
        reward = torch.where(torch.isfinite(scores), torch.exp(-scores), torch.full_like(scores, -torch.inf))
        return torch.softmax(reward, dim=-1)
    if fusion == "avg_ce_softmax":
        return torch.softmax(-scores / tau, dim=-1)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def fuse_topk(ids: Tensor, logp: Tensor, scores: Tensor, fusion: Fusion, *, temperature: float = 1.0,
              tau: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse per-candidate sparse distributions into one sparse target per row.

    ``ids``/``logp``: [..., C, k] (-1 / -inf padding); ``scores``: [..., C]. Each candidate's distribution is
    the softmax of its kept entries divided by ``temperature`` (the reference renormalises the top-k and drops
    the tail). Returns ``(ids [..., K], probs [..., K], weights [..., C])`` with K = k for MinCE (the winner's
    entries) and K = C·k for the averages (all entries, weighted; an id present in several candidates appears
    several times, which the loss handles since it is linear in the target).
    """
    q = torch.softmax(logp.float() / temperature, dim=-1)  # [..., C, k]
    q = torch.nan_to_num(q, nan=0.0)  # a row with no entries at all (never chosen) has no mass
    weights = fusion_weights(scores, fusion, tau)  # [..., C]
    if fusion == "min_ce":
        pick = weights.argmax(dim=-1)  # [...]
        index = pick[..., None, None].expand(*pick.shape, 1, ids.shape[-1])  # [..., 1, k]
        return ids.gather(-2, index).squeeze(-2), q.gather(-2, index).squeeze(-2), weights.float()
    probs = weights.float()[..., None] * q  # [..., C, k]
    return ids.flatten(-2), probs.flatten(-2), weights.float()


def fuse_block(block: CandidateBlock, fusion: Fusion, granularity: Granularity, *, temperature: float = 1.0,
               tau: float = 1.0, per_token: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The fused sparse target of every row of ``block``: the candidates' scores (:func:`candidate_scores`), then
    :func:`fuse_topk`. Returns ``(ids [..., L, K], probs [..., L, K], weights [..., L, C])``.

    The one place a fusion is computed: training batches (:meth:`FusionCorpus.collate
    <fusers.distill.corpus.FusionCorpus.collate>`) and the fused store (:mod:`fusers.distill.fused_store`), which
    computes the same rows ahead, both call it.
    """
    scores = candidate_scores(block, granularity, per_token=per_token)
    return fuse_topk(torch.from_numpy(block.ids), torch.from_numpy(block.logp), torch.from_numpy(scores), fusion,
                     temperature=temperature, tau=tau)


def sparse_soft_ce(logp: Tensor, ids: Tensor, probs: Tensor) -> Tensor:
    """[...] ``-Σ_j probs_j · logp[ids_j]``: soft-target CE over the sparse entries only (padding has prob 0).

    Equal to the dense ``-Σ_v q_v log p_v`` with q scattered from (ids, probs), without building q.
    """
    return -(probs * logp.gather(-1, ids)).sum(dim=-1)


def fusion_loss(lam: float, reduce: Callable[[Tensor], Tensor] | None = None, *,
                distill: Callable[[Tensor, dict[str, Tensor]], Tensor] | None = None):  # a LossFn
    """``loss_fn(model, batch)`` for :func:`harness.train.train`: ``λ·CLM + (1-λ)·fusion`` (spec §4).

    ``distill(logp, batch)`` -> [B, L] is the per-row fusion term from the student's log-softmax [B, L, V] and the
    batch; default :func:`sparse_soft_ce` against ``fuse_ids``/``fuse_probs`` (another, e.g.
    :func:`fusers.distill.uld.uld_term`, is masked, averaged and logged the same way).

    CLM is the usual next-token CE over rows 0..L-2 (row t predicts token t+1); the fusion term averages
    the sparse soft-target CE over all L rows (the teacher's last row predicts the token after the block,
    which it saw). Both come from one log-softmax of the logits, so the fusion term costs a gather, not a
    second pass over the vocabulary.

    A batch with a ``loss_mask`` [B, L] (row t counts when the token it predicts does, e.g. a chat response
    token: FuseChat/ProFuser mask the instructions) averages both terms over the counted rows only.

    ``reduce`` is an all-reduce mean across the training processes (:func:`mean_across_processes`), each of
    which holds a slice of the global batch. The logged values are reduced with it, and a masked mean divides
    this process's sum by the mean count of counted rows per process rather than by its own count: the
    processes' slices count different numbers of response tokens, and only then is the average of their
    gradients (what DDP, FSDP and DeepSpeed compute) the gradient of the global batch's masked mean.
    """

    def masked_means(pairs: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        masked = [(values, mask.to(values.dtype)) for values, mask in pairs if mask is not None]
        counts = torch.stack([mask.sum() for _, mask in masked]).detach() if masked else None
        if counts is not None and reduce is not None:
            counts = reduce(counts).to(counts.device)  # the mean count per process, over all processes
        out, m = [], 0
        for values, mask in pairs:
            if mask is None:
                out.append(values.mean())
            else:
                assert counts is not None
                out.append((values * mask.to(values.dtype)).sum() / counts[m].clamp_min(1.0))
                m += 1
        return out

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        input_ids = batch["input_ids"]  # [B, L]
        mask = batch.get("loss_mask")  # [B, L] or None
        logits = model(input_ids=input_ids, attention_mask=batch.get("attention_mask")).logits  # [B, L, V]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V]
        token_nll = -logp[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        term = (sparse_soft_ce(logp, batch["fuse_ids"], batch["fuse_probs"]) if distill is None
                else distill(logp, batch))
        clm, fuse = masked_means([(token_nll, None if mask is None else mask[:, :-1]), (term, mask)])
        loss = lam * clm + (1.0 - lam) * fuse
        logged = torch.stack([clm.detach(), fuse.detach()])
        if reduce is not None:
            logged = reduce(logged)
        return loss, {"clm": float(logged[0]), "fuse": float(logged[1])}

    return loss_fn

"""ULD, the Universal Logit Distillation loss (Boizard et al. 2024, https://arxiv.org/abs/2402.12030), as FuseLLM's
distillation term: ``bench run --fuser fusellm --set distill_loss=uld``.

ULD compares two next-token distributions over *different* vocabularies without mapping one onto the other: per
position, the L1 distance between the student's and the teacher's probability vectors, each sorted in decreasing
order, the shorter one zero-padded (the paper's closed form of an optimal-transport distance between the two
distributions, its Appendix A)::

    ULD(p_s, p_t) = Σ_i |sort(p_s)_i - sort(p_t)_i|.

**With top-k teacher rows.** FuseBench keeps K entries of the teacher per position and renormalises them (the
teacher's tail is 0), so ``sort(p_t)`` is ``t_(1) ≥ … ≥ t_(K)`` followed by zeros. Let ``s_(1) ≥ s_(2) ≥ …`` be the
student's sorted probabilities over its V ids and ``m = min(K, V)``. Split the sum at m: beyond it one of the two
vectors is 0 (the teacher's when m = K, the zero-padded student's when m = V < K), so ``|s_(i) - t_(i)| =
s_(i) + t_(i)`` there, and

    ULD = Σ_{i≤m} |s_(i) - t_(i)| + (1 - Σ_{i≤m} s_(i)) + (Σ_i t_(i) - Σ_{i≤m} t_(i)),

which for m = K (always, in practice) is ``Σ_{i≤K} |s_(i) - t_(i)| + (1 - Σ_{i≤K} s_(i))``. It is exact, not an
approximation: only the student's top K are needed (a ``topk``, no dense sort of its vocabulary), and when the
teacher's full distribution is supported on at most K tokens the stored rows lose nothing, so this is the ULD of the
full teacher too. A row whose target is all zeros (padding) gives the constant 1, whose gradient is 0.

**The teacher row.** The target-aligned row of the teacher's *own* top-k (``AlignOptions(vocabulary="teacher")``,
:func:`fusers.distill.aligned.target_rows`): the sequence alignment picks which teacher position predicts what a
target row predicts, as for the soft-CE loss, and its entries are kept as they are. Rows moved through the vocabulary
map would change the sorted vector (entries without a target id dropped, colliding ones summed); ULD needs no map,
so FuseBench does not use one. These rows therefore live in their own aligned stores (their key holds
``vocabulary=teacher``); teacher stores are shared with soft-CE runs. Fallback rows (no usable teacher row) are the
one-hot on the next target token, whose sorted vector ``(1, 0, …)`` needs no vocabulary either.

**Several teachers (FuseBench's choice).** The paper distils one teacher. FuseLLM fuses its candidates (the target's
own initial distribution, then each source) per chunk by MinCE; ULD is taken against the winning candidate's sorted
distribution. AvgCE would mix entries of different vocabularies in one row (and its sorted mixture is not any
teacher's distribution), so ``distill_loss=uld`` requires ``fusion=min_ce``.

**Weights.** The paper trains on ``CE + λ_ULD·ULD`` with ``λ_ULD = 1.5`` and temperature 1 for both models (the
authors' llm-recipes defaults ``cross_entropy_factor=1``, ``distil_factor=1.5``; TRL's GOLD trainer, which has a ULD
loss too, defaults to weights 0 and 1). FuseLLM's objective is ``λ·CLM + (1-λ)·distill``: the paper's ratio is
``λ = 1/(1 + 1.5) = 0.4``, with the whole loss scaled by 0.4 (i.e. the learning rate by 0.4 for the same steps under
SGD; AdamW barely notices a constant factor). FuseBench keeps FuseLLM's λ = 0.9 by default, so that a ULD run
differs from a soft-CE run in the distillation term alone; ``--set lam=0.4`` gives the paper's ratio. The paper
also averages per sequence over answer tokens (it distils question answering); FuseLLM's corpus is plain text, so
every row counts, as in the soft-CE term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import Tensor


def uld_topk(logp: Tensor, target_probs: Tensor) -> Tensor:
    """[...] the ULD of each row: the student's log-probabilities ``logp`` [..., V] against a teacher's kept
    probabilities ``target_probs`` [..., K] (any order; 0 for padding entries), by the module's top-K closed form."""
    m = min(target_probs.shape[-1], logp.shape[-1])
    student = logp.topk(m, dim=-1).values.exp()  # s_(1) ≥ … ≥ s_(m)
    teacher = target_probs.to(student.dtype).sort(dim=-1, descending=True).values
    head = (student - teacher[..., :m]).abs().sum(dim=-1)
    return head + (1.0 - student.sum(dim=-1)) + teacher[..., m:].sum(dim=-1)


def uld_term(logp: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """[B, L] ULD of every row against the batch's fused target (``fuse_probs``: the MinCE winner's kept
    probabilities), for :func:`fusers.distill.fusion.fusion_loss`'s ``distill`` hook. The target's ids are not
    read: they may be another model's."""
    return uld_topk(logp, batch["fuse_probs"])


def uld_dense(p_student: Tensor, p_teacher: Tensor) -> Tensor:
    """[...] ULD by its definition: both probability vectors (over their own vocabularies, any sizes) sorted in
    decreasing order, the shorter zero-padded, and the L1 distance. A full sort of the student's vocabulary: the
    reference :func:`uld_topk` is checked against."""
    size = max(p_student.shape[-1], p_teacher.shape[-1])
    student = torch.nn.functional.pad(p_student.sort(dim=-1, descending=True).values,
                                      (0, size - p_student.shape[-1]))
    teacher = torch.nn.functional.pad(p_teacher.sort(dim=-1, descending=True).values,
                                      (0, size - p_teacher.shape[-1]))
    return (student - teacher).abs().sum(dim=-1)

"""FuseChat's stage-2 merges (VaRM and SCE) as pure tensor functions, registered with mergekit.

FuseChat trains one "target" model per source (each initialised from a shared *pivot*) and then merges
the targets in parameter space. Two merges were published, and their released code differs from the
papers in ways that change results (docs: ``fusion-algorithms.md`` §6.3/§6.4, quirks Q7 and Q8), so
each behaviour is a switch here:

* **VaRM** (FuseChat v1, arXiv 2402.16107): per parameter matrix, each target's weight is the mean
  squared change from the pivot, normalised over the targets. ``equal_weights=True`` reproduces the
  released code, whose analysis file gives every target the same number, hence weights 1/K (Q7).
* **SCE** (FuseChat v2, arXiv 2408.07990): Select high-variance elements, Calculate per-matrix weights,
  Erase sign conflicts, then merge. ``variant`` picks one of three readings (Q8): the paper's
  Algorithm 1 (``paper``), the FuseAI mergekit fork that produced the released model (``fuseai_fork``),
  and arcee-ai mergekit's maintained ``sce`` method (``mergekit``, the default; delegated to mergekit's
  own kernel rather than re-implemented).

The math lives in pure functions (:func:`varm_merge`, :func:`sce_merge`), each returning the merged
tensor *and* the per-target weights it chose, because FuseChat's analysis is about those weights. The
mergekit methods ``varm`` and ``fusechat_sce`` are thin wrappers registered when this module is
imported, so they work wherever mergekit takes a method name: ``MergeConfiguration`` / ``run_merge``,
``merge_state_dicts`` and ``merge_tensors``. mergekit calls a method once per tensor and keeps only the
tensor, so the weights come out through :func:`record_weights`::

    import fusers._merge_methods as fm
    with fm.record_weights() as weights:
        run_merge(config, out_path, options)          # config.merge_method == "varm"
    weights["model.layers.0.mlp.up_proj.weight"]      # [w_1, ..., w_K], in the config's model order

Inputs must share shape and dtype (mergekit aligns dtypes before calling a method). VaRM and the
``paper``/``fuseai_fork`` SCE variants compute in at least float32 and return the base's dtype; the
``mergekit`` variant computes exactly as mergekit does, in the input dtype.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Annotated, Literal, get_args

import torch
from mergekit import merge_methods as mk
from mergekit.merge_methods import BasePolicy, InputContract, MergeMethod, TensorGroup
from mergekit.merge_methods import sce as mk_sce
from pydantic import Field

__all__ = [
    "METHOD_NAMES",
    "SCE_VARIANTS",
    "SCE_METHOD",
    "VARM_METHOD",
    "SceVariant",
    "record_weights",
    "register_methods",
    "sce_merge",
    "varm_merge",
    "varm_weights",
]

SceVariant = Literal["paper", "fuseai_fork", "mergekit"]
SCE_VARIANTS: tuple[str, ...] = get_args(SceVariant)
METHOD_NAMES: tuple[str, ...] = ("varm", "fusechat_sce")


# --- VaRM ---------------------------------------------------------------------------------------


def varm_weights(base: torch.Tensor, targets: Sequence[torch.Tensor], *,
                 equal_weights: bool = False) -> list[float]:
    """VaRM's weight per target for one parameter matrix: ``W_j = mean(Δ_j²) / Σ_k mean(Δ_k²)``.

    ``Δ_j = θ_j − θ_pivot``. A target that moved further from the pivot on this matrix is taken to
    carry more of what fusion taught it there, so it gets more say. When no target moved at all the
    ratio is 0/0 and every target gets 1/K (the merge is then the pivot whatever the weights).
    ``equal_weights=True`` gives 1/K everywhere: what the released code computes (quirk Q7).
    """
    _check_inputs(base, targets)
    if not targets:
        return []
    if equal_weights:
        return [1.0 / len(targets)] * len(targets)
    work = _work_dtype(base.dtype)
    variation = torch.stack([(t.to(work) - base.to(work)).square().mean() for t in targets])
    return _normalised(variation).tolist()


def varm_merge(base: torch.Tensor, targets: Sequence[torch.Tensor], *,
               equal_weights: bool = False) -> tuple[torch.Tensor, list[float]]:
    """(merged, weights): ``θ_pivot + Σ_j W_j (θ_j − θ_pivot)`` with :func:`varm_weights`.

    Since the weights sum to 1 this is the paper's ``Σ_j W_j θ_j``; it is written as pivot plus
    weighted deltas so that the pivot is returned unchanged when there are no targets.
    """
    weights = varm_weights(base, targets, equal_weights=equal_weights)
    if not targets:
        return base.clone(), []
    work = _work_dtype(base.dtype)
    base_w = base.to(work)
    merged = base_w.clone()
    for weight, target in zip(weights, targets, strict=True):
        merged += weight * (target.to(work) - base_w)
    return merged.to(base.dtype), weights


# --- SCE ----------------------------------------------------------------------------------------


def sce_merge(base: torch.Tensor, targets: Sequence[torch.Tensor], select_topk: float = 1.0,
              variant: SceVariant = "mergekit") -> tuple[torch.Tensor, list[float]]:
    """(merged, η): SCE of the targets onto the pivot ``base`` for one parameter matrix.

    ``select_topk`` is the paper's τ, the fraction of elements kept by the variance selection
    (1 keeps all). The variants (docs §6.4) differ in where the selection applies and in how the
    surviving deltas are combined; ``η`` is the per-target weight each variant computed:

    * ``paper``: keep the ⌊τ·numel⌋ elements with the largest variance across targets (δ̂),
      ``η_j = Σδ̂_j² / Σ_k Σδ̂_k²``, drop every δ̂ element whose sign differs from the sign of
      ``Σ_j δ̂_j`` (all of them where that sum is 0), ``Φ = θ_v + Σ_j η_j δ'_j``: no renormalisation.
    * ``fuseai_fork``: the selection (k = ⌊τ·#non-zero variances⌋) only feeds ``η``; sign election
      and merge use the full deltas, as a TIES-style disjoint mean ``Σ η m δ / Σ η m`` (divisor 1
      where no target survives).
    * ``mergekit``: mergekit's ``sce`` kernel, called as is: the selection zeroes the deltas before
      everything else, so unselected elements keep the pivot's value.
    """
    _check_inputs(base, targets)
    if not 0.0 <= select_topk <= 1.0 or math.isnan(select_topk):
        raise ValueError(f"select_topk must be in [0, 1], got {select_topk}")
    if variant not in SCE_VARIANTS:
        raise ValueError(f"unknown SCE variant {variant!r}; choose one of {', '.join(SCE_VARIANTS)}")
    if not targets:
        return base.clone(), []
    if variant == "mergekit":
        group = TensorGroup.from_tensors([base, *targets], base_index=0)
        return _mergekit_sce(group, select_topk), _mergekit_sce_eta(base, targets, select_topk)
    work = _work_dtype(base.dtype)
    base_w = base.to(work)
    deltas = torch.stack([t.to(work) - base_w for t in targets])
    combine = _sce_paper if variant == "paper" else _sce_fuseai_fork
    merged_delta, eta = combine(deltas, select_topk)
    return (base_w + merged_delta).to(base.dtype), eta.tolist()


def _sce_paper(deltas: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FuseChat v2 Algorithm 1 (Eq. 5-9), read literally: select, calculate, erase, then merge."""
    variance = deltas.var(dim=0, unbiased=False)
    selected = deltas * _top_k_mask(variance, math.floor(tau * variance.numel()))
    eta = _normalised(selected.square().flatten(1).sum(dim=1))
    # torch.sign(0) == 0: where the selected deltas cancel exactly, no direction wins, so nothing stays.
    agrees = torch.sign(selected) == torch.sign(selected.sum(dim=0))
    merged_delta = (_per_target(eta, deltas) * selected * agrees).sum(dim=0)
    return merged_delta, eta


def _sce_fuseai_fork(deltas: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FuseAI's fork (``FuseChat/mergekit/.../sce_merging.py``) that made FuseChat-7B-v2.0."""
    energy_of = deltas
    if tau < 1:
        variance = deltas.var(dim=0, unbiased=False)
        energy_of = deltas * _top_k_mask(variance.abs(), math.floor(tau * torch.count_nonzero(variance).item()))
    eta = _normalised(energy_of.square().flatten(1).mean(dim=1))
    # Sign election on the *unselected* deltas; ties (sum exactly 0) elect "+", exact zeros never agree.
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    weights = _per_target(eta, deltas) * (torch.sign(deltas) == majority)
    divisor = weights.sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return (deltas * weights).sum(dim=0) / divisor, eta


def _mergekit_sce(group: TensorGroup, tau: float) -> torch.Tensor:
    """mergekit's own ``sce`` kernel on this group (the registered method object, not a copy)."""
    return mk_sce.sce_merge.merge_group(group, int8_mask=False, select_topk=tau)


def _mergekit_sce_eta(base: torch.Tensor, targets: Sequence[torch.Tensor], tau: float) -> list[float]:
    """The η mergekit's ``sce`` uses inside its kernel, which it does not return.

    Recomputed with mergekit's own ``sce_mask``/``sce_weight`` on the same task vectors, in the same
    order of operations, so it is the kernel's η (at the price of a second variance selection).
    """
    task_vectors = torch.stack([t - base for t in targets])
    if tau < 1:
        task_vectors = task_vectors * mk_sce.sce_mask(task_vectors, tau, base.dtype).unsqueeze(0)
    return mk_sce.sce_weight(task_vectors).tolist()


# --- shared helpers -----------------------------------------------------------------------------


def _check_inputs(base: torch.Tensor, targets: Sequence[torch.Tensor]) -> None:
    for i, target in enumerate(targets):
        if target.shape != base.shape or target.dtype != base.dtype:
            raise ValueError(f"target {i} is {target.dtype}{list(target.shape)} but the base is "
                             f"{base.dtype}{list(base.shape)}; align shapes and dtypes first")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: squared bf16/fp16 deltas lose the small updates the weights are made of."""
    return torch.promote_types(dtype, torch.float32)


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    """``scores / Σ scores``, or uniform when they sum to 0 (every target left this matrix alone)."""
    total = scores.sum()
    if total == 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return scores / total


def _per_target(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] vector shaped [K, 1, ...] to broadcast against stacked [K, ...] deltas."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 at the ``k`` largest ``scores``, 0 elsewhere (ties broken by ``torch.topk``, as the fork does)."""
    mask = torch.zeros_like(scores)
    if k >= scores.numel():
        return torch.ones_like(scores)
    if k > 0:
        mask.view(-1)[torch.topk(scores.reshape(-1), k=k, largest=True).indices] = 1
    return mask


# --- recording the weights mergekit throws away -------------------------------------------------

# A plain module list, not a ContextVar: mergekit's multi-GPU executor runs methods on worker threads,
# which would not see a context variable set by the caller.
_RECORDERS: list[dict[str | None, list[float]]] = []
_RECORDERS_LOCK = threading.Lock()


@contextlib.contextmanager
def record_weights() -> Iterator[dict[str | None, list[float]]]:
    """Collect ``{tensor name: [w_1..w_K]}`` from every ``varm``/``fusechat_sce`` merge in the block.

    The weights are in the order of the non-base inputs (the ``models`` list of a mergekit config,
    the base skipped; the order of the dict for ``merge_state_dicts``). Names are mergekit's output
    weight names (state-dict keys); ``merge_tensors`` without ``name=`` records under ``None``.
    Recording is process-wide: concurrent or nested blocks each receive every merge made while open.
    """
    record: dict[str | None, list[float]] = {}
    with _RECORDERS_LOCK:
        _RECORDERS.append(record)
    try:
        yield record
    finally:
        with _RECORDERS_LOCK:
            # By identity: two recorders can be equal dicts.
            _RECORDERS[:] = [r for r in _RECORDERS if r is not record]


def _record(name: str | None, weights: list[float]) -> None:
    with _RECORDERS_LOCK:
        for record in _RECORDERS:
            record[name] = list(weights)


def _recording() -> bool:
    with _RECORDERS_LOCK:
        return bool(_RECORDERS)


# --- mergekit methods ---------------------------------------------------------------------------


def _split(group: TensorGroup) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return group.base.tensor, [entry.tensor for entry in group.non_base]


def _varm_kernel(group: TensorGroup, equal_weights: bool = False) -> torch.Tensor:
    base, targets = _split(group)
    merged, weights = varm_merge(base, targets, equal_weights=equal_weights)
    _record(group.metadata.name, weights)
    return merged


def _sce_kernel(group: TensorGroup, select_topk: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0,
                variant: SceVariant = "mergekit") -> torch.Tensor:
    if variant == "mergekit" and not _recording():
        return _mergekit_sce(group, select_topk)  # skip recomputing η nobody will read
    base, targets = _split(group)
    merged, eta = sce_merge(base, targets, select_topk, variant)
    _record(group.metadata.name, eta)
    return merged


VARM_METHOD: MergeMethod = mk.merge_method(
    _varm_kernel, name="varm", pretty_name="VaRM (FuseChat v1)",
    reference_url="https://arxiv.org/abs/2402.16107", contract=InputContract(base=BasePolicy.REQUIRED))
SCE_METHOD: MergeMethod = mk.merge_method(
    _sce_kernel, name="fusechat_sce", pretty_name="SCE (FuseChat v2; paper / FuseAI fork / mergekit)",
    reference_url="https://arxiv.org/abs/2408.07990", contract=InputContract(base=BasePolicy.REQUIRED))


def register_methods() -> None:
    """Register ``varm`` and ``fusechat_sce`` with mergekit; a no-op when they already are.

    Runs on import. mergekit's registry refuses duplicate names and has no way to unregister, so a
    second import (``importlib.reload``, or this file reached under another module name) keeps the
    methods registered first (under another module name, their recordings then reach that copy's
    :func:`record_weights`); a *different* method already holding one of the names is an error
    rather than being silently shadowed.
    """
    for method in (VARM_METHOD, SCE_METHOD):
        name = method.spec.name
        try:
            existing = mk.get(name)
        except RuntimeError:  # mergekit's "Unimplemented merge method"
            mk.register(method)
            continue
        if _identity(existing) != _identity(method):
            raise RuntimeError(f"mergekit already has a merge method named {name!r} that is not FuseBench's "
                               f"({existing!r}); FuseChat's methods cannot be registered")


def _identity(method: MergeMethod) -> tuple[str, str] | None:
    """Which function of which source file implements a method: equal across re-imports of this file."""
    function = getattr(method, "implementation", None)
    code = getattr(function, "__code__", None)
    return None if code is None else (function.__qualname__, code.co_filename)


register_methods()

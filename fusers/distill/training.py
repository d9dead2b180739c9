"""Training under ``accelerate``: the shared loop of :mod:`harness.train`, scaled across processes.

The model and the dataloader are prepared by ``accelerate.Accelerator`` (DDP over gloo on CPU, NCCL on GPUs)
and trained through the loop's ``loss_fn`` hook. Every process holds the same number of positions, so DDP's
gradient average equals the single-process gradient of the same global batch. :func:`details_of` turns the
loop's stats into the run's JSON-able curves and candidate shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fusers.distill.corpus import FusionCorpus, ScheduledCorpus, StepBatches

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import Tensor, nn

    from harness.train import TrainConfig, TrainStats


def make_accelerator() -> Accelerator:
    """An ``Accelerator`` that splits each global batch across processes (DDP on gloo when on CPU), on the run's
    device, with bf16 mixed precision on GPUs that support it (float32 master weights) and float32 on CPU."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from harness.model import current_placement

    on_gpu = current_placement().kind == "cuda"
    mixed = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not on_gpu, mixed_precision=mixed,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def train_with_accelerate(model: nn.Module, corpus: FusionCorpus | ScheduledCorpus, cfg: TrainConfig, loss_fn: Any,
                          *, accelerator: Accelerator | None = None, progress: str | None = "fusing",
                          on_step: Callable[[int, dict[str, float]], bool | None] | None = None,
                          ) -> tuple[nn.Module, TrainStats]:
    """Train ``model`` on ``corpus`` with :func:`harness.train.train`, scaled by ``accelerate``.

    ``accelerator.prepare`` wraps the model (DDP when launched with several processes: gradients are averaged
    in ``backward``) and the dataloader (each process builds only its slice of every global batch of
    ``cfg.batch_size`` blocks). The shared loop prepares its AdamW with the same accelerator and runs backward
    and clipping through it. Returns the unwrapped model and the loop's stats (logged on every process; the
    progress bar on the main one only).
    """
    from harness.train import train

    acc = accelerator or make_accelerator()
    if cfg.batch_size % acc.num_processes:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {acc.num_processes} processes")
    if isinstance(corpus, ScheduledCorpus):
        if len(corpus.plan) != cfg.steps:
            raise ValueError(f"the schedule has {len(corpus.plan)} steps, the training config {cfg.steps}")
        sampler: Any = corpus.batches(cfg.batch_size, cfg.seed)
    else:
        sampler = StepBatches(len(corpus), cfg.batch_size, cfg.steps, cfg.seed)
    loader = torch.utils.data.DataLoader(corpus, batch_sampler=sampler, collate_fn=corpus.collate)
    wrapped, loader = acc.prepare(model, loader)
    stats = train(wrapped, iter(loader), cfg, loss_fn=loss_fn, progress=progress if acc.is_main_process else None,
                  on_step=on_step, accelerator=acc)
    return acc.unwrap_model(wrapped), stats


def mean_across_processes(accelerator: Accelerator) -> Callable[[Tensor], Tensor] | None:
    """A ``reduce`` for :func:`fusion_loss` that logs the mean over processes (None with one process)."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t.to(accelerator.device), reduction="mean").cpu()


def details_of(stats: TrainStats, lam: float, names: Sequence[str], selected: np.ndarray) -> dict[str, Any]:
    """JSON-able per-step curves and the share of rows each candidate won (MinCE) or its mean weight.

    ``total`` is recombined from the logged CLM and fusion terms, which :func:`fusion_loss` averages over
    processes, so the curves describe the global batch (the loop's own loss is the local one). The candidate
    shares count the rows this process built.
    """
    clm, fuse = stats.extras.get("clm", []), stats.extras.get("fuse", [])
    total = [lam * c + (1.0 - lam) * f for c, f in zip(clm, fuse, strict=True)] if clm else stats.losses
    rows = float(selected.sum()) or 1.0
    return {
        "train": stats.summary(),
        "loss_curves": {
            "total": [round(x, 5) for x in total],
            "clm": [round(x, 5) for x in clm],
            "fuse": [round(x, 5) for x in fuse],
            "lr": [float(f"{x:.4g}") for x in stats.extras.get("lr", [])],
            "grad_norm": [round(x, 4) for x in stats.extras.get("grad_norm", [])],
        },
        "candidate_share": {name: round(float(w) / rows, 4) for name, w in zip(names, selected, strict=True)},
    }

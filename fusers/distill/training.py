"""Training under ``accelerate``: the shared loop of :mod:`harness.train`, scaled across processes.

The model, its optimizer and the dataloader are prepared by ``accelerate.Accelerator`` in one call: DDP over
gloo on CPU or NCCL on GPUs, or, when ``bench run --accelerate-config FILE`` launches the processes with an
FSDP or DeepSpeed config, FSDP2 (fully sharded) or DeepSpeed ZeRO-2/3. Training goes through the loop's
``loss_fn`` hook. Every process holds its slice of each global batch and the fusion loss divides by the
global count of counted rows, so the processes' averaged gradient equals the single-process gradient of the
same global batch. :func:`save_trained` gathers a sharded model's full weights (a collective call) and the
main process writes an ordinary Hugging Face folder. :func:`details_of` turns the loop's stats into the run's
JSON-able curves and candidate shares.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from fusers.distill.corpus import FusionCorpus, ScheduledCorpus, StepBatches

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import Tensor, nn

    from harness.train import TrainConfig, TrainStats

T = TypeVar("T")

#: How long a process waits for the others at a collective call before the run fails.
WAIT_FOR_MAIN = timedelta(hours=24)


def make_accelerator() -> Accelerator:
    """An ``Accelerator`` that splits each global batch across processes, on the run's device.

    Mixed precision: the launch config's when ``--accelerate-config`` gave one, else bf16 on GPUs that support
    it (float32 master weights) and float32 on CPU. DDP, FSDP or DeepSpeed is what the launch chose.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    from harness.launch import LAUNCH_CONFIG_ENV
    from harness.model import current_placement

    on_gpu = current_placement().kind == "cuda"
    if os.environ.get(LAUNCH_CONFIG_ENV):
        mixed = None  # the config file's mixed_precision (accelerate reads it from the launch environment)
    else:
        mixed = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=mixed,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=WAIT_FOR_MAIN)])
    if accelerator.distributed_type.value == "DEEPSPEED" and not accelerator.state.deepspeed_plugin.zero3_init_flag:
        # accelerate registers its DeepSpeed config with transformers even without zero3_init_flag, and under ZeRO-3
        # transformers then loads every model partitioned (empty tensors outside the engine) and generates with
        # synced GPUs. FuseBench loads models whole (teacher passes, ProFuser's answers); the engine partitions the
        # trained one when it is prepared.
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return accelerator


def requested_engine() -> str | None:
    """``FSDP`` or ``DEEPSPEED`` when ``accelerate launch`` was asked for one (its config file's
    ``distributed_type``), else None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DEEPSPEED"
    return None


def distributed_details(accelerator: Accelerator) -> dict[str, Any]:
    """How training ran, for the run's details: accelerate's distributed type (``NO``, ``MULTI_CPU``,
    ``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``), the processes, the mixed precision, and the engine the launch
    config asked for. accelerate runs FSDP and DeepSpeed only on accelerators: on CPU such a config trains
    with DDP (``type`` then differs from ``requested``, and the runner says so)."""
    out: dict[str, Any] = {"type": accelerator.distributed_type.value, "processes": accelerator.num_processes,
                           "mixed_precision": accelerator.mixed_precision, "requested": requested_engine()}
    if getattr(accelerator, "is_fsdp2", False):
        out["fsdp_version"] = 2
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type.value == "DEEPSPEED" else None
    if plugin is not None:
        out["zero_stage"] = plugin.zero_stage
    return out


def train_with_accelerate(model: nn.Module, corpus: FusionCorpus | ScheduledCorpus | Any, cfg: TrainConfig, loss_fn: Any,
                          *, accelerator: Accelerator | None = None, progress: str | None = "fusing",
                          on_step: Callable[[int, dict[str, float]], bool | None] | None = None,
                          lr_scales: Mapping[str, float] | None = None) -> tuple[nn.Module, TrainStats]:
    """Train ``model`` on ``corpus`` with :func:`harness.train.train`, scaled by ``accelerate``.

    ``corpus``: a :class:`FusionCorpus`, a :class:`ScheduledCorpus`, or any map-style dataset of ``len`` items
    whose ``collate(indices)`` builds a batch (:mod:`fusers.distill.preference`'s SFT and preference data).

    The loop's AdamW is made from the unwrapped model (its weight-decay groups need the parameters' real
    shapes) and prepared with it and the dataloader in one ``accelerator.prepare``: that wraps the model (DDP:
    gradients averaged in ``backward``; FSDP2: parameters sharded and the optimizer moved onto the shards;
    DeepSpeed: its engine, which steps inside ``backward``) and the dataloader (each process builds only its
    slice of every global batch of ``cfg.batch_size`` items). Returns the *prepared* model (save it with
    :func:`save_trained`; ``accelerator.unwrap_model`` gives the module) and the loop's stats (logged on every
    process; the progress bar on the main one only). ``lr_scales``: see :func:`harness.train.adamw`.
    """
    from harness.train import adamw, train

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
    _fill_deepspeed_config(acc, cfg)
    wrapped, optimizer, loader = acc.prepare(model, adamw(model, cfg, lr_scales), loader)
    stats = train(wrapped, iter(loader), cfg, loss_fn=loss_fn, progress=progress if acc.is_main_process else None,
                  on_step=on_step, accelerator=acc, optimizer=optimizer)
    return wrapped, stats


def _fill_deepspeed_config(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Give a DeepSpeed config the run's batch sizes and clipping where it says ``auto`` (or nothing).

    accelerate derives the micro batch from the dataloader's ``batch_size``, which a batch sampler leaves unset,
    and DeepSpeed clips gradients itself, with the config's value. A value that contradicts the run's is refused:
    the fuser's ``batch_size`` is the global batch, trained in one step.
    """
    if accelerator.distributed_type.value != "DEEPSPEED":
        return
    plugin = accelerator.state.deepspeed_plugin
    wanted = {"train_micro_batch_size_per_gpu": cfg.batch_size // accelerator.num_processes,
              "train_batch_size": cfg.batch_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": cfg.grad_clip}
    for key, value in wanted.items():
        current = plugin.get_value(key)
        if current is None or current == "auto":
            plugin.deepspeed_config[key] = value
        elif current != value:
            raise ValueError(f"the DeepSpeed config sets {key}={current}, but this run needs {value} (the fuser's "
                             f"batch_size={cfg.batch_size} over {accelerator.num_processes} processes, one optimizer "
                             f"step per batch, clipping at {cfg.grad_clip}); set it to auto")


def main_process_value(accelerator: Accelerator, value: T) -> T:
    """The main process's ``value``, on every process: a decision (is this target cached?) that all processes
    must take alike, since the training that follows is collective."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def save_trained(accelerator: Accelerator, model: nn.Module, tokenizer: Any, out_dir: Path, *,
                 files: Mapping[str, str] | None = None, atomic: bool = False, part: str | None = None) -> None:
    """Write the trained ``model`` (as :func:`train_with_accelerate` returned it) and ``tokenizer`` to ``out_dir``
    as an ordinary Hugging Face folder, plus ``files`` (name -> text); ``atomic``: through a scratch folder
    renamed at the end (:func:`harness.atomic.atomic_dir`), for caches that other runs read.

    Every process must call it: gathering the full weights of a sharded model (FSDP, ZeRO-3) is collective. The
    main process alone writes; the others wait until it has. ``part``: save only that submodule of the trained
    module (e.g. ``"student"``, trained wrapped together with extra heads that are not part of the model).
    """
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        module = accelerator.unwrap_model(model)
        if part is not None:
            module = getattr(module, part)
            state = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
        state = _without_tied_copies(module, state)
        if atomic:
            from harness.atomic import atomic_dir

            with atomic_dir(out_dir) as tmp:
                _write(module, state, tokenizer, tmp, files)
        else:
            _write(module, state, tokenizer, out_dir, files)
    accelerator.wait_for_everyone()


def _write(module: Any, state: dict[str, Any], tokenizer: Any, out_dir: Path, files: Mapping[str, str] | None) -> None:
    module.save_pretrained(out_dir, state_dict=state)
    tokenizer.save_pretrained(out_dir)
    for name, text in (files or {}).items():
        (Path(out_dir) / name).write_text(text)


def _without_tied_copies(module: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` less the entries of tied parameters after the first name of each (an untied output head keeps
    its own): a gathered FSDP state dict holds separate copies of tied weights, which ``save_pretrained`` would
    then write twice, unlike the same model saved without FSDP."""
    first: dict[int, str] = {}
    later = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            later.add(name)
        else:
            first[id(param)] = name
    return {k: v for k, v in state.items() if k not in later}


def mean_across_processes(accelerator: Accelerator) -> Callable[[Tensor], Tensor] | None:
    """A ``reduce`` for :func:`fusion_loss`: the mean over processes, of the logged values and of the counts its
    masked means divide by (None with one process)."""
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

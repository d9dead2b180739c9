"""The shared causal-LM training loop: trains the zoo, and is reused by the training-based fusers.

One small torch-native loop instead of ``transformers.Trainer``: it is easy to read, fast for the tiny CPU
models FuseBench trains, and extensible in the one way the fusers need, a custom loss. FuseLLM, for
example, passes ``loss_fn(model, batch) -> (λ·CLM + (1-λ)·distillation, {"clm": ..., "distill": ...})``
with batches that carry the fused target distributions next to ``input_ids``.

The recipe is the usual one: AdamW (weight decay on matrices only), linear warmup then cosine decay to
``lr * lr_min_ratio``, gradient-norm clipping, a fixed seed. Everything is measured into
:class:`TrainStats` (per-step loss and logged extras, tokens, seconds, tokens/s) for zoo cards and
fusion reports.

torch is imported inside the functions: ``harness.zoo`` imports this module for :class:`TrainConfig`,
and checking that the zoo is already built must not pay for importing torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

Batch = dict[str, "Tensor"]
LossFn = Callable[["nn.Module", Batch], "tuple[Tensor, dict[str, float]]"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run. ``steps`` optimizer steps of ``batch_size`` x ``seq_len`` tokens each."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    lr_min_ratio: float = 0.1
    #: "cosine" (default) or "linear": linear decay to 0 after the warmup, DeepSpeed's ``WarmupDecayLR``, which
    #: FuseLLM's DeepSpeed config runs whatever ``--lr_scheduler_type`` says (quirk Q9).
    decay: str = "cosine"

    @property
    def tokens(self) -> int:
        """Tokens the run will read (for sizing how much text to tokenise)."""
        return self.steps * self.batch_size * self.seq_len

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step`` (0-based): linear warmup to ``lr``, then cosine down to ``lr*lr_min_ratio``
        (or, ``decay="linear"``, linearly down to 0 at ``steps``)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.decay == "linear":
            return self.lr * (1.0 - progress)
        if self.decay != "cosine":
            raise ValueError(f"decay must be 'cosine' or 'linear', not {self.decay!r}")
        floor = self.lr * self.lr_min_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON; ``decay`` only when it is not the default, because zoo recipe hashes are
        built from this dict and a field added with its old behaviour as default must not rebuild every zoo."""
        out = asdict(self)
        if out["decay"] == "cosine":
            del out["decay"]
        return out


@dataclass
class TrainStats:
    """What a run measured. ``extras`` holds every other value the loss function logged, per step."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        """Mean of the last 10 steps' losses: less noisy than the very last batch."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else None

    def summary(self) -> dict[str, Any]:
        """The headline numbers (for zoo cards and logs)."""
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "first_loss": _round(self.first_loss),
            "final_loss": _round(self.final_loss),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able: the summary plus the per-step curves."""
        return {
            **self.summary(),
            "losses": [round(x, 5) for x in self.losses],
            "extras": {k: [round(x, 6) for x in v] for k, v in self.extras.items()},
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# --- the loop -------------------------------------------------------------------------------------


def causal_lm_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
    """The default loss: transformers' next-token cross-entropy (it shifts the labels itself).

    ``labels`` defaults to ``input_ids``; positions labelled -100 are ignored.
    """
    labels = batch.get("labels", batch["input_ids"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels)
    return out.loss, {}


def train(
    model: nn.Module,
    batches: Iterable[Batch] | Callable[[int], Batch],
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    progress: str | None = "training",
    on_step: Callable[[int, dict[str, float]], bool | None] | None = None,
    accelerator: Any = None,
    optimizer: Any = None,
) -> TrainStats:
    """Train ``model`` in place for ``cfg.steps`` steps and return what was measured.

    ``batches`` is an iterable of batches (e.g. :func:`token_batches`) or a callable ``step -> batch`` for
    batches built on the fly. A batch is a dict of tensors with at least ``input_ids``; tokens are counted
    from it (``attention_mask`` when present). ``loss_fn(model, batch)`` returns the loss tensor to minimise
    and a dict of floats to log; the default is :func:`causal_lm_loss`. ``progress`` is the label of a
    progress bar on stderr showing loss and tokens/s (``None`` for none). ``on_step(step, logs)`` is called
    after every step with the loss, learning rate, gradient norm and the loss function's extras; returning
    True stops training early. With an ``accelerate.Accelerator`` (model and data already prepared by it),
    backward and clipping go through it (DDP, FSDP, DeepSpeed, mixed precision) and ``optimizer`` is the one
    it prepared together with the model (FSDP2 and DeepSpeed need both in one ``prepare``; see
    :func:`fusers.distill.training.train_with_accelerate`); without one, an :func:`adamw` is made here.
    """
    import torch

    torch.manual_seed(cfg.seed)
    if "OMP_NUM_THREADS" not in os.environ:  # the user's choice wins; several processes share the cores
        torch.set_num_threads(max(1, _cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    loss_fn = loss_fn or causal_lm_loss
    next_batch = batches if callable(batches) else _step_indexed(iter(batches))
    device = next(model.parameters()).device
    if optimizer is None:
        optimizer = adamw(model, cfg)
        if accelerator is not None:
            optimizer = accelerator.prepare(optimizer)
    if accelerator is not None:
        device = accelerator.device
    stats = TrainStats()
    was_training = model.training
    model.train()
    bar = _ProgressBar(progress, cfg.steps)
    start = time.perf_counter()
    try:
        for step in range(cfg.steps):
            lr = cfg.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = _to_device(next_batch(step), device)
            loss, extras = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            if accelerator is not None:
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()

            stats.steps = step + 1
            stats.tokens += _count_tokens(batch)
            stats.seconds = time.perf_counter() - start
            stats.losses.append(float(loss.item()))
            # None: DeepSpeed clips inside its engine and had no norm to report
            norm = float("nan") if grad_norm is None else float(grad_norm)
            logs = {"loss": stats.losses[-1], "lr": lr, "grad_norm": norm, **extras}
            for key, value in logs.items():
                if key != "loss":
                    stats.extras.setdefault(key, []).append(float(value))
            bar.update(stats)
            if on_step is not None and on_step(step, logs):
                break
    finally:
        bar.close()
        model.train(was_training)
    return stats


def adamw(model: nn.Module, cfg: TrainConfig, lr_scales: Mapping[str, float] | None = None):
    """AdamW with weight decay on weight matrices only, not on biases, norms' gains or 1-d parameters.

    ``lr_scales`` maps a parameter-name prefix (e.g. ``"projectors."``) to a factor on the schedule's learning rate
    for those parameters (their group's ``lr_scale``, which :func:`train` applies at every step)."""
    import torch

    scales = dict(lr_scales or {})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def scale_of(name: str) -> float:
        return next((s for prefix, s in scales.items() if name.startswith(prefix)), 1.0)

    groups = []
    for scale in sorted({1.0, *scales.values()}):
        mine = [p for n, p in named if scale_of(n) == scale]
        extra = {} if scale == 1.0 else {"lr_scale": scale, "lr": cfg.lr * scale}
        pair = [{"params": [p for p in mine if p.dim() >= 2], "weight_decay": cfg.weight_decay, **extra},
                {"params": [p for p in mine if p.dim() < 2], "weight_decay": 0.0, **extra}]
        groups += pair if scale == 1.0 else [g for g in pair if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def _step_indexed(iterator: Iterator[Batch]) -> Callable[[int], Batch]:
    def next_batch(step: int) -> Batch:
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(f"the batch iterator ran out after {step} steps") from None

    return next_batch


def _to_device(batch: Batch, device) -> Batch:
    """Batches are built on the CPU; move them next to the model (a no-op on CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _count_tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def _cpu_count() -> int:
    """Cores this process may use (the affinity mask, where the OS has one, is stricter than cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class _ProgressBar:
    """A rich progress bar with loss and tokens/s, or nothing when ``label`` is None."""

    def __init__(self, label: str | None, total: int):
        self._progress = None
        if label is None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total, loss="-", speed="-")
        self._progress.start()

    def update(self, stats: TrainStats) -> None:
        if self._progress is None:
            return
        recent = stats.losses[-10:]
        self._progress.update(
            self._task,
            completed=stats.steps,
            loss=f"{sum(recent) / len(recent):.3f}",
            speed=f"{stats.tokens_per_second:,.0f}",
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# --- data -----------------------------------------------------------------------------------------


def token_batches(
    token_ids: list[int] | np.ndarray, batch_size: int, seq_len: int, seed: int
) -> Iterator[Batch]:
    """Endless batches of random contiguous windows from a packed token stream, reproducible from ``seed``.

    The stream is documents joined with EOS, so a window may span a document boundary, as in GPT-style
    pre-training. Yields ``{"input_ids": LongTensor[batch_size, seq_len]}``; the causal-LM loss uses the
    same tensor as labels.
    """
    import numpy as np
    import torch

    stream = np.asarray(token_ids, dtype=np.int64)
    if stream.ndim != 1 or len(stream) < seq_len:
        raise ValueError(
            f"need a 1-d token stream of at least seq_len={seq_len} tokens, got shape {stream.shape}"
        )
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len)
    while True:
        starts = rng.integers(0, len(stream) - seq_len + 1, size=batch_size)
        yield {"input_ids": torch.from_numpy(stream[starts[:, None] + offsets])}


def pack_documents(tokenizer: Any, documents: list[str]) -> np.ndarray:
    """Tokenise ``documents`` and join them into one stream, each preceded by EOS (as :func:`bits_per_byte` scores)."""
    import numpy as np

    eos = tokenizer.eos_token_id
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"] if documents else []
    stream: list[int] = []
    for ids in encoded:
        stream.append(eos)
        stream.extend(ids)
    return np.asarray(stream, dtype=np.int64)


# --- evaluation -----------------------------------------------------------------------------------


def bits_per_byte(
    model: nn.Module,
    tokenizer: Any,
    documents: list[str],
    max_length: int,
    stride: int | None = None,
    batch_size: int = 16,
) -> float:
    """Total negative log-likelihood of ``documents`` in bits, divided by their size in UTF-8 bytes.

    Unlike per-token loss, this is comparable across tokenizers. Conventions:

    * every document is scored on its own, preceded by EOS, which is how documents appear in the packed
      training stream; so *every* token of a document is predicted (the first one from EOS alone) and
      the byte count is the whole document's;
    * a document longer than ``max_length`` tokens is scored in sliding windows: each window predicts
      ``stride`` new tokens (default ``max_length // 2``) with up to ``max_length - stride`` earlier tokens
      as context, so each token is predicted exactly once, always with at least that much context (when
      the document has it).

    Windows are right-padded into batches; causal attention keeps padding from affecting real positions.
    """
    import torch

    stride = stride or max(1, max_length // 2)
    if not 0 < stride < max_length:
        raise ValueError(f"need 0 < stride < max_length, got stride={stride}, max_length={max_length}")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if eos is None:
        raise ValueError("the tokenizer has neither an EOS nor a BOS token to start documents with")
    device = next(model.parameters()).device
    windows: list[tuple[list[int], int]] = []  # (input ids, how many trailing positions to score)
    total_bytes = 0
    for doc, ids in zip(documents, tokenizer(documents, add_special_tokens=False)["input_ids"], strict=True):
        total_bytes += len(doc.encode("utf-8"))
        seq = [eos, *ids]
        for first in range(1, len(seq), stride):  # first = index in seq of the first token to predict
            end = min(first + stride, len(seq))
            begin = max(0, end - max_length)
            windows.append((seq[begin:end], end - first))
    if total_bytes == 0:
        raise ValueError("no text to score")

    was_training = model.training
    model.eval()
    total_nats = 0.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    try:
        with torch.no_grad():
            windows.sort(key=lambda w: len(w[0]))  # similar lengths together: less padding
            for i in range(0, len(windows), batch_size):
                group = windows[i : i + batch_size]
                width = max(len(ids) for ids, _ in group)
                input_ids = torch.full((len(group), width), pad, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, (ids, _) in enumerate(group):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for row, (ids, n_scored) in enumerate(group):
                    targets = torch.tensor(ids[len(ids) - n_scored :])
                    # logits at position p predict token p+1
                    predicted = logprobs[row, len(ids) - n_scored - 1 : len(ids) - 1]
                    total_nats -= predicted.gather(1, targets[:, None]).sum().item()
    finally:
        model.train(was_training)
    return total_nats / math.log(2) / total_bytes

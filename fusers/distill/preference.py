"""Preference losses and their training data: response-only SFT, DPO and WRPO (FuseChat-3.0, implicit fusion).

A training sequence is one rendered conversation (the prompt, then a response) with a token-level
``response_mask`` (1 on the response's tokens, as TRL's ``completion_mask``). Everything scores the response
tokens only: the prompt is context.

* :func:`sequence_logps`: ``Σ_t log π(y_t | x, y_<t)`` over the response tokens of every sequence (and their count).
* :func:`response_ce_loss`: the SFT loss, the mean next-token CE over all response tokens of the global batch
  (checked against TRL's ``SFTTrainer`` with ``completion_only_loss``).
* :func:`dpo_loss`: ``-log σ(β·[(log πθ(y_w) - log πref(y_w)) - (log πθ(y_l) - log πref(y_l))])`` per pair
  (Rafailov et al. 2023; checked against TRL's ``DPOTrainer`` ``loss_type="sigmoid"``, and with
  ``length_normalize`` against ``"sigmoid_norm"``, where each log-ratio is divided by its response's tokens).
* :func:`wrpo_loss`: WRPO (Yang et al., arXiv 2412.03187): ``-log σ(α·r(y_ws) + (1-α)·r(y_wt) - r(y_l))`` with
  ``r(y) = β·log πθ(y)/πref(y)``, ``y_ws`` a source's chosen response, ``y_wt`` the target's own chosen one and
  ``y_l`` its rejected one; α = 0 is DPO on the target's own pair.

:class:`ResponseCorpus` (SFT) and :class:`PreferenceCorpus` (pairs or triples with their reference log-probs,
precomputed once by :func:`reference_logps`, as TRL's ``precompute_ref_log_probs``: the reference model is not
kept during training) are map-style datasets with a ``collate``, which
:func:`~fusers.distill.training.train_with_accelerate` trains under ``accelerate``. Each process holds an equal
slice of every global batch: the SFT loss divides by the global count of response tokens (``reduce``, as
:func:`~fusers.distill.fusion.fusion_loss`), the preference losses are means over pairs, which DDP's gradient
average already makes the global mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import Tensor, nn

#: Sequences of one pair (DPO) or triple (WRPO), in the order they are stacked in a batch.
DPO_ROLES = ("chosen", "rejected")
WRPO_ROLES = ("source_chosen", "target_chosen", "rejected")


def sequence_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, response_mask: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """``(Σ log-prob of the response tokens [B], number of response tokens [B])`` of each sequence.

    Token t is predicted by row t-1, so the first token never counts (it is the EOS/BOS a sequence starts with).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
    mask = response_mask[:, 1:].to(logp.dtype)
    return (logp * mask).sum(dim=-1), mask.sum(dim=-1)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss [B], chosen reward [B], rejected reward [B])`` of DPO's sigmoid loss; reward = β·log πθ/πref.

    The inputs are sequence log-probs (or, for length-normalised DPO, sequence log-probs divided by the
    response's token count, policy and reference alike)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def wrpo_loss(policy_source: Tensor, ref_source: Tensor, policy_target: Tensor, ref_target: Tensor,
              policy_rejected: Tensor, ref_rejected: Tensor, beta: float, alpha: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss [B], chosen reward [B], rejected reward [B])`` of WRPO: the chosen reward is
    ``α·r(y_ws) + (1-α)·r(y_wt)``, the weighted mix of the source's and the target's own chosen responses."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    chosen = alpha * beta * (policy_source - ref_source) + (1.0 - alpha) * beta * (policy_target - ref_target)
    rejected = beta * (policy_rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def response_ce_loss(reduce: Callable[[Tensor], Tensor] | None = None):  # a LossFn
    """``loss_fn(model, batch)`` for :func:`harness.train.train`: the mean next-token CE over the response tokens.

    With ``reduce`` (an all-reduce mean across processes, :func:`~fusers.distill.training.mean_across_processes`)
    this process's sum is divided by the mean count of response tokens per process, so that the average of the
    processes' gradients is the gradient of the global batch's mean; the logged ``sft`` value is the global mean.
    """

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        input_ids, mask = batch["input_ids"], batch["response_mask"]
        logits = model(input_ids=input_ids, attention_mask=batch.get("attention_mask")).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")
        counted = mask[:, 1:].to(nll.dtype)
        count = counted.sum().detach()
        if reduce is not None:
            count = reduce(count.reshape(1)).to(count.device).reshape(())
        loss = (nll * counted).sum() / count.clamp_min(1.0)
        logged = loss.detach().reshape(1)
        if reduce is not None:
            logged = reduce(logged)
        return loss, {"sft": float(logged[0])}

    return loss_fn


class PreferenceSchedule:
    """WRPO's progressive weight of the source's chosen response: α grows linearly from 0 at the first step to
    ``alpha_max`` at the last. ``step`` is advanced by the training loop's ``on_step`` hook (:meth:`advance`)."""

    def __init__(self, alpha_max: float, steps: int):
        self.alpha_max, self.steps, self.step = float(alpha_max), int(steps), 0

    @property
    def alpha(self) -> float:
        return self.alpha_max * self.step / max(1, self.steps - 1)

    def advance(self, step: int, logs: dict[str, float]) -> None:
        self.step = step + 1


def preference_loss(kind: str, beta: float, *, length_normalize: bool = False,
                    schedule: PreferenceSchedule | None = None,
                    reduce: Callable[[Tensor], Tensor] | None = None):  # a LossFn
    """``loss_fn(model, batch)`` for a :class:`PreferenceCorpus` batch: DPO (``kind="dpo"``) or WRPO (``"wrpo"``,
    α from ``schedule``). Logs the loss, the mean chosen and rejected rewards, the reward accuracy (chosen >
    rejected) and the mean margin, averaged over all processes (``reduce``), and α for WRPO."""
    if kind not in ("dpo", "wrpo"):
        raise ValueError(f"unknown preference loss {kind!r}; expected dpo or wrpo")
    if kind == "wrpo" and schedule is None:
        raise ValueError("WRPO needs a PreferenceSchedule for its weight alpha")

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ref = batch["ref_logps"]  # [B, k]
        k = ref.shape[1]
        logps, counts = sequence_logps(model, batch["input_ids"], batch.get("attention_mask"), batch["response_mask"])
        policy = logps.reshape(k, -1).T  # [B, k]: the batch stacks role by role
        if length_normalize:
            n = counts.reshape(k, -1).T.clamp_min(1.0)
            policy, ref = policy / n, ref / n
        if kind == "dpo":
            loss, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
        else:
            assert schedule is not None
            loss, chosen, rejected = wrpo_loss(policy[:, 0], ref[:, 0], policy[:, 1], ref[:, 1], policy[:, 2],
                                               ref[:, 2], beta, schedule.alpha)
        loss = loss.mean()
        logged = torch.stack([loss.detach(), chosen.mean(), rejected.mean(), (chosen > rejected).float().mean(),
                              (chosen - rejected).mean()])
        if reduce is not None:
            logged = reduce(logged)
        out = dict(zip(("dpo", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin"),
                       (float(x) for x in logged), strict=True))
        if schedule is not None:
            out["alpha"] = schedule.alpha
        return loss, out

    return loss_fn


# --- data -----------------------------------------------------------------------------------------


Sequence_ = tuple[np.ndarray, np.ndarray]  # (token ids [n], response mask [n]) of one training sequence


def _pad(sequences: Sequence[Sequence_], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` [N, L] (padding counts nowhere)."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    response = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        attention[row, : len(ids)] = 1
        response[row, : len(ids)] = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}


class ResponseCorpus(torch.utils.data.Dataset):
    """SFT sequences (one conversation each), right-padded per batch; ``dataset[i]`` is ``i``, :meth:`collate`
    builds the batch ``{"input_ids", "attention_mask", "response_mask"}`` [B, L]."""

    def __init__(self, sequences: Sequence[Sequence_], pad_id: int):
        if not sequences:
            raise ValueError("no SFT sequence to train on")
        self.sequences, self.pad_id = list(sequences), int(pad_id)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        return _pad([self.sequences[i] for i in indices], self.pad_id)


class PreferenceCorpus(torch.utils.data.Dataset):
    """Preference items of ``k`` sequences each (DPO: chosen, rejected; WRPO: source chosen, target chosen,
    rejected) with their reference log-probs ``ref_logps`` [n, k] (set by :func:`reference_logps`).

    A batch stacks the items role by role, ``[all first sequences; all second; ...]`` as TRL stacks ``[chosen;
    rejected]``, so one forward pass scores them all: ``{"input_ids", "attention_mask", "response_mask"}``
    [k·B, L] and ``ref_logps`` [B, k].
    """

    def __init__(self, items: Sequence[Sequence[Sequence_]], pad_id: int, ref_logps: np.ndarray | None = None):
        if not items:
            raise ValueError("no preference pair to train on")
        self.items, self.pad_id = list(items), int(pad_id)
        self.k = len(self.items[0])
        if any(len(item) != self.k for item in self.items):
            raise ValueError("every preference item must have the same number of sequences")
        self.ref_logps = ref_logps

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> int:
        return i

    def sequences(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The batch's sequences, stacked role by role (no reference log-probs)."""
        return _pad([self.items[i][r] for r in range(self.k) for i in indices], self.pad_id)

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        if self.ref_logps is None:
            raise ValueError("compute the reference log-probs first (reference_logps)")
        batch = self.sequences(indices)
        batch["ref_logps"] = torch.as_tensor(self.ref_logps[np.asarray(indices)], dtype=torch.float32)
        return batch


def reference_logps(model: nn.Module, corpus: PreferenceCorpus, batch_size: int = 8) -> np.ndarray:
    """float64 [n, k]: the frozen reference model's response log-probs of every sequence of ``corpus``, computed
    once before training (TRL's ``precompute_ref_log_probs``), so that only the trained model is kept."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(corpus), corpus.k), dtype=np.float64)
    try:
        with torch.no_grad():
            for first in range(0, len(corpus), batch_size):
                indices = list(range(first, min(first + batch_size, len(corpus))))
                batch = {key: v.to(device) for key, v in corpus.sequences(indices).items()}
                logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
                out[first: first + len(indices)] = logps.double().cpu().numpy().reshape(corpus.k, -1).T
    finally:
        model.train(was_training)
    return out

"""Training data: the target stream cut into sequences with their fused sparse targets, and the batches.

:class:`FusionCorpus` builds each batch's fused targets from a
:class:`~fusers.distill.candidates.CandidateSource` (packed fixed-length blocks, as FuseLLM's ``packing.py``
does and as the zoo was trained, or one conversation per sequence for chat fusion); :class:`ScheduledCorpus` trains several of them under one schedule (ProFuser);
:class:`StepBatches` fixes the global batches of a run, whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from fusers.align import MAPPED
from fusers.distill.candidates import CandidateBlock, CandidateSource
from fusers.distill.fusion import FUSIONS, GRANULARITIES, Fusion, Granularity, fuse_block

if TYPE_CHECKING:
    from torch import Tensor


class FusionCorpus(torch.utils.data.Dataset):
    """Training sequences of the target stream, with their fused sparse targets.

    The stream is every chunk's target tokens in corpus order (a document's first chunk after EOS). It is
    cut one of two ways:

    * **packed** (default; FuseLLM, as its ``packing.py`` and the zoo's pre-training do): fixed
      ``seq_len``-token blocks, the last partial block dropped; a block may span several chunks;
    * **one item per sequence** (``items`` = the chunks' stream offsets, ``[n + 1]``; chat fusion, as
      FuseChat's reference trains one dialogue per sequence): sequence ``i`` is chunk ``i`` alone, right-padded
      to the longest of its batch with ``pad_id``, with an ``attention_mask``; padded rows count in no loss
      and carry no fused target. The student then reads exactly the tokens each teacher read (EOS, then the
      whole conversation), and never a response without its instruction or attention across conversations.

    ``dataset[i]`` is just ``i``: the work happens in :meth:`collate`, once per batch, so an online source can
    batch its teacher passes. ``rows`` restricts the sequences to a part ``[first, stop)`` of the stream
    (ProFuser keeps its two modes' data in one stream and one corpus per mode). A batch is
    ``{"input_ids": [B, L], "fuse_ids": [B, L, K], "fuse_probs": [B, L, K]}``, plus ``loss_mask`` [B, L] with
    a loss mask or items and ``attention_mask`` [B, L] with items. :attr:`selected` accumulates each
    candidate's weight over all rows built so far (for the run's report).
    """

    def __init__(self, input_ids: np.ndarray, candidates: CandidateSource, *, seq_len: int, fusion: Fusion = "min_ce",
                 granularity: Granularity = "sequence", temperature: float = 1.0, tau: float = 1.0,
                 per_token: bool = False, loss_mask: np.ndarray | None = None,
                 rows: tuple[int, int] | None = None, items: np.ndarray | None = None, pad_id: int = 0):
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        if loss_mask is not None and len(loss_mask) != len(self.input_ids):
            raise ValueError(f"loss_mask has {len(loss_mask)} rows for {len(self.input_ids)} target tokens")
        self.loss_mask = None if loss_mask is None else np.asarray(loss_mask, dtype=bool)
        self.first_row, self.stop_row = rows if rows is not None else (0, len(self.input_ids))
        self.candidates = candidates
        self.seq_len = int(seq_len)
        self.fusion, self.granularity = fusion, granularity
        self.temperature, self.tau, self.per_token = temperature, tau, per_token
        self.pad_id = int(pad_id)
        self.items: np.ndarray | None = None
        if items is not None:
            offsets = np.asarray(items, dtype=np.int64)
            if len(offsets) == 0 or offsets[-1] != len(self.input_ids) or np.any(np.diff(offsets) < 0):
                raise ValueError("items must be the chunks' stream offsets: increasing, ending at the stream length")
            starts, stops = offsets[:-1], offsets[1:]
            inside = (starts >= self.first_row) & (stops <= self.stop_row) & (stops > starts)
            if np.any(stops[inside] - starts[inside] > self.seq_len):
                raise ValueError(f"an item is longer than seq_len={seq_len}; skip or cut it before training")
            self.items = np.stack([starts[inside], stops[inside]], axis=1)
        if len(self) == 0:
            raise ValueError(f"the fusion corpus has {len(self.input_ids)} target tokens, less than one block of "
                             f"seq_len={seq_len}; raise corpus_chars")
        self.selected = np.zeros(len(candidates.names))

    def __len__(self) -> int:
        if self.items is not None:
            return len(self.items)
        return (self.stop_row - self.first_row) // self.seq_len

    def __getitem__(self, index: int) -> int:
        return int(index)

    def span(self, index: int) -> tuple[int, int]:
        if self.items is not None:
            start, stop = self.items[index]
            return int(start), int(stop)
        start = self.first_row + index * self.seq_len
        return start, start + self.seq_len

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        spans = [self.span(int(i)) for i in indices]
        self.candidates.prepare(spans)
        width = max(b - a for a, b in spans)
        blocks = [_padded(self.candidates.block(a, b), width) for a, b in spans]
        stacked = CandidateBlock(**{f.name: np.stack([getattr(b, f.name) for b in blocks])
                                    for f in fields(CandidateBlock)})  # every field gains a leading [B]
        real = np.zeros((len(spans), width), dtype=bool)  # [B, L]: rows that hold a token (not padding)
        for r, (a, b) in enumerate(spans):
            real[r, : b - a] = True
        ids, probs, weights = fuse_block(stacked, self.fusion, self.granularity, temperature=self.temperature,
                                         tau=self.tau, per_token=self.per_token)  # [B, L, K], [B, L, K], [B, L, C]
        real_t = torch.from_numpy(real)
        probs = probs * real_t[..., None]  # padding carries no target
        self.selected += (weights * real_t[..., None]).sum(dim=(0, 1)).double().numpy()
        input_ids = np.full((len(spans), width), self.pad_id, dtype=np.int64)
        for r, (a, b) in enumerate(spans):
            input_ids[r, : b - a] = self.input_ids[a:b]
        batch = {"input_ids": torch.from_numpy(input_ids), "fuse_ids": ids.clamp_min(0), "fuse_probs": probs}
        if self.loss_mask is not None or self.items is not None:
            mask = real.copy()
            if self.loss_mask is not None:
                for r, (a, b) in enumerate(spans):
                    mask[r, : b - a] &= self.loss_mask[a:b]
            batch["loss_mask"] = torch.from_numpy(mask)
        if self.items is not None:
            batch["attention_mask"] = real_t.long()
        return batch


def _padded(block: CandidateBlock, length: int) -> CandidateBlock:
    """``block`` with rows appended up to ``length``: neutral values (score 0 for every candidate, id 0) that the loss
    never reads (their rows are masked and their fused probabilities zeroed)."""
    extra = length - len(block.status)
    if extra == 0:
        return block

    def pad(values: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([values, np.full((extra, *values.shape[1:]), fill, dtype=values.dtype)])

    return CandidateBlock(ids=pad(block.ids, 0), logp=pad(block.logp, 0.0), status=pad(block.status, MAPPED),
                          token_ce=pad(block.token_ce, 0.0), token_bytes=pad(block.token_bytes, 1.0),
                          seq_nats=pad(block.seq_nats, 0.0), seq_tokens=pad(block.seq_tokens, 1.0),
                          seq_bytes=pad(block.seq_bytes, 1.0))


class StepBatches:
    """The global batches of a run: ``steps`` lists of ``batch_size`` block indices, epochs of a seeded shuffle.

    A batch sampler, so that ``accelerate`` (``split_batches=True``) hands every process its slice of each
    global batch: the same blocks are trained on whatever the number of processes.
    """

    def __init__(self, n_blocks: int, batch_size: int, steps: int, seed: int):
        self.batch_size = batch_size
        self.drop_last = False
        self._batches: list[list[int]] = []
        rng = np.random.default_rng(seed)
        order: list[int] = []
        while len(self._batches) < steps:
            while len(order) < batch_size:
                order.extend(rng.permutation(n_blocks).tolist())
            self._batches.append(order[:batch_size])
            order = order[batch_size:]

    @classmethod
    def fixed(cls, batches: list[list[int]]) -> StepBatches:
        """Given batches as they are (all of one size), e.g. a :class:`ScheduledCorpus` plan."""
        out = cls(1, len(batches[0]) if batches else 1, 0, 0)
        out._batches = batches
        return out

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)


class ScheduledCorpus(torch.utils.data.Dataset):
    """Several :class:`FusionCorpus` parts trained under one schedule: each step draws its batch from one part.

    ``plan`` names the part of every optimizer step (ProFuser: ``inference`` then ``training``, or a decaying
    mix). :meth:`batches` gives, per step, ``batch_size`` indices of that part's blocks (each part cycles
    through seeded epochs of its own blocks), offset so that :meth:`collate` knows the part again.
    """

    def __init__(self, parts: dict[str, FusionCorpus], plan: Sequence[str]):
        unknown = sorted(set(plan) - set(parts))
        if unknown:
            raise ValueError(f"the schedule names parts {unknown} that do not exist; parts: {sorted(parts)}")
        self.parts = parts
        self.plan = list(plan)
        self.names = list(parts)
        sizes = [len(parts[name]) for name in self.names]
        self.offsets = dict(zip(self.names, np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist(), strict=True))
        self._total = int(sum(sizes))

    def __len__(self) -> int:
        return self._total

    def __getitem__(self, index: int) -> int:
        return int(index)

    def batches(self, batch_size: int, seed: int) -> StepBatches:
        need = {name: self.plan.count(name) for name in self.names}
        per_part = {name: iter(StepBatches(len(self.parts[name]), batch_size, need[name], seed + n))
                    for n, name in enumerate(self.names) if need[name]}
        return StepBatches.fixed([[self.offsets[name] + i for i in next(per_part[name])] for name in self.plan])

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        first = int(indices[0])
        name = next(n for n in reversed(self.names) if first >= self.offsets[n])
        local = [int(i) - self.offsets[name] for i in indices]
        if any(not 0 <= i < len(self.parts[name]) for i in local):
            raise ValueError("a scheduled batch mixes blocks of several parts")
        return self.parts[name].collate(local)

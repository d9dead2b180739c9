"""DSKD, dual-space knowledge distillation, as FuseLLM's distillation loss (``--set distill_loss=dskd``).

Zhang et al., "Dual-Space Knowledge Distillation for Large Language Models", EMNLP 2024,
https://arxiv.org/abs/2406.17328 (reference code: github.com/songmzhang/DSKD, ``DualSpaceKDWithCMA``). It replaces
FuseLLM's soft cross-entropy on fused top-k rows with, per teacher, three terms computed from the teacher's and the
student's *last hidden states*, in both models' output spaces:

* **student space**: the teacher's hidden states, projected to the student's width (``t2s``), are read with the
  student's own (detached) LM head. ``t2s_ce`` (CE of those logits on the student's next token) trains the
  projectors; ``t2s_kd`` = KL(t2s distribution ‖ student) trains the student, on the rows where the projected
  teacher predicts the next token right (the logits detached, as in the reference);
* **teacher space**: the student's hidden states, projected to the teacher's width (``s2t``), are read with the
  teacher's frozen LM head; ``s2t_kd`` = KL(teacher ‖ projected student) trains the student and the projectors.

Different vocabularies and tokenizations are aligned by **cross-model attention** (CMA), as the paper does: the
student's (current, next) token embeddings, through a trainable ``query`` projection, attend over the teacher's
(current, next) token embeddings (normalised, no key projection); the attention moves the teacher's projected
states onto the student's positions, and its transpose moves the student's onto the teacher's. So ``query`` is
trained by ``t2s_ce`` and ``s2t_kd``; ``t2s`` by ``t2s_ce`` alone; ``s2t`` by ``s2t_kd``; the student by ``t2s_kd``
and ``s2t_kd`` (and FuseLLM's CLM). All embeddings are detached; the teachers are frozen.

    L = λ·CLM + (1-λ)·mean over teachers of (t2s_ce + t2s_kd + s2t_kd)

What FuseBench chose where the paper has no answer or FuseLLM's pipeline differs:

* **data**: FuseLLM's packed ``seq_len`` blocks of the target stream. A block covers the end of one chunk, whole
  chunks, the start of another; each teacher reads each *piece* (a block's part of one chunk: exactly the text
  the student's rows cover, after EOS where the piece starts a document) as its own sequence, run per batch
  (the zoo's teachers are small; no top-k store can hold hidden states). Attention is restricted to the same
  piece, and a row whose next token lies outside its piece (the last of each piece) counts in no DSKD term;
* **several teachers** (DSKD is single-teacher): every source other than the target is a teacher with its own
  projectors, and the DSKD term is the mean of the per-teacher terms (no MinCE choice: each teacher's projectors
  need every batch to learn the mapping). The target's own initial model, FuseLLM's candidate 0, is no teacher;
* **normalisation**: each term is a mean over its own counted rows (the reference sums and divides every term by
  the student's token count); the std that normalises the teacher's embeddings and states is taken per block over
  its real rows (the reference's over the padded batch, which would make a block's loss depend on its batch and
  the model on the number of processes);
* **hyper-parameters**: KD temperature 2.0 on both sides of both KLs (the paper's GPT-2 scripts), projectors
  ``Linear`` as in its projector config, trained by the same AdamW and schedule as the student with the
  projectors' own peak learning rate (1e-3, as the paper's), discarded when the model is saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fusers.distill.chunks import ChunkEncoder, TextChunk

if TYPE_CHECKING:
    from torch import Tensor

#: The per-step values the loss logs besides ``clm`` and ``fuse`` (the DSKD total), each a mean over teachers.
TERMS = ("t2s_ce", "t2s_kd", "s2t_kd", "t2s_acc")

#: Score given to attention pairs across pieces or with padding (the reference adds -1e5 to masked scores).
MASKED_SCORE = -1e5


# --- the trainable part -----------------------------------------------------------------------------------


class Projectors(nn.Module):
    """One teacher's projectors (the paper's projector config): ``query`` 2·student embedding -> 2·teacher
    embedding width, ``t2s`` teacher -> student hidden width, ``s2t`` student -> teacher hidden width."""

    def __init__(self, student_embed: int, student_hidden: int, teacher_embed: int, teacher_hidden: int):
        super().__init__()
        if teacher_embed != teacher_hidden:
            raise ValueError(f"DSKD's cross-model attention adds the teacher's token embeddings ({teacher_embed}) to "
                             f"its hidden states ({teacher_hidden}): they must have one width")
        self.query = nn.Linear(2 * student_embed, 2 * teacher_embed)
        self.t2s = nn.Linear(teacher_hidden, student_hidden)
        self.s2t = nn.Linear(student_hidden, teacher_hidden)

    @classmethod
    def between(cls, student: nn.Module, teacher: nn.Module) -> Projectors:
        return cls(_width(student.get_input_embeddings()), _width(student.get_output_embeddings()),
                   _width(teacher.get_input_embeddings()), _width(teacher.get_output_embeddings()))


def _width(module: Any) -> int:
    return int(module.weight.shape[1])


class DualSpaceStudent(nn.Module):
    """The student with one :class:`Projectors` per teacher: what is optimised (and prepared by ``accelerate``,
    so that DDP sees one module). :func:`fusers.distill.training.save_trained` with ``part="student"`` saves the
    student alone, an ordinary HF model; the projectors are dropped."""

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], seed: int = 0):
        super().__init__()
        self.student = student
        with torch.random.fork_rng(devices=[]):  # the projectors' initial weights follow the run's seed alone
            torch.manual_seed(seed)
            self.projectors = nn.ModuleList([Projectors.between(student, t) for t in teachers])

    def forward(self, input_ids: Tensor, piece: Tensor, counted: Tensor,
                views: Sequence[TeacherView]) -> tuple[Tensor, list[TermSums]]:
        """Logits [B, L, V] of the student and, per teacher, the sums of its DSKD terms."""
        out = self.student(input_ids=input_ids, output_hidden_states=True)
        next_ids = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)
        side = StudentSide(ids=input_ids, next_ids=next_ids, piece=piece, counted=counted,
                           hidden=out.hidden_states[-1], logits=out.logits,
                           embed=self.student.get_input_embeddings().weight.detach(),
                           head=self.student.get_output_embeddings().weight.detach())
        return out.logits, [dual_space_terms(side, view, proj, temperature=view.temperature)
                            for view, proj in zip(views, self.projectors, strict=True)]


# --- the loss terms ---------------------------------------------------------------------------------------


@dataclass
class StudentSide:
    """The student's rows of a batch. ``piece`` [B, L]: which piece of its block a row belongs to (-1: padding);
    ``counted`` [B, L]: the row's next token is in its piece; ``embed``/``head``: detached weights."""

    ids: Tensor
    next_ids: Tensor
    piece: Tensor
    counted: Tensor
    hidden: Tensor
    logits: Tensor
    embed: Tensor
    head: Tensor


@dataclass
class TeacherView:
    """One teacher's rows of a batch, laid out per block ([B, Lt]: its pieces one after the other), with its
    frozen pass's last hidden states and logits, and its (detached) token embeddings and LM head."""

    ids: Tensor
    next_ids: Tensor
    piece: Tensor
    counted: Tensor
    hidden: Tensor
    logits: Tensor
    embed: Tensor
    head: Tensor
    temperature: float = 2.0


@dataclass
class TermSums:
    """A teacher's DSKD terms summed over their rows, with the counts their means divide by."""

    t2s_ce: Tensor
    t2s_kd: Tensor
    t2s_correct: Tensor
    student_rows: Tensor
    s2t_kd: Tensor
    teacher_rows: Tensor


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """[...] KL(teacher ‖ student) per row, both distributions at ``temperature`` (no T² factor, as the reference)."""
    teacher_logp = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)


def _normalised(values: Tensor, rows: Tensor) -> Tensor:
    """``values`` [B, T, d] divided, per block, by their std over the block's ``rows`` [B, T] (the reference divides
    by the std of the whole padded batch; per block, a block's terms do not depend on its batch, so that N
    processes train the model one process trains)."""
    mask = rows[..., None].to(values.dtype)
    n = (mask.sum(dim=(1, 2)) * values.shape[-1]).clamp_min(2.0)  # [B] entries counted
    mean = (values * mask).sum(dim=(1, 2)) / n
    var = (((values - mean[:, None, None]) ** 2) * mask).sum(dim=(1, 2)) / (n - 1)
    return values / var.sqrt().clamp_min(1e-6)[:, None, None]


def dual_space_terms(s: StudentSide, t: TeacherView, proj: Projectors, *, temperature: float) -> TermSums:
    """The three DSKD terms of one teacher (module docstring), summed over their rows."""
    # cross-model attention: (current, next) token embeddings, the student's projected as queries
    s_index = torch.cat([s.embed[s.ids], s.embed[s.next_ids]], dim=-1)  # [B, L, 2es]
    t_next = t.embed[t.next_ids]  # [B, Lt, et]
    t_index = _normalised(torch.cat([t.embed[t.ids], t_next], dim=-1), t.counted)  # [B, Lt, 2et]
    query = proj.query(s_index).float()
    scores = query @ t_index.float().transpose(1, 2) / math.sqrt(t_index.shape[-1])  # [B, L, Lt]
    allowed = (s.piece[:, :, None] == t.piece[:, None, :]) & s.counted[:, :, None] & t.counted[:, None, :]
    scores = scores.masked_fill(~allowed, MASKED_SCORE)
    s_rows = s.counted & allowed.any(dim=2)  # rows with something to attend to
    t_rows = t.counted & allowed.any(dim=1)

    # student space: teacher states -> student width -> the student's head
    t_values = proj.t2s(_normalised(t.hidden, t.counted) + _normalised(t_next, t.counted)).float()  # [B, Lt, ds]
    t2s_logits = (torch.softmax(scores, dim=-1) @ t_values) @ s.head.float().T  # [B, L, Vs]
    t2s_nll = torch.nn.functional.cross_entropy(t2s_logits.transpose(1, 2), s.next_ids, reduction="none")
    correct = (t2s_logits.argmax(dim=-1) == s.next_ids) & s_rows
    t2s_kd = forward_kl(s.logits, t2s_logits.detach(), temperature)

    # teacher space: student states -> teacher width -> the teacher's head
    s_values = proj.s2t(s.hidden).float()  # [B, L, dt]
    s2t_logits = (torch.softmax(scores.transpose(1, 2), dim=-1) @ s_values) @ t.head.float().T  # [B, Lt, Vt]
    s2t_kd = forward_kl(s2t_logits, t.logits, temperature)

    return TermSums(t2s_ce=(t2s_nll * s_rows).sum(), t2s_kd=(t2s_kd * correct).sum(), t2s_correct=correct.sum(),
                    student_rows=s_rows.sum(), s2t_kd=(s2t_kd * t_rows).sum(), teacher_rows=t_rows.sum())


# --- the data ---------------------------------------------------------------------------------------------


@dataclass
class DSKDTeacher:
    """A teacher of the DSKD loss: its frozen model (on the training device) and how it tokenizes."""

    name: str
    model: nn.Module
    encoder: ChunkEncoder


class DSKDCorpus(torch.utils.data.Dataset):
    """FuseLLM's packed ``seq_len`` blocks of the target stream, with each teacher's tokens of the same text.

    ``input_ids`` is every chunk's target tokens in corpus order (``chunk_offsets`` [n + 1] their stream offsets),
    as FuseLLM trains. A batch holds, besides ``input_ids`` [B, L], the student's ``piece`` and ``counted`` rows
    (:class:`StudentSide`) and, per teacher ``i``: ``t{i}_pass_ids``/``t{i}_pass_mask`` [P, Lp], the pieces it
    reads as separate sequences, and, laid out per block [B, Lt], ``t{i}_gather`` (where each row is in the flattened
    pass), ``t{i}_ids``, ``t{i}_next``, ``t{i}_piece`` and ``t{i}_counted``.

    A teacher with the target's vocabulary (``shared[i]``) reads the student's own tokens of each piece, so its rows
    are the student's one for one; any other tokenizes the piece's text (at a piece's edges that may differ from
    how it tokenizes the whole chunk, as it would for any sample that starts or ends there).
    """

    def __init__(self, input_ids: np.ndarray, chunks: Sequence[TextChunk], chunk_offsets: np.ndarray,
                 target: ChunkEncoder, teachers: Sequence[ChunkEncoder], seq_len: int,
                 shared: Sequence[bool] | None = None):
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        self.chunks, self.offsets = chunks, np.asarray(chunk_offsets, dtype=np.int64)
        self.target, self.teachers, self.seq_len = target, list(teachers), int(seq_len)
        self.shared = list(shared) if shared is not None else [False] * len(self.teachers)
        if len(self) == 0:
            raise ValueError(f"the fusion corpus has {len(self.input_ids)} target tokens, less than one block of "
                             f"seq_len={seq_len}; raise corpus_chars")
        self._token_ends = lru_cache(maxsize=512)(self._token_ends_uncached)

    def __len__(self) -> int:
        return len(self.input_ids) // self.seq_len

    def __getitem__(self, index: int) -> int:
        return int(index)

    def pieces(self, index: int) -> list[tuple[TextChunk, int, int]]:
        """Block ``index``'s pieces: per chunk it overlaps, the text its rows cover (a chunk, doc start only at the
        chunk's first row) and the block's rows ``[a, b)`` that hold it."""
        start, stop = index * self.seq_len, (index + 1) * self.seq_len
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        out = []
        for j in range(first, len(self.offsets) - 1):
            lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
            if lo >= stop:
                break
            r0, r1 = max(start, lo) - lo, min(stop, hi) - lo  # the chunk's rows in this block
            ends = self._token_ends(j)
            chunk = self.chunks[j]
            begin = 0 if r0 == 0 else int(ends[r0 - 1])  # pieces meet where a target token ends
            end = len(chunk.text) if r1 == len(ends) else int(ends[r1 - 1])
            out.append((TextChunk(chunk.doc, chunk.text[begin:end], chunk.doc_start and r0 == 0),
                        max(start, lo) - start, min(stop, hi) - start))
        return out

    def _token_ends_uncached(self, j: int) -> np.ndarray:
        """Character ends of chunk ``j``'s target tokens (EOS, at a doc start, ends at 0)."""
        tz = self.target.encode(self.chunks[j])
        if tz.offsets is None:
            raise ValueError("DSKD cuts the text at the target's token boundaries: the target needs a fast tokenizer")
        if len(tz) != self.offsets[j + 1] - self.offsets[j]:
            raise ValueError(f"chunk {j} has {len(tz)} target tokens with offsets, "
                             f"{self.offsets[j + 1] - self.offsets[j]} in the stream")
        return np.maximum.accumulate(tz.offsets[:, 1])

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        blocks = [self.pieces(int(i)) for i in indices]
        n, L = len(blocks), self.seq_len
        input_ids = np.stack([self.input_ids[int(i) * L:(int(i) + 1) * L] for i in indices])
        piece = np.full((n, L), -1, dtype=np.int64)
        for b, block in enumerate(blocks):
            for p, (_, a, z) in enumerate(block):
                piece[b, a:z] = p
        counted = np.zeros((n, L), dtype=bool)
        counted[:, :-1] = (piece[:, :-1] == piece[:, 1:]) & (piece[:, :-1] >= 0)
        batch = {"input_ids": input_ids, "piece": piece, "counted": counted}
        for i, (encoder, shared) in enumerate(zip(self.teachers, self.shared, strict=True)):
            side = self._teacher_side(encoder, blocks, input_ids if shared else None)
            batch.update({f"t{i}_{k}": v for k, v in side.items()})
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _teacher_side(self, encoder: ChunkEncoder, blocks: list[list[tuple[TextChunk, int, int]]],
                      student_ids: np.ndarray | None) -> dict[str, np.ndarray]:
        seqs: list[list[int]] = []  # the teacher's passes: one per non-empty piece
        layout: list[list[tuple[int, int]]] = []  # per block: (pass, piece index) in order
        for b, block in enumerate(blocks):
            layout.append([])
            for p, (text, a, z) in enumerate(block):
                if student_ids is not None:
                    ids = student_ids[b, a:z].tolist()
                else:
                    ids = encoder.ids(text)[: self.seq_len]
                if ids:
                    layout[-1].append((len(seqs), p))
                    seqs.append(ids)
        if not seqs:  # nothing to read: one EOS pass that no row uses keeps the shapes valid
            seqs.append([encoder.eos_id])
        width = max(len(s) for s in seqs)
        pass_ids = np.zeros((len(seqs), width), dtype=np.int64)
        pass_mask = np.zeros((len(seqs), width), dtype=np.int64)
        for k, s in enumerate(seqs):
            pass_ids[k, : len(s)], pass_mask[k, : len(s)] = s, 1
        rows = max(1, max(sum(len(seqs[k]) for k, _ in block) for block in layout))
        n = len(blocks)
        gather = np.zeros((n, rows), dtype=np.int64)
        ids, next_ids = np.zeros((n, rows), dtype=np.int64), np.zeros((n, rows), dtype=np.int64)
        piece, counted = np.full((n, rows), -1, dtype=np.int64), np.zeros((n, rows), dtype=bool)
        for b, block in enumerate(layout):
            at = 0
            for k, p in block:
                m = len(seqs[k])
                gather[b, at:at + m] = k * width + np.arange(m)
                ids[b, at:at + m] = seqs[k]
                next_ids[b, at:at + m - 1] = seqs[k][1:]
                piece[b, at:at + m] = p
                counted[b, at:at + m - 1] = True
                at += m
        return {"pass_ids": pass_ids, "pass_mask": pass_mask, "gather": gather, "ids": ids, "next": next_ids,
                "piece": piece, "counted": counted}


# --- the loss function ------------------------------------------------------------------------------------


def teacher_view(teacher: DSKDTeacher, batch: dict[str, Tensor], i: int, temperature: float) -> TeacherView:
    """Teacher ``i``'s frozen pass over its pieces of ``batch``, laid out per block."""
    with torch.no_grad():
        out = teacher.model(input_ids=batch[f"t{i}_pass_ids"], attention_mask=batch[f"t{i}_pass_mask"],
                            output_hidden_states=True)
        where = batch[f"t{i}_gather"]
        hidden = out.hidden_states[-1].float().flatten(0, 1)[where]  # [B, Lt, dt]
        logits = out.logits.float().flatten(0, 1)[where]  # [B, Lt, Vt]
    return TeacherView(ids=batch[f"t{i}_ids"], next_ids=batch[f"t{i}_next"], piece=batch[f"t{i}_piece"],
                       counted=batch[f"t{i}_counted"], hidden=hidden, logits=logits,
                       embed=teacher.model.get_input_embeddings().weight.detach(),
                       head=teacher.model.get_output_embeddings().weight.detach(), temperature=temperature)


def dskd_loss(lam: float, teachers: Sequence[DSKDTeacher], *, temperature: float = 2.0,
              reduce: Callable[[Tensor], Tensor] | None = None):  # a LossFn
    """``loss_fn(model, batch)`` for :func:`harness.train.train` on a :class:`DualSpaceStudent` and
    :class:`DSKDCorpus` batches: ``λ·CLM + (1-λ)·mean_teachers(t2s_ce + t2s_kd + s2t_kd)``.

    CLM is FuseLLM's (rows 0..L-2, every row), so λ = 1 trains exactly what FuseLLM's control trains. Each DSKD
    term is its sum over this process's rows divided by the mean count per process (``reduce``: the all-reduce
    mean of :func:`fusers.distill.training.mean_across_processes`), so that averaged gradients are the global
    batch's, as :func:`fusers.distill.fusion.fusion_loss` does. Logged: ``clm``, ``fuse`` (the DSKD total) and
    :data:`TERMS`, means over teachers, ``t2s_acc`` the share of rows where the projected teacher is right.
    """

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        views = [teacher_view(t, batch, i, temperature) for i, t in enumerate(teachers)]
        input_ids = batch["input_ids"]
        logits, sums = model(input_ids, batch["piece"], batch["counted"], views)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        clm = -logp.gather(-1, input_ids[:, 1:, None]).mean()
        counts = torch.stack([torch.stack([s.student_rows, s.teacher_rows]) for s in sums]).float().detach()
        if reduce is not None:
            counts = reduce(counts).to(counts.device)
        counts = counts.clamp_min(1.0)
        t2s_ce = torch.stack([s.t2s_ce / counts[k, 0] for k, s in enumerate(sums)]).mean()
        t2s_kd = torch.stack([s.t2s_kd / counts[k, 0] for k, s in enumerate(sums)]).mean()
        s2t_kd = torch.stack([s.s2t_kd / counts[k, 1] for k, s in enumerate(sums)]).mean()
        t2s_acc = torch.stack([s.t2s_correct / counts[k, 0] for k, s in enumerate(sums)]).mean()
        fuse = t2s_ce + t2s_kd + s2t_kd
        loss = lam * clm + (1.0 - lam) * fuse
        logged = torch.stack([clm, fuse, t2s_ce, t2s_kd, s2t_kd, t2s_acc]).detach()
        if reduce is not None:
            logged = reduce(logged)
        return loss, dict(zip(("clm", "fuse", *TERMS), (float(x) for x in logged), strict=True))

    return loss_fn

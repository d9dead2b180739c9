"""DSKD as FuseLLM's distillation loss (``distill_loss=dskd``, fusers/distill/dskd.py): its terms on tensors small
enough to check by hand, which parameters each term trains, how teachers read a block's text, and `bench run` on
the micro zoo (the saved model is the target's, without projectors, and it trained)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
import torch

from fusers.distill.dskd import (
    TERMS,
    DSKDCorpus,
    Projectors,
    StudentSide,
    TeacherView,
    dual_space_terms,
    forward_kl,
)
from fusers.fusellm import FuseLLM
from tests.conftest import bench
from tests.fusers.test_fusellm import TINY


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def test_forward_kl_by_hand() -> None:
    teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    student = torch.tensor([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert forward_kl(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # at T = 2 the student's logits halve: q = (sqrt 3, 1) / (sqrt 3 + 1)
    q = np.array([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1.0)
    assert forward_kl(student, teacher, 2.0).item() == pytest.approx(float((0.5 * np.log(0.5 / q)).sum()), abs=1e-6)
    assert forward_kl(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def _sides(*, ds: int = 3, dt: int = 4, vs: int = 3, vt: int = 5, seed: int = 0) -> tuple[StudentSide, TeacherView]:
    """One block of 5 student rows (pieces 0, 0, 0, 1, 1) and 5 teacher rows (pieces 0, 0, 0, 1, 1), random states;
    the student's head is the identity on its 3 tokens, so its logits are its hidden states."""
    g = torch.Generator().manual_seed(seed)
    s_ids = torch.tensor([[0, 1, 2, 1, 0]])
    t_ids = torch.tensor([[3, 1, 4, 0, 2]])
    student = StudentSide(ids=s_ids, next_ids=torch.tensor([[1, 2, 1, 0, 0]]), piece=torch.tensor([[0, 0, 0, 1, 1]]),
                          counted=torch.tensor([[True, True, False, True, False]]),
                          hidden=torch.randn(1, 5, ds, generator=g), logits=torch.randn(1, 5, vs, generator=g),
                          embed=torch.randn(vs, ds, generator=g), head=torch.eye(vs, ds))
    teacher = TeacherView(ids=t_ids, next_ids=torch.tensor([[1, 4, 0, 2, 0]]), piece=torch.tensor([[0, 0, 0, 1, 1]]),
                          counted=torch.tensor([[True, True, False, True, False]]),
                          hidden=torch.randn(1, 5, dt, generator=g), logits=torch.randn(1, 5, vt, generator=g),
                          embed=torch.randn(vt, dt, generator=g), head=torch.randn(vt, dt, generator=g))
    return student, teacher


def test_terms_by_hand_with_constant_projectors() -> None:
    """Projectors with zero weights give their bias: the student-space logits are the t2s bias read by the student's
    head, the teacher-space ones the s2t bias read by the teacher's, whatever the attention does."""
    student, teacher = _sides()
    proj = Projectors(3, 3, 4, 4)
    with torch.no_grad():
        for layer in (proj.query, proj.t2s, proj.s2t):
            layer.weight.zero_()
        proj.t2s.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))  # t2s logits (0, 2, 0): predicts token 1
        proj.s2t.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    with torch.no_grad():
        sums = dual_space_terms(student, teacher, proj, temperature=2.0)
    # student rows 0, 1 and 3 count (their next token is in their piece), with next tokens 1, 2, 0: only row 0's
    # is the one the projected teacher predicts, and only it counts in t2s_kd
    assert int(sums.student_rows) == 3 and int(sums.t2s_correct) == 1
    z = math.exp(2.0) + 2.0
    assert float(sums.t2s_ce) == pytest.approx(-math.log(math.exp(2.0) / z) - 2 * math.log(1.0 / z), abs=1e-5)
    t2s = torch.tensor([0.0, 2.0, 0.0])
    assert float(sums.t2s_kd) == pytest.approx(float(forward_kl(student.logits[0, 0], t2s, 2.0)), abs=1e-5)
    # teacher rows 0, 1 and 3 count; each reads the s2t bias through the teacher's head
    s2t = teacher.head @ torch.tensor([1.0, -1.0, 0.5, 0.0])
    assert int(sums.teacher_rows) == 3
    kd = sum(float(forward_kl(s2t, teacher.logits[0, r], 2.0)) for r in (0, 1, 3))
    assert float(sums.s2t_kd) == pytest.approx(kd, abs=1e-5)


def test_attention_stays_within_a_piece() -> None:
    """A student row reads only its piece's teacher rows: changing the teacher's states of piece 1 (their entries
    reversed, so their std, which normalises them, stays) leaves the student-space CE of piece 0's row as it was,
    while the same change in piece 0 moves it."""
    student, teacher = _sides()
    proj = Projectors(3, 3, 4, 4)
    student.counted = torch.tensor([[True, False, False, False, False]])  # piece 0's first row only
    before = float(dual_space_terms(student, teacher, proj, temperature=2.0).t2s_ce.detach())
    teacher.hidden[0, 3] = teacher.hidden[0, 3].flip(0)
    after = dual_space_terms(student, teacher, proj, temperature=2.0)
    assert float(after.t2s_ce) == pytest.approx(before, rel=1e-5) and int(after.student_rows) == 1
    teacher.hidden[0, 0] = teacher.hidden[0, 0].flip(0)
    assert float(dual_space_terms(student, teacher, proj, temperature=2.0).t2s_ce) != pytest.approx(before, rel=1e-3)


def test_which_parameters_each_term_trains() -> None:
    """t2s_ce: the query and t2s projectors; t2s_kd: the student's logits alone; s2t_kd: the student's hidden
    states and the query and s2t projectors. The teachers' tensors and the student's head never get gradients."""
    student, teacher = _sides()
    proj = Projectors(3, 3, 4, 4)
    with torch.no_grad():
        proj.t2s.bias.copy_(torch.tensor([0.0, 8.0, 0.0]))  # the projected teacher is right on row 0: t2s_kd counts
    student.hidden.requires_grad_(True)
    student.logits.requires_grad_(True)
    expected = {"t2s_ce": {"query", "t2s"}, "t2s_kd": {"logits"}, "s2t_kd": {"query", "s2t", "hidden"}}
    for term, trained in expected.items():
        proj.zero_grad(set_to_none=True)
        student.hidden.grad = student.logits.grad = None
        sums = dual_space_terms(student, teacher, proj, temperature=2.0)
        assert int(sums.t2s_correct) == 1
        getattr(sums, term).backward()
        got = {name for name in ("query", "t2s", "s2t") if any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(proj, name).parameters())}
        got |= {name for name in ("hidden", "logits") if getattr(student, name).grad is not None
                and getattr(student, name).grad.abs().sum() > 0}
        assert got == trained, term
        assert not (teacher.hidden.requires_grad or teacher.logits.requires_grad or student.head.requires_grad)


def _encoders(*specs: str):
    from fusers.common import load_tokenizer
    from fusers.distill import ChunkEncoder, chunk_documents
    from harness.model import resolve

    encoders = [ChunkEncoder(load_tokenizer(resolve(s))) for s in specs]
    docs = ["def f(x):\n    return x + 1\n" * 6, "Return the sum of a and b.\n" * 9, "print(f(3))\n" * 4]
    chunks = chunk_documents(docs, [e.tokenizer for e in encoders], 48)
    ids = [encoders[0].ids(c) for c in chunks]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    return encoders, chunks, np.concatenate(ids), offsets


def test_a_same_tokenizer_teacher_reads_the_student_tokens(micro_zoo: Path, monkeypatch) -> None:
    """A teacher with the target's vocabulary reads the student's own tokens: its rows of a block are the
    student's, piece for piece (the alignment is the identity)."""
    monkeypatch.setenv("BENCH_HOME", str(micro_zoo))
    (target, _), chunks, ids, offsets = _encoders("zoo:gpt2-code", "zoo:mpt-math")
    corpus = DSKDCorpus(ids, chunks, offsets, target, [target], seq_len=32, shared=[True])
    batch = corpus.collate(list(range(len(corpus))))
    assert len(corpus) >= 4 and (batch["piece"].max(dim=1).values > 0).any()  # some block spans several chunks
    assert torch.equal(batch["t0_ids"], batch["input_ids"]) and torch.equal(batch["t0_piece"], batch["piece"])
    assert torch.equal(batch["t0_counted"], batch["counted"])
    assert torch.equal(batch["t0_next"][batch["counted"]], batch["input_ids"][:, 1:][batch["counted"][:, :-1]])


def test_another_tokenizer_reads_the_same_text_cut_at_target_tokens(micro_zoo: Path, monkeypatch) -> None:
    """The pieces of consecutive blocks put the chunks' text back together; each piece is the text its student rows
    decode to, and the teacher (Unigram) reads it after EOS exactly where the piece starts a document."""
    monkeypatch.setenv("BENCH_HOME", str(micro_zoo))
    (target, other), chunks, ids, offsets = _encoders("zoo:gpt2-code", "zoo:mpt-math")
    corpus = DSKDCorpus(ids, chunks, offsets, target, [other], seq_len=32)
    pieces = [p for b in range(len(corpus)) for p in corpus.pieces(b)]
    covered = int(offsets.searchsorted(len(corpus) * 32, side="right")) - 1  # chunks wholly inside the blocks
    text = "".join(p.text for p, _, _ in pieces)
    assert text.startswith("".join(c.text for c in chunks[:covered]))
    for b in range(len(corpus)):
        for piece, a, z in corpus.pieces(b):
            rows = ids[b * 32 + a: b * 32 + z].tolist()
            assert target.tokenizer.decode(rows, skip_special_tokens=True) == piece.text
            assert (rows[0] == target.eos_id) == piece.doc_start
    batch = corpus.collate([0, 1])
    first = batch["t0_ids"][0][batch["t0_piece"][0] == 0].tolist()
    assert first == other.ids(corpus.pieces(0)[0][0])


def test_config_keeps_the_existing_keys_and_refuses_what_dskd_cannot_use() -> None:
    assert "distill_loss" not in FuseLLM.Config().model_dump() and "dskd_temperature" not in FuseLLM.Config().model_dump()
    dumped = FuseLLM.Config(distill_loss="dskd").model_dump()
    assert dumped["distill_loss"] == "dskd" and dumped["dskd_temperature"] == 2.0 and dumped["dskd_projector_lr"] == 1e-3
    assert dumped["teacher_mode"] == "online" and FuseLLM.Config(**dumped).model_dump() == dumped  # as workers re-read it
    for bad in ({"teacher_mode": "stored"}, {"teacher_mode": "fused"}, {"reference_compat": "all"},
                {"dskd_temperature": 0.0}):
        with pytest.raises(ValueError):
            FuseLLM.Config(distill_loss="dskd", **bad)


def test_bench_run_fusellm_dskd_saves_the_trained_target_alone(private_home: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    db = tmp_path / "bench.db"
    sets = [x for key, value in {**TINY, "distill_loss": "dskd"}.items() for x in ("--set", f"fuser.{key}={value}")]
    code = bench("run", "--fuser", "fusellm", "--db", str(db), *sets, "--suite", "perplexity",
                 "--set", "perplexity.max_docs=4", "--set", "perplexity.max_chars_per_doc=400")
    assert code == 0, capsys.readouterr().err[-2000:]
    database = sqlite_utils.Database(db)
    (run,) = database.query("select * from runs")
    assert run["status"] == "ok"
    (fused,) = database.query("select m.details, m.path from run_models rm join models m on m.id = rm.model_id "
                              "where rm.role = 'fused'")
    details = json.loads(fused["details"])
    assert details["distill_loss"] == "dskd" and details["dskd"]["teachers"] == ["zoo:neox-docs", "zoo:mpt-math"]
    curves = details["loss_curves"]
    for name in ("total", "clm", "fuse", *TERMS):
        assert len(curves[name]) == TINY["steps"] and all(math.isfinite(x) for x in curves[name]), name
    assert curves["fuse"] == pytest.approx([a + b + c for a, b, c in zip(curves["t2s_ce"], curves["t2s_kd"],
                                                                        curves["s2t_kd"], strict=True)], abs=1e-3)
    logged = {r["name"] for r in database.query("select distinct name from train_log")}
    assert set(TERMS) <= logged
    # an ordinary HF folder of the target: its config and parameter names, new values, no projector
    pivot_dir = private_home / "zoo" / "gpt2-code"
    out = Path(fused["path"])
    assert json.loads((out / "config.json").read_text())["n_embd"] == json.loads(
        (pivot_dir / "config.json").read_text())["n_embd"]
    trained, pivot = load_file(out / "model.safetensors"), load_file(pivot_dir / "model.safetensors")
    assert set(trained) == set(pivot) and not any("projector" in k for k in trained)
    assert all(trained[k].shape == pivot[k].shape for k in pivot)
    assert any(not torch.equal(trained[k], pivot[k]) for k in pivot)
    scores = {r["model_id"] for r in database.query("select model_id from scores where metric = 'bits_per_byte'")}
    assert len(scores) == 4


def test_lambda_one_trains_what_fusellm_control_trains(private_home: Path, tmp_path: Path) -> None:
    """λ = 1 (the control): DSKD's terms get weight 0, and the target trains exactly as FuseLLM's control does
    (same blocks, same CLM; the projectors' zero gradients change neither the clipping nor the student). Equal to
    rounding, except where the gradient is 0 in exact arithmetic, attention's key bias, whose rounding noise Adam
    scales to steps of ~lr: those differ by 1% of what training moved, everything else by 1e-8."""
    from safetensors.torch import load_file

    from harness.api import FuseContext
    from harness.model import resolve

    sources = [resolve(s) for s in FuseLLM.default_sources]
    weights = []
    for name, extra in (("soft", {"teacher_mode": "online"}), ("dskd", {"distill_loss": "dskd"})):
        out = tmp_path / name
        out.mkdir()
        FuseLLM().fuse(sources, sources[0], FuseLLM.Config(**{**TINY, "lam": 1.0, **extra}), FuseContext(out_dir=out))
        weights.append(load_file(out / "model.safetensors"))
    pivot = load_file(private_home / "zoo" / "gpt2-code" / "model.safetensors")
    assert set(weights[0]) == set(weights[1]) == set(pivot)
    for key, value in weights[0].items():
        moved = float((value - pivot[key]).abs().max())
        assert moved > 1e-3, key
        tolerance = moved / 50 if key.endswith("attn.c_attn.bias") else 1e-7
        torch.testing.assert_close(weights[1][key], value, rtol=0.0, atol=tolerance, msg=key)


def test_adamw_lr_scales_give_the_projectors_their_own_learning_rate() -> None:
    """The projectors' parameter groups carry ``lr_scale`` and the loop applies it at every step; with no scales
    AdamW's groups are the usual two."""
    from torch import nn

    from harness.train import TrainConfig, adamw, train

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student, self.projectors = nn.Linear(2, 2), nn.Linear(2, 2)

    model = Wrapped()
    cfg = TrainConfig(steps=2, batch_size=1, seq_len=2, lr=1e-3, warmup_steps=0)
    assert len(adamw(model, cfg).param_groups) == 2
    optimizer = adamw(model, cfg, {"projectors.": 4.0})
    scaled = [g for g in optimizer.param_groups if g.get("lr_scale") == 4.0]
    assert {id(p) for g in scaled for p in g["params"]} == {id(p) for p in model.projectors.parameters()}

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["input_ids"].float()
        return (m.projectors(m.student(x)) ** 2).sum(), {}

    train(model, lambda step: {"input_ids": torch.ones(1, 2, dtype=torch.long)}, cfg, loss_fn=loss_fn,
          progress=None, optimizer=optimizer)
    last = cfg.lr_at(1)
    assert all(g["lr"] == pytest.approx(last * g.get("lr_scale", 1.0)) for g in optimizer.param_groups)
    assert scaled[0]["lr"] == pytest.approx(4 * last)


def test_bench_run_dskd_in_2_processes_matches_one_process(private_home: Path, tmp_path: Path, capsys) -> None:
    """`--processes 2` (DDP over gloo): the student and its projectors are one prepared module, each process
    trains its slice of every global batch and the terms divide by the mean count per process, so the model is the
    1-process one."""
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget

    sets = [x for key, value in {**TINY, "distill_loss": "dskd"}.items() for x in ("--set", f"fuser.{key}={value}")]
    common = ["run", "--fuser", "fusellm", *sets, "--suite", "perplexity", "--set", "perplexity.max_docs=2",
              "--set", "perplexity.max_chars_per_doc=200"]
    one, one_details = fuse_and_forget(private_home, tmp_path / "one.db", common, capsys)
    two, two_details = fuse_and_forget(private_home, tmp_path / "two.db", [*common, "--processes", "2"], capsys)
    assert two_details["distributed"]["type"] == "MULTI_CPU" and two_details["distributed"]["processes"] == 2
    assert_same_weights(one, two, "ddp")
    for name in ("clm", "fuse", *TERMS):
        assert two_details["loss_curves"][name] == pytest.approx(one_details["loss_curves"][name], abs=1e-4), name


def test_bench_teachers_refuses_dskd(private_home: Path, capsys) -> None:
    assert bench("teachers", "--fuser", "fusellm", "--set", "distill_loss=dskd") == 2
    assert "distill_loss=dskd runs its teachers per batch" in capsys.readouterr().err
    assert not (private_home / "cache" / "distill").exists()

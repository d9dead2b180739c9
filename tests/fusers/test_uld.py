"""ULD as FuseLLM's distillation term (``distill_loss=uld``, :mod:`fusers.distill.uld`): the top-K closed form against
the definition (a full sort of both zero-padded vectors), its gradient, the teacher-vocabulary aligned rows, the
config's refusals, and `bench run` on the micro zoo (it trains, and not into the soft-CE model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
import torch

from fusers import distill as D
from fusers.align import EMPTY, FALLBACK, MAPPED
from fusers.distill.uld import uld_dense, uld_term, uld_topk
from fusers.fusellm import FuseLLM
from tests.conftest import bench
from tests.fusers.test_distill import chunks, micro_models, oracle_rows  # noqa: F401  (module fixtures)
from tests.fusers.test_fusellm import TINY

SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def random_teacher(rows: int, vocab: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A teacher's full distributions [rows, vocab] and their top-k renormalised over the kept entries, scattered
    back into [rows, vocab] (the tail 0), as FuseBench's stores give them."""
    full = torch.softmax(3 * torch.randn(rows, vocab, generator=generator, dtype=torch.float64), -1)
    top, ids = full.topk(k, dim=-1)
    kept = torch.zeros_like(full).scatter(-1, ids, top / top.sum(-1, keepdim=True))
    return full, kept


def test_top_k_closed_form_is_the_sorted_l1_of_the_padded_vectors() -> None:
    """Students over 50 ids, teachers over 30 (padded student side) and 80 (padded teacher side), K = 7: the closed
    form from the student's top K equals the definition with a full sort, to float64 rounding."""
    g = torch.Generator().manual_seed(0)
    for student_vocab, teacher_vocab, k in ((50, 30, 7), (50, 80, 7), (5, 80, 8)):  # the last: K > V (m = V)
        student = torch.log_softmax(2 * torch.randn(64, student_vocab, generator=g, dtype=torch.float64), -1)
        _, kept = random_teacher(64, teacher_vocab, k, g)
        stored = kept.sort(dim=-1, descending=True).values[:, :k]  # what a row holds: K probabilities
        stored = stored[:, torch.randperm(k, generator=g)]  # in any order
        closed = uld_topk(student, stored)
        dense = uld_dense(student.exp(), kept)
        torch.testing.assert_close(closed, dense, atol=1e-12, rtol=0)
        assert (closed > 0).all() and (closed <= 2 + 1e-12).all()
    # a padding row (no target) costs the constant 1, whatever the student
    assert uld_topk(student[:2], torch.zeros(2, 8, dtype=torch.float64)).tolist() == pytest.approx([1.0, 1.0])


def test_a_teacher_on_at_most_k_tokens_loses_nothing_in_its_top_k() -> None:
    """A teacher supported on ≤ K tokens: its stored top K is its whole distribution, so the closed form is the ULD
    of the full teacher; one supported on more is not (the stores' renormalised top K is a different vector)."""
    g = torch.Generator().manual_seed(1)
    k, vocab = 6, 40
    student = torch.log_softmax(torch.randn(32, 64, generator=g, dtype=torch.float64), -1)
    for support in (1, 3, k):
        logits = torch.randn(32, vocab, generator=g, dtype=torch.float64)
        outside = torch.rand(32, vocab, generator=g).argsort(-1)[:, support:]
        teacher = torch.softmax(logits.scatter(-1, outside, -torch.inf), -1)  # exactly `support` nonzero entries
        assert ((teacher > 0).sum(-1) == support).all()
        stored = teacher.topk(k, dim=-1).values  # zeros beyond the support
        torch.testing.assert_close(uld_topk(student, stored), uld_dense(student.exp(), teacher), atol=1e-12, rtol=0)
    full, kept = random_teacher(32, vocab, k, g)
    stored = kept.topk(k, dim=-1).values
    assert not torch.allclose(uld_topk(student, stored), uld_dense(student.exp(), full), atol=1e-6)


def test_gradient_equals_the_full_sorts_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 9, 30, generator=g, dtype=torch.float64, requires_grad=True)
    _, kept = random_teacher(36, 45, 5, g)
    kept = kept.reshape(4, 9, 45)
    closed = uld_topk(torch.log_softmax(logits, -1), kept.topk(5, dim=-1).values).sum()
    (g_closed,) = torch.autograd.grad(closed, logits)
    dense = uld_dense(torch.softmax(logits, -1), kept).sum()
    (g_dense,) = torch.autograd.grad(dense, logits)
    torch.testing.assert_close(g_closed, g_dense, atol=1e-12, rtol=0)
    assert g_closed.abs().sum() > 0


def test_fusion_loss_with_the_uld_term() -> None:
    """``fusion_loss(..., distill=uld_term)``: λ·CLM + (1-λ)·mean ULD against ``fuse_probs``; the target's ids (here
    outside the student's vocabulary, as another model's may be) are not read."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    batch = {"input_ids": torch.randint(0, 40, (2, 9)), "fuse_ids": torch.randint(1000, 2000, (2, 9, 3)),
             "fuse_probs": torch.softmax(torch.randn(2, 9, 3), -1)}
    clm = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits, -1)
    uld = uld_dense(logp.exp(), batch["fuse_probs"]).mean()
    loss, logs = D.fusion_loss(0.4, distill=uld_term)(model, batch)
    assert logs["clm"] == pytest.approx(clm.item(), rel=1e-5) and logs["fuse"] == pytest.approx(uld.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.4 * clm.item() + 0.6 * uld.item(), rel=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_teacher_vocabulary_rows_keep_the_aligned_rows_own_entries(micro_models, chunks) -> None:  # noqa: F811
    """``AlignOptions(vocabulary="teacher")``: the same alignment, fallback rows and match test as the default, but a
    used row holds the teacher's own entries (here an oracle's: its top id, mapped, is the default mode's top id),
    also where none of them has a target id (EMPTY in the default mode)."""
    from fusers.common import source_vocab_map

    target_tok = micro_models["gpt2-code"][1]
    target, width = D.ChunkEncoder(target_tok), len(target_tok)
    options = D.AlignOptions(vocabulary="teacher")
    assert options.to_dict()["vocabulary"] == "teacher" and "vocabulary" not in D.AlignOptions().to_dict()
    for name in ("neox-docs", "mpt-math"):
        source_tok = micro_models[name][1]
        source = D.ChunkEncoder(source_tok)
        vmap = source_vocab_map(source_tok, target_tok, len(source_tok), width, frozenset())
        compared = 0
        for chunk in chunks[:12]:
            b, s = target.encode(chunk), source.encode(chunk)
            teacher = oracle_rows(s)
            mapped = D.target_rows(b, s, teacher, vmap, width, D.AlignOptions())
            own = D.target_rows(b, s, teacher, vmap, width, options)
            fallback = mapped.status == FALLBACK
            assert np.array_equal(own.status == FALLBACK, fallback)
            assert np.array_equal(own.ids[fallback], mapped.ids[fallback])
            # entries need no target id now: a row is EMPTY only as the chunk's last row's fallback (no next token)
            assert set(np.flatnonzero(own.status == EMPTY).tolist()) <= {len(b) - 1}
            rows = np.flatnonzero(own.status == MAPPED)
            # each used row is one of the teacher's rows, as stored
            teacher_row = {tuple(r) for r in teacher.topk_ids.tolist()}
            assert all(tuple(own.ids[i].tolist()) in teacher_row for i in rows)
            both = np.flatnonzero((mapped.status == MAPPED) & (own.status == MAPPED))
            assert np.array_equal(vmap.ids[own.ids[both, 0]], mapped.ids[both, 0])
            assert np.array_equal(own.logp[both, 0], mapped.logp[both, 0])
            compared += len(both)
        assert compared > 0, name


def test_config_refuses_what_uld_cannot_do_and_keeps_existing_keys(private_home: Path, capsys) -> None:
    assert "distill_loss" not in FuseLLM.Config().model_dump(mode="json")  # fuse hashes of earlier runs unchanged
    assert FuseLLM.Config(distill_loss="uld").model_dump(mode="json")["distill_loss"] == "uld"
    # the control (λ = 1) is plain continued training whatever the loss: one control model (one key) for all three
    plain = FuseLLM.control_config(FuseLLM.Config()).model_dump(mode="json")
    for loss in ("uld", "dskd"):
        assert FuseLLM.control_config(FuseLLM.Config(distill_loss=loss)).model_dump(mode="json") == plain, loss
    assert bench("run", "--fuser", "fusellm", "--set", "distill_loss=uld", "--set", "fusion=avg_ce") == 2
    err = capsys.readouterr().err
    assert "fusion=avg_ce mixes candidates of different vocabularies" in err and "set fusion=min_ce" in err
    assert bench("run", "--fuser", "fusellm", "--set", "distill_loss=uld", "--set", "teacher_mode=fused") == 2
    assert "use teacher_mode=stored or online" in capsys.readouterr().err
    assert bench("run", "--fuser", "fusellm", "--set", "distill_loss=kl") == 2
    assert not (private_home / "cache" / "distill").exists()


def _fused(db: Path) -> dict[str, dict]:
    rows = sqlite_utils.Database(db).query("select rm.role, m.details, m.path from run_models rm join models m "
                                           "on m.id = rm.model_id")
    return {r["role"]: {"details": json.loads(r["details"] or "{}"), "path": r["path"]} for r in rows}


def test_bench_run_uld_trains_beside_its_control_and_apart_from_soft_ce(private_home: Path, tmp_path: Path,
                                                                        capsys) -> None:
    """`bench run --fuser fusellm --set distill_loss=uld --control` on the micro zoo, then the same run with the soft
    CE: the ULD model moved away from the pivot and differs from the soft-CE model; the control (λ = 1) has no
    fusion term; the teacher stores are shared and the aligned stores are not."""
    from safetensors.torch import load_file

    sets = [x for key, value in {**TINY, "steps": 4}.items() for x in ("--set", f"fuser.{key}={value}")]
    uld_db, soft_db = tmp_path / "uld.db", tmp_path / "soft.db"
    code = bench("run", "--fuser", "fusellm", *sets, "--set", "fuser.distill_loss=uld", "--control", *SUITE,
                 "--db", str(uld_db))
    assert code == 0, capsys.readouterr().err[-3000:]
    assert bench("run", "--fuser", "fusellm", *sets, *SUITE, "--db", str(soft_db)) == 0, capsys.readouterr().err[-3000:]

    uld, soft = _fused(uld_db), _fused(soft_db)
    details = uld["fused"]["details"]
    assert details["distill_loss"] == "uld" and soft["fused"]["details"]["distill_loss"] == "soft_ce"
    curves = details["loss_curves"]
    assert len(curves["fuse"]) == len(curves["clm"]) == 4
    assert all(0.0 < x < 2.0 for x in curves["fuse"])  # a ULD is an L1 distance of two distributions
    assert curves["fuse"] != soft["fused"]["details"]["loss_curves"]["fuse"]
    control = uld["control"]["details"]["loss_curves"]
    assert control["total"] == control["clm"] != curves["total"]
    assert sum(details["candidate_share"].values()) == pytest.approx(1.0, abs=1e-3)

    def weights(path: str) -> dict[str, torch.Tensor]:
        return load_file(Path(path) / "model.safetensors")

    fused, pivot, soft_ce = weights(uld["fused"]["path"]), weights(uld["target"]["path"]), weights(soft["fused"]["path"])
    moved = sum(float((fused[k] - pivot[k]).abs().max()) for k in fused)
    apart = sum(float((fused[k] - soft_ce[k]).abs().max()) for k in fused)
    assert moved > 1e-4 and apart > 1e-4, (moved, apart)
    assert len({uld["fused"]["path"], soft["fused"]["path"], uld["control"]["path"]}) == 3  # three fuse hashes
    distill = private_home / "cache" / "distill"
    assert len(list((distill / "teachers").iterdir())) == 3  # shared by both losses
    aligned = sorted(json.loads((p / "meta.json").read_text())["layout"].get("vocabulary", "target")
                     for p in (distill / "aligned").iterdir())
    assert aligned == ["target", "target", "teacher", "teacher"]


def test_online_teachers_train_with_uld(private_home: Path, tmp_path: Path) -> None:
    from harness.api import FuseContext
    from harness.model import resolve

    out = tmp_path / "out"
    out.mkdir()
    sources = [resolve(s) for s in ("zoo:gpt2-code", "zoo:neox-docs")]
    cfg = FuseLLM.Config(**TINY, teacher_mode="online", distill_loss="uld")
    result = FuseLLM().fuse(sources, sources[0], cfg, FuseContext(out_dir=out))
    assert (out / "model.safetensors").is_file() and result.details["distill_loss"] == "uld"
    assert result.details["effective"]["align"]["vocabulary"] == "teacher"
    assert all(0.0 < x < 2.0 for x in result.details["loss_curves"]["fuse"])
    assert not (private_home / "cache" / "distill").exists()


def test_bench_teachers_computes_the_uld_stores_a_run_then_reads(private_home: Path, tmp_path: Path, capsys) -> None:
    """`bench teachers --set distill_loss=uld` writes the stores a ULD run reads (aligned in the teachers' vocabularies):
    the run that follows computes no shard."""
    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    assert bench("teachers", "--fuser", "fusellm", *sets, "--set", "distill_loss=uld") == 0, \
        capsys.readouterr().err[-2000:]
    db = tmp_path / "b.db"
    assert bench("run", "--fuser", "fusellm", *sets, "--set", "fuser.distill_loss=uld", *SUITE, "--db", str(db)) == 0, \
        capsys.readouterr().err[-2000:]
    stores = _fused(db)["fused"]["details"]["stores"]
    assert [(s["kind"], s["computed"]) for s in stores] == [("teacher", 0)] * 3 + [("aligned", 0)] * 2

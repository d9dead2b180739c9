"""Tests for fusers/distill/: chunking, teacher top-k and its storage, alignment into the target, fusion
functions, the sparse loss, quirk switches, and 2-process DDP training against 1 process.

Constructed tensors with known answers pin the fusion functions and the loss; the micro zoo (``zoo_home``)
provides real tokenizers and models for chunking, teachers, storage and alignment.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusers import distill as D
from fusers.align import EMPTY, FALLBACK, MAPPED, VocabMap, detect_spec

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def one_core():
    """Pin this process to one core while training: ``harness.train`` sets as many threads as the process
    may use cores, and two spin-waiting threads on a busy 2-core box make micro steps ~100x slower."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def micro_models(micro_home: Path) -> dict:
    """name -> (model, tokenizer) of the micro zoo members used here (loaded once)."""
    from harness.model import load_hf
    from harness.model import resolve as resolve_ref

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_HOME", str(micro_home))
        return {name: load_hf(resolve_ref(f"zoo:{name}")) for name in ("gpt2-code", "neox-docs", "mpt-math",
                                                                       "llama-code")}


@pytest.fixture(scope="module")
def chunks(micro_models) -> list[D.TextChunk]:
    from fusers.fusellm import fusion_documents

    docs = fusion_documents(["code", "docs", "math"], 4_000)
    toks = [micro_models[n][1] for n in ("gpt2-code", "neox-docs", "mpt-math")]
    return D.chunk_documents(docs, toks, 48)


def block(**overrides) -> D.CandidateBlock:
    """A 4-row, 2-candidate block; rows 0-1 belong to chunk A, rows 2-3 to chunk B."""
    L, C = 4, 2
    base = dict(
        ids=np.tile(np.array([[[0, 1], [2, 3]]]), (L, 1, 1)),
        logp=np.log(np.tile(np.array([[[0.75, 0.25], [0.5, 0.5]]]), (L, 1, 1))),
        status=np.full((L, C), MAPPED, dtype=np.int8),
        token_ce=np.ones((L, C)), token_bytes=np.ones((L, C)),
        seq_nats=np.array([[2.0, 3.0]] * 2 + [[6.0, 3.0]] * 2),
        seq_tokens=np.array([[2.0, 2.0]] * 4),
        seq_bytes=np.array([[4.0, 4.0]] * 4),
    )
    base.update(overrides)
    return D.CandidateBlock(**base)


# ------------------------------------------------------------------------------------------ fusion functions


def test_min_ce_picks_the_lowest_score_ties_to_the_target_and_skips_inf() -> None:
    scores = torch.tensor([[2.0, 1.0, 3.0], [1.0, 1.0, 0.5], [1.0, 1.0, 1.0], [math.inf, 2.0, 1.0]])
    w = D.fusion_weights(scores, "min_ce")
    assert w.argmax(-1).tolist() == [1, 2, 0, 2]
    assert torch.equal(w.sum(-1), torch.ones(4, dtype=w.dtype))


def test_avg_ce_reference_is_softmax_of_exp_minus_ce() -> None:
    ce = torch.tensor([0.0, math.log(2.0), math.inf])  # rewards 1, 1/2, (not a candidate)
    w = D.fusion_weights(ce, "avg_ce")
    e1, e2 = math.exp(1.0), math.exp(0.5)
    assert w.tolist() == pytest.approx([e1 / (e1 + e2), e2 / (e1 + e2), 0.0])
    # rewards live in (0, 1]: the reference weighting stays close to uniform even for very different CEs
    assert D.fusion_weights(torch.tensor([0.0, 50.0]), "avg_ce")[0] < math.e / (math.e + 1) + 1e-9


def test_avg_ce_softmax_uses_minus_ce_over_tau() -> None:
    ce = torch.tensor([1.0, 2.0, 4.0])
    for tau in (0.5, 1.0, 3.0):
        expected = torch.softmax(-ce.double() / tau, dim=-1)
        assert torch.allclose(D.fusion_weights(ce, "avg_ce_softmax", tau), expected)
    with pytest.raises(ValueError, match="unknown fusion"):
        D.fusion_weights(ce, "max_ce")  # type: ignore[arg-type]


def test_no_finite_candidate_means_equal_candidates() -> None:
    inf = torch.full((3,), math.inf)
    assert D.fusion_weights(inf, "min_ce").tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(D.fusion_weights(inf, "avg_ce_softmax"), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_fuse_topk_min_ce_and_mixture_equal_the_dense_construction() -> None:
    torch.manual_seed(0)
    V, C, k = 11, 3, 4
    ids = torch.stack([torch.randperm(V)[:k] for _ in range(2 * C)]).view(2, C, k)  # [L=2, C, k]
    logp = torch.randn(2, C, k)
    logp[1, 2, 3] = -math.inf  # a padded entry
    scores = torch.tensor([[1.0, 0.5, 2.0], [3.0, 2.0, 1.0]])
    for fusion in ("min_ce", "avg_ce", "avg_ce_softmax"):
        for temperature in (1.0, 2.0):
            fids, probs, weights = D.fuse_topk(ids, logp, scores, fusion, temperature=temperature, tau=0.7)
            dense = torch.zeros(2, V)
            for row in range(2):
                for c in range(C):
                    q = torch.softmax(logp[row, c] / temperature, -1)
                    dense[row].index_add_(0, ids[row, c], weights[row, c] * q)
            got = torch.zeros(2, V).scatter_add_(1, fids, probs)
            assert torch.allclose(got, dense, atol=1e-6), fusion
            assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)
    fids, _, weights = D.fuse_topk(ids, logp, scores, "min_ce")
    assert weights.argmax(-1).tolist() == [1, 2] and torch.equal(fids[0], ids[0, 1])


def test_candidate_scores_per_granularity_and_q13() -> None:
    b = block(token_ce=np.array([[1.0, 2.0], [4.0, np.nan], [1.0, 1.0], [np.nan, 1.0]]),
              token_bytes=np.array([[1.0, 4.0], [2.0, 1.0], [1.0, 1.0], [1.0, 1.0]]),
              status=np.array([[MAPPED, MAPPED], [MAPPED, MAPPED], [MAPPED, FALLBACK], [MAPPED, MAPPED]], np.int8))
    seq = D.candidate_scores(b, "sequence")  # nats / bytes
    assert seq[:, 0].tolist() == [0.5, 0.5, 1.5, 1.5] and seq[:, 1].tolist() == [0.75] * 4
    assert D.candidate_scores(b, "sequence", per_token=True)[:, 0].tolist() == [1.0, 1.0, 3.0, 3.0]
    blk = D.candidate_scores(b, "block")
    assert np.allclose(blk, [[1.0, 0.75]] * 4)  # the row-weighted mean of the chunk CEs over the block
    tok = D.candidate_scores(b, "token")
    assert tok[0].tolist() == [1.0, 0.5]  # per byte of the predicted token
    assert tok[1].tolist() == [2.0, 0.75]  # no next token: the chunk CE
    assert tok[2, 1] == math.inf  # a fallback row is not the candidate's own distribution
    assert D.candidate_scores(b, "token", per_token=True)[0].tolist() == [1.0, 2.0]


def test_q6_block_granularity_makes_one_choice_per_block() -> None:
    b = block()  # chunk A: candidate 0 better (0.5 vs 0.75); chunk B: candidate 1 better (1.5 vs 0.75)
    pick = {g: D.fusion_weights(torch.from_numpy(D.candidate_scores(b, g)), "min_ce").argmax(-1).tolist()
            for g in ("sequence", "block")}
    assert pick == {"sequence": [0, 0, 1, 1], "block": [1, 1, 1, 1]}


def test_q13_per_byte_vs_per_token_ce_can_pick_different_sources() -> None:
    # candidate 1 cuts the same chunk into 4 tokens where candidate 0 needs 2: per token it looks worse
    b = block(seq_nats=np.array([[2.0, 3.0]] * 4), seq_tokens=np.array([[2.0, 4.0]] * 4),
              seq_bytes=np.array([[8.0, 8.0]] * 4))
    per_byte = D.fusion_weights(torch.from_numpy(D.candidate_scores(b, "sequence")), "min_ce").argmax(-1)
    per_token = D.fusion_weights(torch.from_numpy(D.candidate_scores(b, "sequence", per_token=True)),
                                 "min_ce").argmax(-1)
    assert per_byte.tolist() == [0] * 4 and per_token.tolist() == [1] * 4


def test_empty_rows_take_the_target_distribution() -> None:
    b = block(status=np.array([[MAPPED, EMPTY]] * 4, dtype=np.int8)).substitute_empty()
    assert np.array_equal(b.ids[:, 1], b.ids[:, 0]) and np.array_equal(b.logp[:, 1], b.logp[:, 0])


# ------------------------------------------------------------------------------------------ the loss


def test_sparse_soft_ce_equals_dense_soft_ce_and_its_gradient() -> None:
    torch.manual_seed(1)
    B, L, V, K = 2, 5, 13, 6
    logits = torch.randn(B, L, V, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, V, (B, L, K))  # duplicates allowed, as the mixtures produce them
    probs = torch.rand(B, L, K, dtype=torch.float64)
    probs[..., -1] = 0.0  # a padding entry
    probs = probs / probs.sum(-1, keepdim=True)

    sparse = D.sparse_soft_ce(torch.log_softmax(logits, -1), ids, probs).sum()
    (g_sparse,) = torch.autograd.grad(sparse, logits)
    # the slow way: a dense target, then -Σ_v q_v log p_v with an explicit loop over the vocabulary
    q = torch.zeros(B, L, V, dtype=torch.float64)
    for b in range(B):
        for t in range(L):
            for j in range(K):
                q[b, t, ids[b, t, j]] += probs[b, t, j]
    logp = torch.log_softmax(logits, -1)
    dense = -sum(q[..., v] * logp[..., v] for v in range(V)).sum()
    (g_dense,) = torch.autograd.grad(dense, logits)
    assert torch.allclose(sparse, dense) and torch.allclose(g_sparse, g_dense)


def test_fusion_loss_mixes_hf_clm_and_the_sparse_term() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    batch = {"input_ids": torch.randint(0, 40, (2, 9)), "fuse_ids": torch.randint(0, 40, (2, 9, 3)),
             "fuse_probs": torch.softmax(torch.randn(2, 9, 3), -1)}
    hf_clm = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    fuse = D.sparse_soft_ce(torch.log_softmax(model(input_ids=batch["input_ids"]).logits, -1), batch["fuse_ids"],
                            batch["fuse_probs"]).mean()
    loss, logs = D.fusion_loss(0.9)(model, batch)
    assert logs["clm"] == pytest.approx(hf_clm.item(), rel=1e-5) and logs["fuse"] == pytest.approx(fuse.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.9 * hf_clm.item() + 0.1 * fuse.item(), rel=1e-5)
    assert D.fusion_loss(1.0)(model, batch)[0].item() == pytest.approx(hf_clm.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ chunks and teachers


def test_chunks_fit_every_tokenizer_and_rebuild_the_documents(micro_models, chunks) -> None:
    from fusers.fusellm import fusion_documents

    docs = fusion_documents(["code", "docs", "math"], 4_000)
    assert "".join(c.text for c in chunks) == "".join(docs)
    assert [c.doc_start for c in chunks].count(True) == len(docs)
    for name in ("gpt2-code", "neox-docs", "mpt-math"):
        enc = D.ChunkEncoder(micro_models[name][1])
        lengths = [len(enc.ids(c)) for c in chunks]
        assert max(lengths) <= 48 and enc.ids(chunks[0])[0] == enc.eos_id
    assert sum(1 for c in chunks if not c.doc_start) > 5  # the cutting path ran


def test_teacher_rows_match_a_direct_forward(micro_models, chunks) -> None:
    model, tok = micro_models["neox-docs"]
    enc = D.ChunkEncoder(tok)
    some = chunks[:6]
    assert {c.doc_start for c in some} == {True, False}
    encoded = [enc.encode(c) for c in some]
    rows = D.teacher_rows(model, encoded, k=4, batch_size=2)  # padded batches of unequal lengths
    for chunk, tz, r in zip(some, encoded, rows, strict=True):
        ids = torch.as_tensor(tz.ids)[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        logp = torch.log_softmax(logits, -1)
        top = logp.topk(4, -1)
        assert np.array_equal(r.tokens, tz.ids) and np.array_equal(r.topk_ids, top.indices.numpy())
        assert np.allclose(r.topk_logp.astype(np.float32), top.values.numpy(), atol=2e-2)
        ce = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").double()
        assert r.nats == pytest.approx(ce.sum().item(), rel=1e-4) and r.n_tokens == len(tz) - 1
        assert np.allclose(r.token_ce[:-1].astype(np.float64), ce.numpy(), atol=1e-2) and np.isnan(r.token_ce[-1])
        # after EOS every byte of the chunk is predicted; a continuation chunk's first token is not
        _, starts, ends = tz.byte_spans()
        unpredicted = 0 if chunk.doc_start else ends[0] - starts[0]
        assert r.n_bytes == len(tz.text.encode("utf-8")) - unpredicted


def test_teacher_store_round_trip_size_bound_and_resume(tmp_path, micro_models, chunks) -> None:
    model, tok = micro_models["gpt2-code"]
    enc = D.ChunkEncoder(tok)
    k = 5
    loads = []

    def load():
        loads.append(1)
        return model

    store = D.ensure_teacher_store(tmp_path / "t", chunks, enc, load, k, shard_size=8)
    assert store.complete and len(loads) == 1 and store.n_shards > 2
    direct = D.teacher_rows(model, [enc.encode(c) for c in chunks], k)
    offsets = store.item_offsets()
    cols = {n: store.rows(n) for n in D.ROW_FIELDS}
    for i in (0, 7, 8, len(chunks) - 1):  # inside, at and across shard boundaries
        a, b = offsets[i], offsets[i + 1]
        for n in D.ROW_FIELDS:
            assert np.array_equal(cols[n][a:b], getattr(direct[i], n), equal_nan=True), n
    assert cols["tokens"][offsets[7] : offsets[9]].shape[0] == offsets[9] - offsets[7]
    assert store.sums("nats") == pytest.approx([r.nats for r in direct])
    assert cols["topk_ids"][0:3].dtype == np.int32 and cols["topk_logp"][0:3].dtype == np.float16

    n_tokens = len(cols["tokens"])
    payload = store.nbytes(["topk_ids", "topk_logp"])
    assert payload == pytest.approx(6 * k * n_tokens, abs=store.n_shards * 2 * 128)  # .npy headers only
    # everything: 6·k + 8 bytes per token, 32 bytes per chunk (row count, 3 sums), one .npy header per file
    assert store.nbytes() <= (6 * k + 8) * n_tokens + 32 * len(chunks) + store.n_shards * 9 * 128

    # resumable: a lost shard is recomputed, nothing else; a complete store loads nothing
    import shutil

    shutil.rmtree(tmp_path / "t" / "shard-00001")
    again = D.ensure_teacher_store(tmp_path / "t", chunks, enc, load, k, shard_size=8)
    assert len(loads) == 2 and again.complete
    assert np.array_equal(again.rows("topk_ids")[:], cols["topk_ids"][:])
    D.ensure_teacher_store(tmp_path / "t", chunks, enc, load, k, shard_size=8)
    assert len(loads) == 2


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store (or of a folder of stores), by path relative to ``root``: for byte-for-byte checks."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class CrashingTeacher:
    """A teacher that dies on its forward pass number ``forwards + 1`` (one pass per shard when the shard size is
    at most the batch size), like a process killed part way through a store."""

    def __init__(self, model, forwards: int):
        self.model, self.left = model, forwards

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, **inputs):
        if self.left == 0:
            raise RuntimeError("killed")
        self.left -= 1
        return self.model(**inputs)


def test_split_shares_cover_every_shard_exactly_once() -> None:
    for jobs, processes in ((1, 1), (1, 3), (2, 1), (3, 2)):
        shares = [D.ShardSplit(j, jobs, p, processes) for j in range(jobs) for p in range(processes)]
        for shard in range(25):
            assert sum(share.owns(shard) for share in shares) == 1, (jobs, processes, shard)
            assert sum(D.ShardSplit(j, jobs).in_job(shard) for j in range(jobs)) == 1
        assert D.ShardSplit(1, 2, 0, 2).owns(1) and D.ShardSplit(1, 2, 1, 2).owns(3)  # s % jobs, then s // jobs
    assert D.ShardSplit.of_processes() == D.ShardSplit()  # no process group: one process does everything
    for bad in ((2, 2, 0, 1), (0, 1, 1, 1), (-1, 2, 0, 1)):
        with pytest.raises(ValueError, match="no such share"):
            D.ShardSplit(*bad)


def test_a_killed_teacher_pass_resumes_at_its_missing_shards(tmp_path, micro_models, chunks) -> None:
    """Killed after 3 shards (and a 4th shard lost later), the pass leaves whole shards only; run again, it computes
    just the missing ones, and the store is byte for byte the store of an uninterrupted pass."""
    import shutil

    model, tok = micro_models["gpt2-code"]
    enc, k = D.ChunkEncoder(tok), 4
    whole = D.ensure_teacher_store(tmp_path / "whole", chunks, enc, lambda: model, k, shard_size=8)
    assert whole.n_shards > 5 and sorted(whole.written) == list(range(whole.n_shards))
    with pytest.raises(RuntimeError, match="killed"):
        D.ensure_teacher_store(tmp_path / "t", chunks, enc, lambda: CrashingTeacher(model, 3), k, shard_size=8)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["meta.json", "shard-00000", "shard-00001",
                                                                  "shard-00002"]  # no half shard, no scratch
    partial = D.ShardedStore(tmp_path / "t", len(chunks), 8, {"kind": "teacher", "k": k})
    with pytest.raises(RuntimeError, match=f"incomplete: {whole.n_shards - 3} of {whole.n_shards} shards"):
        partial.rows("tokens")
    shutil.rmtree(tmp_path / "t" / "shard-00001")
    resumed = D.ensure_teacher_store(tmp_path / "t", chunks, enc, lambda: model, k, shard_size=8)
    assert sorted(resumed.written) == [1, *range(3, whole.n_shards)]
    assert store_files(tmp_path / "t") == store_files(tmp_path / "whole")


def test_jobs_compute_their_own_shards_and_together_the_whole_stores(tmp_path, micro_models, chunks) -> None:
    """Two independent jobs (`--shard 0/2`, `--shard 1/2`): each writes its shards of the teacher store and then of
    the aligned store (from its own teacher shards alone); together they write the stores of one job. A reader
    refuses a shard that does not hold its items."""
    import shutil

    from fusers.common import source_vocab_map

    (target_model, target_tok), (source_model, source_tok) = micro_models["gpt2-code"], micro_models["mpt-math"]
    target, source = D.ChunkEncoder(target_tok), D.ChunkEncoder(source_tok)
    width, k = D.logit_width(target_model), 4
    vmap = source_vocab_map(source_tok, target_tok, D.logit_width(source_model), width, frozenset())

    def stores(root: Path, split=None):
        teacher = D.ensure_teacher_store(root / "teacher", chunks, source, lambda: source_model, k, shard_size=8,
                                         split=split)
        aligned = D.ensure_aligned_store(root / "aligned", chunks, target, source, teacher, vmap, width,
                                         D.AlignOptions(), shared_vocab=False, split=split)
        return teacher, aligned

    one_job, _ = stores(tmp_path / "one")
    n = one_job.n_shards
    for job in (0, 1):
        teacher, aligned = stores(tmp_path / "two", D.ShardSplit(job, 2))
        assert teacher.written == aligned.written == [s for s in range(n) if s % 2 == job]
        assert teacher.complete == aligned.complete == (job == 1)
    assert store_files(tmp_path / "two") == store_files(tmp_path / "one")

    last = tmp_path / "two" / "teacher" / f"shard-{n - 1:05d}"  # fewer items than the others
    shutil.copy(tmp_path / "two" / "teacher" / "shard-00000" / "_counts.npy", last / "_counts.npy")
    with pytest.raises(RuntimeError, match=f"shard {n - 1} holds 8 entries of _counts, expected {len(chunks) % 8}"):
        D.ShardedStore(tmp_path / "two" / "teacher", len(chunks), 8, {"kind": "teacher", "k": k}).rows("tokens")


# ------------------------------------------------------------------------------------------ into the target


def oracle_rows(tz, k: int = 3) -> D.TeacherRows:
    """Teacher rows that put all mass on the true next token (then k-1 arbitrary ids)."""
    n = len(tz)
    ids = np.zeros((n, k), dtype=np.int32)
    ids[:-1, 0] = tz.ids[1:]
    ids[:, 1:] = (ids[:, :1] + np.arange(1, k)) % 7 + 100
    logp = np.full((n, k), -20.0, dtype=np.float16)
    logp[:, 0] = 0.0
    ce = np.zeros(n, dtype=np.float16)
    ce[-1] = np.nan
    return D.TeacherRows(np.asarray(tz.ids, np.int32), ids, logp, ce, D.predicted_bytes(tz), 0.0, n - 1, 1)


def test_alignment_into_the_target_vocabulary(micro_models, chunks) -> None:
    from fusers.common import source_vocab_map

    target_tok = micro_models["gpt2-code"][1]
    target = D.ChunkEncoder(target_tok)
    width = len(target_tok)
    for name in ("neox-docs", "mpt-math"):
        source_tok = micro_models[name][1]
        source = D.ChunkEncoder(source_tok)
        assert not D.shares_vocabulary(source_tok, target_tok)
        vmap = source_vocab_map(source_tok, target_tok, len(source_tok), width, frozenset())
        good = total = 0
        for chunk in chunks[:12]:
            b, s = target.encode(chunk), source.encode(chunk)
            rows = D.target_rows(b, s, oracle_rows(s), vmap, width, D.AlignOptions())
            assert rows.ids.shape == (len(b), 3) and rows.ids.max() < width
            mapped = rows.status == MAPPED
            total += int(mapped.sum())
            # a MAPPED row predicts what follows the same point of the text: with an oracle teacher its top
            # entry is the target's true next token whenever both tokenizers cut the next token the same way
            surf_b = [bytes(x) for x in b.surfaces]
            surf_s = {}
            _, ss, se = s.byte_spans()
            _, bs, be = b.byte_spans()
            for j in range(len(s) - 1):
                surf_s[int(se[j])] = s.surfaces[j + 1]
            for i in np.flatnonzero(mapped[:-1]):
                if surf_s.get(int(be[i])) == surf_b[i + 1] and surf_b[i + 1]:
                    good += int(rows.ids[i, 0] == b.ids[i + 1])
                    assert rows.ids[i, 0] == b.ids[i + 1], (name, i, b.pieces[i : i + 2])
            fb = np.flatnonzero(rows.status[:-1] == FALLBACK)
            assert np.array_equal(rows.ids[fb, 0], b.ids[fb + 1])  # one-hot on the NEXT target token
        assert total > 0 and good > 0, name


def test_same_end_check_and_byte_twin_vocab_map(micro_models, chunks) -> None:
    from fusers.common import source_vocab_map

    target_tok, source_tok = micro_models["gpt2-code"][1], micro_models["mpt-math"][1]
    plain = source_vocab_map(source_tok, target_tok, len(source_tok), len(target_tok), frozenset(), by_surface=False)
    twins = source_vocab_map(source_tok, target_tok, len(source_tok), len(target_tok), frozenset())
    newline = target_tok.convert_tokens_to_ids("Ċ")
    source_newline = [i for p, i in source_tok.get_vocab().items() if detect_spec(source_tok).surface(p) == b"\n"]
    assert source_newline and all(twins.ids[i] == newline for i in source_newline)
    assert twins.ids[source_tok.eos_token_id] == target_tok.eos_token_id
    assert (twins.ids != plain.ids).any()

    target, source = D.ChunkEncoder(target_tok), D.ChunkEncoder(source_tok)
    differing = 0
    for chunk in chunks[:12]:
        b, s = target.encode(chunk), source.encode(chunk)
        _, _, b_end = b.byte_spans()
        _, _, s_end = s.byte_spans()
        for same_end in (True, False):
            rows = D.target_rows(b, s, oracle_rows(s), twins, len(target_tok), D.AlignOptions(same_end=same_end))
            # recover the source row each MAPPED row used from the oracle's top entry (the source's next token)
            mapped = np.flatnonzero(rows.status == MAPPED)
            ends_agree = np.isin(b_end[mapped], s_end)
            if same_end:
                assert ends_agree.all()
            else:
                differing += int((~ends_agree).sum())
    assert differing > 0  # mpt's pieces such as 'has▁' end after the space; the MinED match accepts them


def test_shared_vocabulary_skips_alignment(micro_models, chunks) -> None:
    target_tok = micro_models["gpt2-code"][1]
    source_tok = micro_models["llama-code"][1]
    assert D.shares_vocabulary(source_tok, target_tok)
    enc = D.ChunkEncoder(target_tok)
    b = enc.encode(chunks[0])
    rows = oracle_rows(b)
    out = D.target_rows(b, D.ChunkEncoder(source_tok).encode(chunks[0]), rows, None, 5, D.AlignOptions(),
                        shared_vocab=True)
    keep = rows.topk_ids < 5
    assert np.array_equal(out.ids[keep], rows.topk_ids[keep]) and (out.ids[~keep] == -1).all()
    assert set(out.status.tolist()) <= {MAPPED, EMPTY}


def test_q1_fallback_next_by_default_current_in_compat(micro_models, chunks) -> None:
    from fusers.common import source_vocab_map
    from fusers.fusellm import FuseLLM, effective_settings

    target_tok, source_tok = micro_models["gpt2-code"][1], micro_models["mpt-math"][1]
    vmap = source_vocab_map(source_tok, target_tok, len(source_tok), len(target_tok), frozenset())
    b, s = D.ChunkEncoder(target_tok).encode(chunks[1]), D.ChunkEncoder(source_tok).encode(chunks[1])
    results = {}
    for compat in ([], ["q1"]):
        options = effective_settings(FuseLLM.Config(reference_compat=compat))[2]
        rows = D.target_rows(b, s, oracle_rows(s), vmap, len(target_tok), options)
        fb = np.flatnonzero(rows.status == FALLBACK)
        assert len(fb) > 0
        results[options.fallback] = (rows, fb)
    rows, fb = results["next"]
    assert np.array_equal(rows.ids[fb, 0], b.ids[fb + 1]) and rows.status[-1] != FALLBACK
    rows, fb = results["current"]
    assert np.array_equal(rows.ids[fb, 0], b.ids[fb])


def test_q5_collisions_sum_by_default_keep_first_in_compat(micro_models) -> None:
    from fusers.fusellm import FuseLLM, effective_settings

    tok = micro_models["gpt2-code"][1]
    chunk = D.TextChunk(0, "print(x)", True)
    b = D.ChunkEncoder(tok).encode(chunk)
    s = D.ChunkEncoder(micro_models["llama-code"][1]).encode(chunk)  # same pieces, but aligned (no shortcut)
    rows = oracle_rows(s)
    rows.topk_ids[:, 1], rows.topk_ids[:, 2] = 50, 51
    rows.topk_logp[:, 0], rows.topk_logp[:, 1], rows.topk_logp[:, 2] = -0.5, -1.0, -2.0
    vmap_ids = np.arange(len(tok))
    vmap_ids[51] = 50  # source ids 50 and 51 both land on target id 50
    vmap = VocabMap(ids=vmap_ids, exact=np.ones(len(tok), bool), keys={})
    got = {}
    for compat in ([], ["q5"]):
        options = effective_settings(FuseLLM.Config(reference_compat=compat))[2]
        out = D.target_rows(b, s, rows, vmap, len(tok), options)
        got[options.collision] = out.logp[0, 1].astype(np.float64), list(out.ids[0])
    assert got["sum"][0] == pytest.approx(np.logaddexp(-1.0, -2.0), abs=1e-3) and got["sum"][1][2] == -1
    assert got["first"][0] == pytest.approx(-1.0, abs=1e-3)


# ------------------------------------------------------------------------------------------ stored vs online


def test_online_and_stored_candidates_build_the_same_batches(tmp_path, micro_models, chunks) -> None:
    from fusers.common import source_vocab_map

    model, tok = micro_models["gpt2-code"]
    target = D.ChunkEncoder(tok)
    k, width = 4, len(tok)
    src_model, src_tok = micro_models["neox-docs"]
    source = D.ChunkEncoder(src_tok)
    vmap = source_vocab_map(src_tok, tok, len(src_tok), width, frozenset())
    options = D.AlignOptions()
    t_store = D.ensure_teacher_store(tmp_path / "t0", chunks, target, lambda: model, k, shard_size=16)
    s_store = D.ensure_teacher_store(tmp_path / "t1", chunks, source, lambda: src_model, k, shard_size=16)
    a_store = D.ensure_aligned_store(tmp_path / "a1", chunks, target, source, s_store, vmap, width, options,
                                     shared_vocab=False)
    stored = D.StreamCandidates.from_stores(["t", "s"], [t_store, a_store])
    ids = [target.ids(c) for c in chunks]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    online = D.OnlineCandidates([D.OnlineTeacher("t", model, target), D.OnlineTeacher("s", src_model, source, vmap,
                                                                                      False)],
                                chunks, offsets, k, width, options, cache_chunks=4)
    stream = np.concatenate(ids)
    assert np.array_equal(stream, t_store.rows("tokens")[:])
    for granularity in ("sequence", "token", "block"):
        corpora = [D.FusionCorpus(stream, c, seq_len=32, fusion="avg_ce", granularity=granularity)
                   for c in (stored, online)]
        for indices in ([0, 3], [len(corpora[0]) - 1, 1]):
            x, y = (c.collate(indices) for c in corpora)
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["fuse_ids"], y["fuse_ids"])
            # equal up to float16 storage: a forward pass batched differently (shards of 16 chunks vs an online
            # cache of 4) can round a teacher log-prob to the neighbouring float16 value (~1e-3 relative)
            torch.testing.assert_close(x["fuse_probs"], y["fuse_probs"], atol=2e-3, rtol=2e-3)
    status = a_store.rows("status")[:]
    assert (status == MAPPED).mean() > 0.2


def test_step_batches_cover_every_block_per_epoch() -> None:
    sampler = D.StepBatches(10, 4, 5, seed=3)
    batches = list(sampler)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10))  # first epoch
    assert batches == list(D.StepBatches(10, 4, 5, seed=3)) != list(D.StepBatches(10, 4, 5, seed=4))


# ------------------------------------------------------------------------------------------ DDP vs 1 process


def synthetic_corpus(seed: int = 0, n_rows: int = 16 * 8, vocab: int = 48, C: int = 2, k: int = 3,
                     masked: bool = False) -> D.FusionCorpus:
    """A packed stream with random candidates, the same in every process that builds it with ``seed``;
    ``masked``: with a random loss mask (so the blocks of a batch count different numbers of rows)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 20, size=n_rows)
    chunk_of_row = np.repeat(np.arange(len(lengths)), lengths)[:n_rows]
    n_chunks = int(chunk_of_row.max()) + 1
    columns, sums = [], []
    for _ in range(C):
        logits = rng.normal(size=(n_rows, vocab))
        ids = np.argsort(-logits, axis=1)[:, :k].astype(np.int32)
        logp = np.take_along_axis(logits - np.log(np.exp(logits).sum(1, keepdims=True)), ids, 1).astype(np.float16)
        columns.append({"ids": ids, "logp": logp, "status": np.full(n_rows, MAPPED, np.int8),
                        "token_ce": rng.uniform(0.1, 5, n_rows).astype(np.float16),
                        "token_bytes": rng.integers(1, 5, n_rows).astype(np.uint16)})
        sums.append({"nats": rng.uniform(1, 50, n_chunks), "n_tokens": rng.integers(5, 20, n_chunks),
                     "n_bytes": rng.integers(10, 60, n_chunks)})
    candidates = D.StreamCandidates(["a", "b"], columns, sums, chunk_of_row)
    tokens = rng.integers(0, vocab, n_rows)
    mask = rng.random(n_rows) < rng.uniform(0.1, 0.9, n_rows // 16).repeat(16) if masked else None
    return D.FusionCorpus(tokens, candidates, seq_len=16, fusion="avg_ce_softmax", granularity="token",
                          loss_mask=mask)


def ddp_run(out_file: str, steps: int = 4) -> None:
    """Train a tiny Llama on :func:`synthetic_corpus`, without and with a loss mask, under accelerate and save
    its parameters (main process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.train import TrainConfig

    cfg = TrainConfig(steps=steps, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=1, seed=0)
    acc = D.make_accelerator()
    runs = {}
    for masked in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                             tie_word_embeddings=False))
        model, stats = D.train_with_accelerate(model, synthetic_corpus(masked=masked), cfg,
                                               D.fusion_loss(0.5, D.mean_across_processes(acc)), accelerator=acc,
                                               progress=None)
        runs["masked" if masked else "plain"] = {
            "params": {n: p.detach().clone() for n, p in acc.unwrap_model(model).named_parameters()},
            "clm": stats.extras["clm"], "fuse": stats.extras["fuse"]}
    if acc.is_main_process:
        torch.save({**runs, "processes": acc.num_processes}, out_file)
    acc.wait_for_everyone()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path) -> None:
    """gloo DDP with 2 processes × 2 blocks per step ends where 1 process × 4 blocks per step does, also with a
    loss mask that counts different numbers of rows in the two processes' blocks."""
    port, cpus = _free_port(), sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO), "FUSEBENCH_DDP_CPU": str(cpus[rank % len(cpus)])}
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path / "ddp.pt")], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    with one_core():
        ddp_run(str(tmp_path / "single.pt"))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert one["processes"] == 1 and two["processes"] == 2
    for kind in ("plain", "masked"):
        single, ddp = one[kind], two[kind]
        assert single["clm"] == pytest.approx(ddp["clm"], rel=1e-4), kind
        assert single["fuse"] == pytest.approx(ddp["fuse"], rel=1e-4), kind
        moved = 0.0
        for name, p in single["params"].items():
            assert torch.allclose(p, ddp["params"][name], atol=2e-5, rtol=1e-4), (kind, name)
            moved = max(moved, float((p - ddp["params"][name]).abs().max()))
        assert moved < 2e-5, kind


if __name__ == "__main__":  # a DDP worker of test_two_process_ddp_matches_one_process
    if hasattr(os, "sched_setaffinity") and os.environ.get("FUSEBENCH_DDP_CPU"):
        os.sched_setaffinity(0, {int(os.environ["FUSEBENCH_DDP_CPU"])})
    torch.set_num_threads(1)
    ddp_run(sys.argv[1])


# ------------------------------------------------------------------------------------------ response-only loss


def test_loss_mask_averages_both_terms_over_the_counted_rows_only() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    ids = torch.randint(0, 40, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 2:6] = True
    mask[1, 7:] = True  # row 8 (the block's last) only counts in the fusion term: it predicts outside the block
    batch = {"input_ids": ids, "fuse_ids": torch.randint(0, 40, (2, 9, 3)),
             "fuse_probs": torch.softmax(torch.randn(2, 9, 3), -1), "loss_mask": mask}
    logp = torch.log_softmax(model(input_ids=ids).logits, -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected_clm = nll[mask[:, :-1]].mean()
    expected_fuse = D.sparse_soft_ce(logp, batch["fuse_ids"], batch["fuse_probs"])[mask].mean()
    loss, logs = D.fusion_loss(0.7)(model, batch)
    assert logs["clm"] == pytest.approx(expected_clm.item(), rel=1e-5)
    assert logs["fuse"] == pytest.approx(expected_fuse.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.7 * expected_clm.item() + 0.3 * expected_fuse.item(), rel=1e-5)
    # an all-true mask is the unmasked loss
    full = dict(batch, loss_mask=torch.ones(2, 9, dtype=torch.bool))
    plain = {k: v for k, v in batch.items() if k != "loss_mask"}
    assert D.fusion_loss(0.7)(model, full)[0].item() == pytest.approx(D.fusion_loss(0.7)(model, plain)[0].item(), rel=1e-6)


def test_rows_predicting_marks_rows_whose_next_token_is_in_a_span(micro_models) -> None:
    tokenizer = micro_models["gpt2-code"][1]
    text = "User: add 2 and 3\nAssistant: 2 + 3 = 5\n"
    start = text.index("2 + 3")
    spans = D.text_byte_spans(text, [(start, len(text) - 1)])
    tz = D.ChunkEncoder(tokenizer).encode(D.TextChunk(0, text, True))  # EOS first
    rows = D.rows_predicting(tz, spans)
    _, starts, ends = tz.byte_spans()
    predicted = [text.encode()[starts[t + 1]:ends[t + 1]] for t in np.flatnonzero(rows)]
    assert b"".join(predicted).strip() == b"2 + 3 = 5"
    assert not rows[-1] and rows.sum() == len(predicted)
    # non-ASCII text: character spans become byte spans
    assert D.text_byte_spans("é=1", [(1, 3)]).tolist() == [[2, 4]]


def test_masked_sums_restrict_the_sequence_ce_to_the_masked_rows(tmp_path, micro_models, chunks) -> None:
    model, tokenizer = micro_models["gpt2-code"]
    enc = D.ChunkEncoder(tokenizer)
    store = D.ensure_teacher_store(tmp_path / "t", chunks[:5], enc, lambda: model, 3, shard_size=2)
    offsets = store.item_offsets()
    masks = [np.arange(int(offsets[i + 1] - offsets[i])) % 2 == 0 for i in range(5)]
    sums = D.masked_sums(store, masks)
    ce, nbytes = store.rows("token_ce")[:].astype(np.float64), store.rows("token_bytes")[:].astype(np.float64)
    for i, m in enumerate(masks):
        a, b = int(offsets[i]), int(offsets[i + 1])
        keep = m & ~np.isnan(ce[a:b])
        assert sums["nats"][i] == pytest.approx(ce[a:b][keep].sum())
        assert sums["n_tokens"][i] == keep.sum() and sums["n_bytes"][i] == nbytes[a:b][keep].sum()
    everything = D.masked_sums(store, [np.ones(int(offsets[i + 1] - offsets[i]), bool) for i in range(5)])
    assert np.allclose(everything["nats"], store.sums("nats"), rtol=2e-3)  # float16 rows vs float64 sums
    assert np.array_equal(everything["n_bytes"], store.sums("n_bytes"))
    with pytest.raises(ValueError, match="row masks"):
        D.masked_sums(store, masks[:2])


def test_fusion_corpus_carries_the_loss_mask_per_block() -> None:
    corpus = synthetic_corpus()
    mask = np.arange(len(corpus.input_ids)) % 3 == 0
    masked = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=16, loss_mask=mask)
    batch = masked.collate([1, 0])
    assert batch["loss_mask"].tolist() == [mask[16:32].tolist(), mask[0:16].tolist()]
    assert "loss_mask" not in corpus.collate([0])
    with pytest.raises(ValueError, match="loss_mask"):
        D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=16, loss_mask=mask[:-1])


def test_scheduled_corpus_draws_each_step_from_its_planned_part() -> None:
    a, b = synthetic_corpus(seed=0), synthetic_corpus(seed=1)
    b.input_ids = b.input_ids + 1000  # tell the parts apart by their tokens
    scheduled = D.ScheduledCorpus({"inference": a, "training": b}, ["inference", "inference", "training", "inference"])
    assert len(scheduled) == len(a) + len(b)
    batches = list(scheduled.batches(batch_size=2, seed=0))
    assert len(batches) == 4 and all(len(x) == 2 for x in batches)
    for part, batch in zip(scheduled.plan, batches, strict=True):
        ids = scheduled.collate(batch)["input_ids"]
        assert bool((ids >= 1000).all()) == (part == "training") and bool((ids < 1000).all()) == (part == "inference")
    # a part's blocks cycle through whole epochs before repeating
    inference_blocks = [i for part, batch in zip(scheduled.plan, batches, strict=True) if part == "inference"
                        for i in batch]
    assert len(set(inference_blocks)) == len(inference_blocks) == 6 <= len(a)
    with pytest.raises(ValueError, match="mixes"):
        scheduled.collate([0, len(a)])
    with pytest.raises(ValueError, match="do not exist"):
        D.ScheduledCorpus({"training": b}, ["inference"])


def test_a_corpus_over_part_of_the_stream() -> None:
    corpus = synthetic_corpus()
    half = len(corpus.input_ids) // 2
    second = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=16, rows=(half, len(corpus.input_ids)))
    assert len(second) == (len(corpus.input_ids) - half) // 16
    assert second.collate([0])["input_ids"].tolist() == [corpus.input_ids[half:half + 16].tolist()]


def test_one_item_per_sequence_never_mixes_two_chunks() -> None:
    """Chat fusion's layout: each sequence is exactly one chunk of the stream, right-padded; padding has no
    attention, no loss and no fused target; the candidates' rows are the chunk's own rows."""
    corpus = synthetic_corpus()
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(corpus.candidates.chunk_of_row)) + 1,
                              [len(corpus.input_ids)]])
    mask = np.arange(len(corpus.input_ids)) % 3 != 0
    per_item = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=20, loss_mask=mask, items=offsets,
                              pad_id=-7, granularity="token", fusion="avg_ce_softmax")
    assert len(per_item) == len(offsets) - 1
    order = [3, 0, 5]
    batch = per_item.collate(order)
    width = max(int(offsets[i + 1] - offsets[i]) for i in order)
    assert batch["input_ids"].shape == (3, width)
    packed = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=1, loss_mask=mask, granularity="token",
                            fusion="avg_ce_softmax")
    for r, i in enumerate(order):
        a, b = int(offsets[i]), int(offsets[i + 1])
        n = b - a
        assert batch["input_ids"][r, :n].tolist() == corpus.input_ids[a:b].tolist()
        assert (batch["input_ids"][r, n:] == -7).all()
        assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (width - n)
        assert batch["loss_mask"][r].tolist() == mask[a:b].tolist() + [False] * (width - n)
        assert float(batch["fuse_probs"][r, n:].abs().sum()) == 0.0
        # the fused targets of the real rows are the chunk's own, row by row (as one-row packed blocks)
        rows = packed.collate(list(range(a, b)))
        assert torch.allclose(batch["fuse_probs"][r, :n], rows["fuse_probs"][:, 0])
        assert torch.equal(batch["fuse_ids"][r, :n], rows["fuse_ids"][:, 0])
    with pytest.raises(ValueError, match="longer than seq_len"):
        D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=4, items=offsets)
    # restricted to part of the stream: only the chunks wholly inside it
    half = int(offsets[len(offsets) // 2])
    second = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=20, items=offsets, rows=(half, len(corpus.input_ids)))
    assert len(second) == len(offsets) - 1 - len(offsets) // 2 and second.span(0) == (half, int(offsets[len(offsets) // 2 + 1]))


def test_padding_changes_nothing_for_the_real_tokens() -> None:
    """Right padding under the attention mask leaves each conversation's logits as they are alone, and the
    loss of a padded batch is finite (padded rows are masked out of both terms)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    corpus = synthetic_corpus()
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(corpus.candidates.chunk_of_row)) + 1,
                              [len(corpus.input_ids)]])
    per_item = D.FusionCorpus(corpus.input_ids, corpus.candidates, seq_len=20, items=offsets, granularity="token")
    pair = per_item.collate([0, 1])
    assert pair["attention_mask"].sum() < pair["attention_mask"].numel()  # one of the two is padded
    with torch.no_grad():
        logits = model(input_ids=pair["input_ids"], attention_mask=pair["attention_mask"]).logits
        for r in (0, 1):
            alone = per_item.collate([r])
            n = alone["input_ids"].shape[1]
            assert torch.allclose(logits[r, :n], model(input_ids=alone["input_ids"]).logits[0], atol=1e-5)
        loss, logged = D.fusion_loss(0.5)(model, pair)
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in logged.values())


def test_default_lr_is_the_papers_for_real_checkpoints_and_the_zoos_for_its_own_members() -> None:
    from fusers.common import default_lr
    from harness.model import ModelRef

    assert default_lr(ModelRef("zoo:gpt2-code", "zoo"), paper=5e-6, zoo=5e-4) == 5e-4
    assert default_lr(ModelRef("zoo:smollm2-135m", "zoo"), paper=5e-6, zoo=5e-4) == 5e-6  # a real checkpoint
    assert default_lr(ModelRef("/ckpt/hf", "local", Path("/ckpt/hf")), paper=1e-5, zoo=1e-3) == 1e-5
    assert default_lr(ModelRef("org/model", "hub"), paper=1e-5, zoo=1e-3) == 1e-5


def test_teacher_store_key_holds_the_precision_a_teacher_runs_in(zoo_home) -> None:
    """A bfloat16 teacher pass is never read by a float32 run; float32 on a CPU keeps the key stores had before."""
    from harness.model import placement, resolve

    ref = resolve("zoo:llama-base")
    legacy = D.store_key("teacher", ref.content_hash(), "corpus", 10)
    assert D.teacher_store_key(ref, "corpus", 10) == legacy
    with placement(dtype="bfloat16", device="cpu"):
        assert D.teacher_store_key(ref, "corpus", 10) != legacy
        assert D.teacher_store_key(ref, "corpus", 10, dtype="float32") == legacy  # a model loaded for training
    with placement(per_model={"zoo:llama-base": {"dtype": "float16"}}):
        assert D.teacher_store_key(ref, "corpus", 10) != legacy

"""FuseLLM's fused store (``teacher_mode=fused``, :mod:`fusers.distill.fused_store`) on the micro zoo.

The fused store keeps only the fused row per target token; these tests check that training reads the same targets
from it as from the stored teacher and aligned stores (exactly up to float rounding with float32 log-probs, within
the uint8 quantisation's bound otherwise), that a fused run writes no other store, resumes per shard, is computed
ahead by `bench teachers` (over jobs) and reused by `bench run`, and what it refuses.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils

from fusers import distill as D
from fusers.fusellm import FuseLLM, _Run
from tests.conftest import bench
from tests.fusers.test_distill import store_files
from tests.fusers.test_fusellm import TINY

#: The uint8 codes' bound on a renormalised probability's relative error (module docstring of fused_store).
UINT8_RELATIVE = math.exp(1 / 16) - 1
#: Entries below e^-15.875 are clipped up to it: at most this much absolute error per entry.
UINT8_CLIPPED = math.exp(-(254 + 0.5) / 16)


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


@pytest.fixture
def home(private_home: Path) -> Path:
    return private_home


def renormalised(logq: np.ndarray) -> np.ndarray:
    """What a training batch makes of decoded log-probs: their softmax over the row (no entry: probability 0)."""
    import torch

    return torch.softmax(torch.from_numpy(logq), dim=-1).nan_to_num(0.0).numpy()


def test_log_prob_codes_round_trip_within_their_bounds() -> None:
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.dirichlet(np.full(10, alpha), size=2000) for alpha in (0.05, 0.3, 1.0, 5.0)])
    probs[::7, -3:] = 0.0  # rows with padding (fewer entries than k)
    probs /= probs.sum(axis=1, keepdims=True)
    codes = D.encode_logp(probs, "uint8")
    assert codes.dtype == np.uint8 and (codes[probs == 0] == 255).all() and (codes[probs > 0] < 255).all()
    decoded = renormalised(D.decode_logp(codes, "uint8"))
    assert (decoded[probs == 0] == 0).all()
    error = np.abs(decoded - probs)
    assert (error <= UINT8_RELATIVE * probs + 10 * UINT8_CLIPPED).all(), (error / np.maximum(probs, 1e-30)).max()
    kept = probs > math.exp(-15)
    assert (error[kept] / probs[kept]).max() > 0.01  # the bound is not vacuous: quantisation does move them
    as_float32 = D.encode_logp(probs, "float32")
    assert as_float32.dtype == np.float32
    np.testing.assert_allclose(renormalised(D.decode_logp(as_float32, "float32")), probs, rtol=1e-5, atol=1e-7)
    as_float16 = D.encode_logp(probs, "float16")  # float16 log-probs, as the teacher stores keep them
    assert as_float16.dtype == np.float16
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    finite = probs > 0
    error16 = np.abs(D.decode_logp(as_float16, "float16")[finite] - logp[finite])
    assert (error16 <= np.abs(logp[finite]) * 2**-11 + 2**-25).all()  # half an ulp (2^-25 for subnormals near 0)


def test_block_granularity_is_refused_for_the_fused_store(home: Path, capsys) -> None:
    for bad in ({"granularity": "block"}, {"reference_compat": ["q6"]}, {"reference_compat": "all"}):
        with pytest.raises(ValueError, match="teacher_mode=fused stores the fusion per chunk"):
            FuseLLM.Config(teacher_mode="fused", **bad)
    with pytest.raises(ValueError, match="granularity 'block' cannot be stored"):
        D.FusedSettings("min_ce", "block")
    assert bench("teachers", "--fuser", "fusellm", "--set", "teacher_mode=fused", "--set", "granularity=block") == 2
    err = capsys.readouterr().err
    assert "teacher_mode=fused stores the fusion per chunk" in err and "granularity=sequence or token" in err
    assert not (home / "cache" / "distill").exists()
    # fused_logp is part of a run's config (its fuse hash) only in fused mode: the other modes' hashes are unchanged
    assert "fused_logp" not in FuseLLM.Config().model_dump(mode="json")
    assert FuseLLM.Config(teacher_mode="fused").model_dump(mode="json")["fused_logp"] == "uint8"


def batches_of_both_modes(cfg: FuseLLM.Config, home: Path, out: Path):
    """The fused store built from the resident teachers (no store yet), then the stored mode's stores; the same
    blocks collated both ways (as training batches), and the run for more."""
    from harness.api import FuseContext
    from harness.model import load_hf, resolve

    sources = [resolve(s) for s in FuseLLM.default_sources]
    run = _Run(cfg, sources, sources[0], FuseContext(out_dir=out))
    model, tokenizer = load_hf(run.pivot, dtype="float32")
    run._corpus(model, tokenizer)
    fused = run._fused(model, D.ShardSplit())
    assert sorted(p.name for p in (home / "cache" / "distill").iterdir()) == ["fused"]  # no teacher/aligned store
    assert [o for o in run.origins] == [{"computed": fused.store.n_shards}] * 3
    candidates, input_ids, _ = run._read(run._stores(model, D.ShardSplit()))
    stored = D.FusionCorpus(input_ids, candidates, seq_len=cfg.seq_len, fusion=cfg.fusion,
                            granularity=run.granularity, temperature=cfg.temperature, tau=cfg.tau,
                            per_token=run.per_token)
    from_fused = D.fused_corpus(fused.store, cfg.seq_len)
    blocks = list(range(len(stored)))
    assert len(from_fused) == len(stored) > 10
    return run, model, fused, stored, stored.collate(blocks), from_fused.collate(blocks)


@pytest.mark.parametrize(("fusion", "granularity", "temperature", "logp"), [
    ("min_ce", "sequence", 1.0, "uint8"),
    ("avg_ce", "token", 2.0, "float32"),
    ("avg_ce_softmax", "token", 0.5, "uint8"),
])
def test_fused_store_gives_the_stored_modes_training_targets(home: Path, tmp_path: Path, fusion: str,
                                                             granularity: str, temperature: float, logp: str) -> None:
    cfg = FuseLLM.Config(**TINY, teacher_mode="fused", fusion=fusion, granularity=granularity,
                         temperature=temperature, tau=0.3, fused_logp=logp)
    run, model, fused, stored, want, got = batches_of_both_modes(cfg, home, tmp_path)
    entries = cfg.top_k if fusion == "min_ce" else 3 * cfg.top_k
    assert got["fuse_ids"].shape == want["fuse_ids"].shape == (*want["input_ids"].shape, entries)
    assert (got["input_ids"] == want["input_ids"]).all() and (got["fuse_ids"] == want["fuse_ids"]).all()
    p, q = want["fuse_probs"].double().numpy(), got["fuse_probs"].double().numpy()
    assert np.allclose(q.sum(-1), 1.0, atol=1e-5) and np.allclose(p.sum(-1), 1.0, atol=1e-5)
    if logp == "float32":
        np.testing.assert_allclose(q, p, rtol=1e-5, atol=1e-7)
    else:
        error = np.abs(q - p)
        assert (error <= UINT8_RELATIVE * p + entries * UINT8_CLIPPED).all()
        assert error.max() > 0
    # who won, recorded at build time, over the same rows as the stored corpus's batches (every block once, plus
    # the rows past the last whole block, which the fused store fuses too)
    weights, status = D.fused_shares(fused.store)
    assert weights.sum() == pytest.approx(len(stored.input_ids), rel=1e-6)
    assert weights == pytest.approx(stored.selected, abs=len(stored.input_ids) - len(stored) * cfg.seq_len + 1e-3)
    assert (status.sum(axis=1) == len(stored.input_ids)).all() and status[0, 0] == len(stored.input_ids)
    assert fused.store.layout["entries"] == entries and fused.store.layout["ids"] == "uint16"
    per_token = 2 + entries * (2 + (1 if logp == "uint8" else 4))
    assert fused.store.nbytes(["tokens", "ids", "logq"]) == pytest.approx(len(stored.input_ids) * per_token, rel=0.05)

    # built again from the stored mode's stores (now there), it is the same store, byte for byte
    before = store_files(fused.store.root)
    shutil.rmtree(fused.store.root)
    again = run._fused(model, D.ShardSplit())
    assert run.origins[0] == {"teacher store": again.store.n_shards}
    assert run.origins[1] == run.origins[2] == {"aligned store": again.store.n_shards}
    assert store_files(again.store.root) == before


#: TINY with a corpus of 252 chunks: two shards of 128, so that two jobs both have work.
TWO_SHARDS = [x for key, value in {**TINY, "corpus_chars": 16_000}.items() for x in ("--set", f"fuser.{key}={value}")]
FUSED = ["--set", "fuser.teacher_mode=fused"]
SMALL_EVAL = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=200"]


def test_bench_teachers_computes_the_fused_store_over_jobs_resumes_it_and_bench_run_reuses_it(
        home: Path, tmp_path: Path, capsys) -> None:
    for job in ("0/2", "1/2"):
        assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, *FUSED, "--shard", job) == 0, \
            capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "job 0/2 done: 1 of 2 shards present" in out and "all 1 stores complete (2 shards)" in out
    distill = home / "cache" / "distill"
    assert sorted(p.name for p in distill.iterdir()) == ["fused"]
    (root,) = (distill / "fused").iterdir()
    complete = store_files(root)
    # a shard lost (a job killed before it finished it) is computed again, alone, and comes out the same
    shutil.rmtree(root / "shard-00001")
    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, *FUSED) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("fused ")]
    assert row[-4:-2] == ["2/2", "1"] and store_files(root) == complete

    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", "fusellm", *TWO_SHARDS, *FUSED, *SMALL_EVAL, "--db", str(db)) == 0, \
        capsys.readouterr().err[-2000:]
    (fused,) = sqlite_utils.Database(db).query("select m.details from run_models rm join models m on m.id = rm.model_id "
                                               "where rm.role = 'fused'")
    details = json.loads(fused["details"])
    assert [(s["kind"], s["shards"], s["computed"], s["key"]) for s in details["stores"]] == [("fused", 2, 0, root.name)]
    assert sorted(p.name for p in distill.iterdir()) == ["fused"] and store_files(root) == complete
    assert sum(details["candidate_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(details["loss_curves"]["fuse"]) == TINY["steps"] and "fused" in details["timings"]
    target, *sources = details["candidates"]
    # 2 + 3·k bytes per token (input id, k uint16 ids and k uint8 log-probs), plus what matters only for a corpus
    # this small: 56 B per chunk (its row count, candidate weights and status counts) and six 128-byte .npy
    # headers per shard
    corpus = details["corpus"]
    fixed = corpus["chunks"] * 56 + 2 * 6 * 128
    assert target["fused"] and 2 + 3 * TINY["top_k"] < target["fused_bytes_per_token"] <= (
        2 + 3 * TINY["top_k"] + fixed / corpus["target_tokens"] + 0.01)
    assert all(0 < s["mapped"] <= 1 and s["rows_from"] == {} for s in sources)  # nothing built: the store was there


def test_bench_teachers_in_two_processes_writes_the_fused_store_of_one(home: Path, capsys) -> None:
    """`bench teachers --processes 2` (accelerate launch, gloo on CPU): each process fuses one of the two shards, and
    the store is byte for byte the one process's."""
    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, *FUSED) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    distill = home / "cache" / "distill"
    one = store_files(distill)
    shutil.rmtree(distill)
    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, *FUSED, "--processes", "2") == 0, \
        capsys.readouterr().err[-3000:]
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("fused ")]
    assert row[-4:-2] == ["2/2", "2"]  # both shards computed, one per process
    assert store_files(distill) == one

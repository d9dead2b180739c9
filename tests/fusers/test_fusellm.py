"""FuseLLM end to end on the micro zoo: `bench run --fuser fusellm`, config checks, quirks Q11/Q12 through the fuser.

Runs are tiny (a few thousand characters of corpus, a few steps): they check the plumbing and what is
recorded, not that fusion helps (that is measured on the default zoo, see the fuser's docstring).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlite_utils

from fusers.common import source_vocab_map
from fusers.fusellm import FuseLLM, effective_settings
from harness.errors import BenchError
from tests.conftest import bench

TINY = {"steps": 3, "batch_size": 2, "seq_len": 48, "corpus_chars": 4_000, "top_k": 4, "warmup_steps": 1}


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


@pytest.fixture
def home(private_home: Path) -> Path:
    return private_home


def test_config_defaults_and_validation() -> None:
    cfg = FuseLLM.Config()
    assert (cfg.top_k, cfg.lam, cfg.fusion, cfg.granularity, cfg.teacher_mode) == (10, 0.9, "min_ce", "sequence", "stored")
    assert cfg.corpus_domains == ["code", "docs", "math"] and cfg.compat == frozenset()
    assert FuseLLM.Config(reference_compat="all").compat == {"q1", "q5", "q6", "q9", "q11", "q12", "q13"}
    assert FuseLLM.Config(reference_compat="q6").compat == {"q6"}
    for bad in ({"reference_compat": ["q7"]}, {"corpus_domains": ["poetry"]}, {"fusion": "max_ce"},
                {"warmup_steps": 50, "steps": 10}, {"learning_rate": 1e-3}):
        with pytest.raises(ValueError):
            FuseLLM.Config(**bad)
    assert FuseLLM.default_target in FuseLLM.default_sources and FuseLLM.name == "fusellm"
    import fusers.fusellm

    assert "bench run --fuser fusellm" in fusers.fusellm.__doc__


def test_effective_settings_follow_reference_compat() -> None:
    granularity, per_token, options = effective_settings(FuseLLM.Config(granularity="token"))
    assert (granularity, per_token, options.fallback, options.collision, options.match) == (
        "token", False, "next", "sum", "surface")
    granularity, per_token, options = effective_settings(FuseLLM.Config(granularity="token", reference_compat="all"))
    assert (granularity, per_token, options.fallback, options.collision, options.match, options.one_to_many) == (
        "block", True, "current", "first", "reference", "fallback")


def test_bench_run_fusellm_scores_fused_target_and_sources(home: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "bench.db"
    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    code = bench("run", "--fuser", "fusellm", "--db", str(db), *sets,
                 "--set", "perplexity.max_docs=4", "--set", "perplexity.max_chars_per_doc=400")
    assert code == 0, capsys.readouterr().err[-2000:]
    database = sqlite_utils.Database(db)
    (run,) = database.query("select * from runs")
    assert run["status"] == "ok" and run["fuser"] == "fusellm"
    roles = list(database.query("select m.name, m.details, rm.role from run_models rm join models m "
                                "on m.id = rm.model_id order by position"))
    assert [r["role"] for r in roles] == ["fused", "target", "source", "source"]
    assert {r["name"] for r in roles[1:]} == set(FuseLLM.default_sources)
    scored = {r["model_id"] for r in database.query("select model_id from scores where metric = 'bits_per_byte'")}
    assert len(scored) == 4
    curves = {r["name"]: r["n"] for r in database.query("select name, count(*) as n from train_log group by name")}
    assert curves["total"] == curves["clm"] == curves["fuse"] == TINY["steps"]
    details = json.loads(roles[0]["details"])
    curves = details["loss_curves"]
    assert len(curves["total"]) == len(curves["clm"]) == len(curves["fuse"]) == TINY["steps"]
    assert details["candidates"][0]["name"] == "zoo:gpt2-code" and len(details["candidates"]) == 3
    # 6·k bytes per token (ids + log-probs) + 8 of per-token metadata, plus fixed costs that only matter for a
    # corpus this small: 32 B of sums per chunk and nine 128-byte .npy headers per shard of 128 chunks
    chunks = details["corpus"]["chunks"]
    fixed = chunks * 32 + -(-chunks // 128) * 9 * 128
    for c in details["candidates"]:
        assert 0 < c["teacher_bytes_per_token"] <= 6 * TINY["top_k"] + 8 + fixed / c["teacher_tokens"] + 0.01, c
    assert sum(details["candidate_share"].values()) == pytest.approx(1.0, abs=1e-3)
    (fused_dir,) = [p for p in (home / "artifacts").iterdir() if p.is_dir()]
    assert (fused_dir / "config.json").is_file() and (fused_dir / "tokenizer.json").is_file()
    # the teacher and alignment stages were cached by content: 3 teachers, 2 aligned sources
    assert len(list((home / "cache" / "distill" / "teachers").iterdir())) == 3
    assert len(list((home / "cache" / "distill" / "aligned").iterdir())) == 2


def test_online_reference_mode_with_dtw_runs(home: Path, tmp_path: Path) -> None:
    from harness.api import FuseContext
    from harness.model import resolve

    out = tmp_path / "out"
    out.mkdir()
    cfg = FuseLLM.Config(**TINY, teacher_mode="online", align="dtw_ed", fusion="avg_ce", reference_compat="all")
    sources = [resolve(s) for s in ("zoo:gpt2-code", "zoo:mpt-math")]
    result = FuseLLM().fuse(sources, sources[0], cfg, FuseContext(out_dir=out))
    assert result.path == out and (out / "model.safetensors").is_file()
    assert result.details["effective"]["granularity"] == "block" and result.details["effective"]["ce_per"] == "token"
    assert not (home / "cache" / "distill").exists()  # online: nothing stored


def padded_copy(ref_spec: str, extra: int, path: Path) -> Path:
    """The micro member with ``extra`` unused output rows (config.vocab_size > tokenizer size, like Qwen1.5)."""
    from harness.model import load_hf, resolve

    model, tok = load_hf(resolve(ref_spec))
    model.resize_token_embeddings(len(tok) + extra)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_q11_model_width_by_default_tokenizer_width_fails_in_compat(home: Path, tmp_path: Path) -> None:
    from harness.api import FuseContext
    from harness.model import resolve

    target = resolve(str(padded_copy("zoo:gpt2-code", 8, tmp_path / "padded")))
    sources = [target, resolve("zoo:neox-docs")]
    out = tmp_path / "out"
    out.mkdir()
    result = FuseLLM().fuse(sources, target, FuseLLM.Config(**TINY), FuseContext(out_dir=out))
    assert result.details["effective"]["width"] == json.loads((tmp_path / "padded" / "config.json").read_text())[
        "vocab_size"]
    with pytest.raises(RuntimeError, match=r"shape '\[-1, \d+\]' is invalid"):
        FuseLLM().fuse(sources, target, FuseLLM.Config(**TINY, reference_compat=["q11"]), FuseContext(out_dir=out))


def test_q12_string_keyed_map_gives_the_same_ids(home: Path) -> None:
    from fusers.common import load_tokenizer
    from harness.model import resolve

    target = load_tokenizer(resolve("zoo:gpt2-code"))
    for name in ("zoo:neox-docs", "zoo:mpt-math"):
        source = load_tokenizer(resolve(name))
        default = source_vocab_map(source, target, len(source), len(target), frozenset())
        compat = source_vocab_map(source, target, len(source), len(target), frozenset({"q12"}))
        assert default.by_string is None and isinstance(compat.by_string, dict) and compat.by_string
        assert (default.ids == compat.ids).all()


def test_missing_sources_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="needs sources"):
        FuseLLM().fuse([], None, FuseLLM.Config(), None)  # type: ignore[arg-type]


def test_bench_run_in_2_processes_ddp_and_fsdp_match_one_process(home: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """`bench run --processes 2` trains under accelerate launch (DDP, gloo on CPU), and `--accelerate-config` with
    an FSDP2 config shards the model over the 2 processes: both give the 1-process model, saved as an ordinary HF
    folder. accelerate runs FSDP only on accelerators, so the FSDP run lifts that gate for CPU processes
    (tests/fusers/sharded_on_cpu/sitecustomize.py) and checks that FSDP2 really ran."""
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    common = ["run", "--fuser", "fusellm", *sets, "--suite", "perplexity", "--set", "perplexity.max_docs=2",
              "--set", "perplexity.max_chars_per_doc=200"]
    one, one_details = fuse_and_forget(home, tmp_path / "one.db", common, capsys)
    ddp, ddp_details = fuse_and_forget(home, tmp_path / "two.db", [*common, "--processes", "2"], capsys)
    config = sharded_on_cpu(monkeypatch, "fsdp")
    fsdp, fsdp_details = fuse_and_forget(home, tmp_path / "fsdp.db", [*common, "--accelerate-config", config], capsys)

    assert one_details["distributed"] == {"type": "NO", "processes": 1, "mixed_precision": "no", "requested": None}
    assert ddp_details["distributed"]["type"] == "MULTI_CPU" and ddp_details["distributed"]["processes"] == 2
    assert fsdp_details["distributed"] == {"type": "FSDP", "processes": 2, "mixed_precision": "no",
                                           "requested": "FSDP", "fsdp_version": 2}
    assert_same_weights(one, ddp, "ddp")
    assert_same_weights(one, fsdp, "fsdp")
    database = sqlite_utils.Database(tmp_path / "fsdp.db")
    (run,) = database.query("select config, status, run_hash from runs")
    recorded = json.loads(run["config"])
    assert run["status"] == "ok" and recorded["accelerate"] == str(Path(config).resolve())
    assert recorded["accelerate_sha256"] == hashlib.sha256(Path(config).read_bytes()).hexdigest()
    (two_run,) = sqlite_utils.Database(tmp_path / "two.db").query("select config, run_hash from runs")
    assert json.loads(two_run["config"])["processes"] == 2
    (one_run,) = sqlite_utils.Database(tmp_path / "one.db").query("select run_hash from runs")
    assert one_run["run_hash"] == two_run["run_hash"] == run["run_hash"]  # how a run executes is not hashed


def test_bench_run_under_deepspeed_zero2_and_zero3_matches_one_process(home: Path, tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    """`--accelerate-config` with DeepSpeed ZeRO-2 and ZeRO-3 configs (2 CPU processes; accelerate's CPU gate lifted
    as for FSDP): DeepSpeed's engine trains, and the gathered full weights are the 1-process model's."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    common = ["run", "--fuser", "fusellm", *sets, "--suite", "perplexity", "--set", "perplexity.max_docs=2",
              "--set", "perplexity.max_chars_per_doc=200"]
    one, _ = fuse_and_forget(home, tmp_path / "one.db", common, capsys)
    for stage in (2, 3):
        config = sharded_on_cpu(monkeypatch, f"zero{stage}")
        zero, details = fuse_and_forget(home, tmp_path / f"zero{stage}.db", [*common, "--accelerate-config", config],
                                        capsys)
        assert details["distributed"] == {"type": "DEEPSPEED", "processes": 2, "mixed_precision": "no",
                                          "requested": "DEEPSPEED", "zero_stage": stage}
        assert_same_weights(one, zero, f"ZeRO-{stage}")


# --- bench teachers: the teacher stage alone -------------------------------------------------------------------

#: TINY with a corpus of 252 chunks: two shards of 128 per store, so that two jobs or processes both have work.
TWO_SHARDS = [x for key, value in {**TINY, "corpus_chars": 16_000}.items() for x in ("--set", f"fuser.{key}={value}")]


def test_bench_teachers_refuses_what_it_cannot_do(home: Path, tmp_path: Path, capsys) -> None:
    assert bench("teachers", "--fuser", "merge") == 2
    assert "fuser merge has no teacher stage to compute ahead" in capsys.readouterr().err
    assert bench("teachers", "--fuser", "fusellm", "--shard", "2/2") == 2
    assert "--shard '2/2' is not I/N" in capsys.readouterr().err
    assert bench("teachers", "--fuser", "fusellm", "--set", "teacher_mode=online") == 2
    assert "teacher_mode=online keeps no teacher stores" in capsys.readouterr().err
    assert not (home / "cache" / "distill").exists()


def test_bench_teachers_on_two_jobs_then_bench_run_computes_no_shard(home: Path, tmp_path: Path, capsys) -> None:
    """Two `--shard I/2` jobs (two machines sharing $BENCH_HOME) compute the stores between them; a `bench run` with
    the same settings then finds every shard (its recorded details say it computed none) and changes no byte."""
    from tests.fusers.test_distill import store_files

    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, "--shard", "0/2") == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "job 0/2 done: 5 of 10 shards present" in out and out.count(" 1/2 ") == 5
    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, "--shard", "1/2") == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "all 5 stores complete (10 shards)" in out and out.count(" 2/2 ") == 5
    stores = home / "cache" / "distill"
    before = store_files(stores)

    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", "fusellm", *TWO_SHARDS, "--suite", "perplexity", "--set", "perplexity.max_docs=2",
                 "--set", "perplexity.max_chars_per_doc=200", "--db", str(db)) == 0, capsys.readouterr().err[-2000:]
    (fused,) = sqlite_utils.Database(db).query("select m.details from run_models rm join models m on m.id = rm.model_id "
                                               "where rm.role = 'fused'")
    recorded = json.loads(fused["details"])["stores"]
    assert [(s["kind"], s["shards"], s["computed"]) for s in recorded] == [("teacher", 2, 0)] * 3 + [("aligned", 2, 0)] * 2
    assert all(s["key"] in out for s in recorded)  # the stores `bench teachers` listed
    assert store_files(stores) == before


def test_bench_teachers_in_two_processes_writes_the_stores_of_one(home: Path, tmp_path: Path, capsys) -> None:
    """`bench teachers --processes 2` (accelerate launch, gloo on CPU): each process computes one of each store's two
    shards, and the stores are byte for byte those of one process."""
    import shutil

    from tests.fusers.test_distill import store_files

    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    stores = home / "cache" / "distill"
    one = store_files(stores)
    shutil.rmtree(stores)
    assert bench("teachers", "--fuser", "fusellm", *TWO_SHARDS, "--processes", "2") == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "all 5 stores complete (10 shards)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("teacher ", "aligned "))]
    assert [row[-3] for row in rows] == ["2"] * 5  # computed: both shards of each store, one per process
    assert store_files(stores) == one

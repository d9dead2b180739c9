"""FuseChat end to end on the micro zoo: pairwise targets, MS alignment, merge, stages in the DB, caching.

Runs are tiny (a few dozen conversations, a few steps): they check the plumbing and what is recorded, not
that fusion helps (that is measured on the default zoo: README "FuseChat on the embedded default").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from fusers.fusechat import FuseChat, merge_config
from tests.conftest import bench

TINY = {"steps": 3, "batch_size": 2, "seq_len": 96, "conversations": 24, "top_k": 4, "warmup_steps": 1}
SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def tiny_sets(**extra: object) -> list[str]:
    return [x for key, value in {**TINY, **extra}.items() for x in ("--set", f"fuser.{key}={value}")]


def test_config_defaults_validation_and_merge_mapping(tmp_path: Path) -> None:
    cfg = FuseChat.Config()
    assert (cfg.lam, cfg.top_k, cfg.fusion, cfg.ms_weighting, cfg.merge) == (0.9, 10, "min_ce", "frequency", "sce")
    for bad in ({"reference_compat": ["q6"]}, {"ms_weighting": "often"}, {"warmup_steps": 9, "steps": 3},
                {"data": str(tmp_path / "missing.jsonl")}, {"lr": 0}):
        with pytest.raises(ValueError):
            FuseChat.Config(**bad)
    sce = merge_config(FuseChat.Config())
    assert (sce.method, sce.variant, sce.select_topk) == ("fusechat_sce", "mergekit", 0.1)
    assert merge_config(FuseChat.Config(merge="sce", sce_variant="paper")).variant == "paper"
    assert merge_config(FuseChat.Config(merge="varm")).equal_weights is False
    assert merge_config(FuseChat.Config(merge="varm", reference_compat=["q7"])).equal_weights is True
    ties = merge_config(FuseChat.Config(merge="ties", density=0.5))
    assert (ties.method, ties.density) == ("ties", 0.5)
    import fusers.fusechat

    assert "bench run --fuser fusechat" in fusers.fusechat.__doc__ and FuseChat.default_target in FuseChat.default_sources


def test_fusechat_runs_the_papers_suites_by_default() -> None:
    from harness.config import build_run_config

    assert build_run_config(fuser="fusechat").suites == ["perplexity", "bbh-mini", "mtbench"]
    assert build_run_config(fuser="fusechat", suites=["perplexity"]).suites == ["perplexity"]
    assert build_run_config(fuser="merge").suites == ["perplexity"]


def test_bench_run_fusechat_records_pairwise_targets_merge_weights_and_reuses_them(
        private_home: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "bench.db"
    code = bench("run", "--fuser", "fusechat", "--db", str(db), "--name", "fc", *tiny_sets(), *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    database = sqlite_utils.Database(db)
    (run,) = database.query("select * from runs")
    assert run["status"] == "ok" and run["fuser"] == "fusechat"
    rows = list(database.query("select m.name, m.details, m.path, rm.role from run_models rm join models m "
                               "on m.id = rm.model_id order by position"))
    assert [r["role"] for r in rows] == ["fused", "stage", "stage", "target", "source", "source"]
    assert [r["name"] for r in rows[1:3]] == ["fc/gpt2-code+neox-docs", "fc/gpt2-code+mpt-math"]
    scored = {r["model_id"] for r in database.query("select model_id from scores where metric = 'bits_per_byte'")}
    assert len(scored) == 6

    fused = json.loads(rows[0]["details"])
    assert fused["merge"]["method"] == "fusechat_sce"
    weights = fused["merge"]["weights_per_matrix"]
    assert weights and all(len(w) == 2 for w in weights.values())
    assert fused["corpus"]["used"] > 0 and fused["corpus"]["response_bytes"] < fused["corpus"]["text_bytes"]
    stage = json.loads(rows[1]["details"])
    assert stage["alignment"]["method"] == "ms" and stage["alignment"]["observed_pairs"] > 0
    assert 0 < stage["corpus"]["loss_tokens"] < stage["corpus"]["target_tokens"]
    assert len(stage["loss_curves"]["total"]) == TINY["steps"]
    assert set(stage["candidate_share"]) == {"zoo:gpt2-code", "zoo:neox-docs"}
    curves = {r["model_id"] for r in database.query("select distinct model_id from train_log")}
    assert len(curves) == 2  # one loss curve per pairwise target
    for r in rows[1:3]:  # the stage models live inside the fused model's folder and load as HF models
        assert Path(r["path"]).parent.parent == Path(rows[0]["path"])
        assert (Path(r["path"]) / "config.json").is_file()

    # Another merge method: a new artifact, but the pairwise targets come from the cache (no training).
    import fusers.fusechat as fc

    def no_training(*args, **kwargs):
        raise AssertionError("the pairwise targets should have come from the cache")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fc._Run, "_train", no_training)
        code = bench("run", "--fuser", "fusechat", "--db", str(db), "--name", "fc-varm", *tiny_sets(merge="varm"),
                     *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    varm = json.loads(next(database.query("select m.details from run_models rm join models m on m.id = rm.model_id "
                                          "join runs r on r.id = rm.run_id where r.name = 'fc-varm' and "
                                          "rm.role = 'fused'"))["details"])
    assert varm["merge"]["method"] == "varm"
    per_matrix = list(varm["merge"]["weights_per_matrix"].values())
    assert all(sum(w) == pytest.approx(1.0, abs=1e-5) for w in per_matrix)
    assert any(w[0] != pytest.approx(0.5) for w in per_matrix)  # VaRM's weights follow the updates (not Q7's 1/2)


def short_chats(tmp_path: Path) -> list[str]:
    """`bench run --fuser fusechat` arguments with tiny settings on 16 short conversations (quicker to build than the
    built-in corpus)."""
    data = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}? Show the sum."},
                           {"role": "assistant", "content": f"{i} plus {i} is {2 * i}, since {i} + {i} = {2 * i}."}]}
             for i in range(16)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ["run", "--fuser", "fusechat", *tiny_sets(data=data), *SUITE]


def test_bench_run_in_2_processes_matches_one_process(private_home: Path, tmp_path: Path, monkeypatch,
                                                     capsys) -> None:
    """Each pairwise target trained in 2 processes, FSDP2 through --accelerate-config (plain DDP is checked on fusellm
    and DSKD, to keep the suite short), the main process alone writing the stores, the targets and the merge, gives
    the 1-process targets and merged model."""
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    common = short_chats(tmp_path)
    one, one_details = fuse_and_forget(private_home, tmp_path / "one.db", common, capsys)
    assert sorted(one) == [".", "pairwise/gpt2-code+mpt-math", "pairwise/gpt2-code+neox-docs"]
    config = sharded_on_cpu(monkeypatch, "fsdp")
    fsdp, fsdp_details = fuse_and_forget(private_home, tmp_path / "fsdp.db",
                                         [*common, "--processes", "2", "--accelerate-config", config], capsys)
    assert fsdp_details["distributed"]["type"] == "FSDP"
    # the pairwise targets within 1e-4; the SCE-merged model ("."): a threshold flip or two allowed
    assert_same_weights(one, fsdp, "fsdp", selected=(".",))
    for details in (fsdp_details,):  # the merge ran once, on the main process, with the same weights
        assert details["merge"]["weights_per_matrix"].keys() == one_details["merge"]["weights_per_matrix"].keys()
        assert details["stages"].keys() == one_details["stages"].keys()


def test_bench_run_under_deepspeed_zero3_matches_one_process(private_home: Path, tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    """Both pairwise targets trained one after the other by DeepSpeed ZeRO-3 engines (2 CPU processes), gathered and
    saved by the main process: the 1-process targets and merged model."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    common = short_chats(tmp_path)
    one, _ = fuse_and_forget(private_home, tmp_path / "one.db", common, capsys)
    config = sharded_on_cpu(monkeypatch, "zero3")
    zero3, details = fuse_and_forget(private_home, tmp_path / "zero3.db", [*common, "--accelerate-config", config],
                                     capsys)
    assert (details["distributed"]["type"], details["distributed"]["zero_stage"]) == ("DEEPSPEED", 3)
    assert_same_weights(one, zero3, "ZeRO-3", selected=(".",))


def test_each_pairwise_target_trains_on_whole_conversations(private_home: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """One conversation per sequence: never a response without its instruction, never two conversations in
    one attention window; the student reads exactly what the teachers read."""
    from harness.model import load_hf, resolve
    from tests.fusers.conftest import TrainedSequences

    trained = TrainedSequences(monkeypatch)
    code = bench("run", "--fuser", "fusechat", "--db", str(tmp_path / "b.db"), *tiny_sets(steps=4),
                 "--set", "fuser.batch_size=2", *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    _, tokenizer = load_hf(resolve("zoo:gpt2-code"))
    assert trained.check_one_conversation_each(tokenizer) == 2 * 4 * 2  # two targets, 4 steps of 2


def test_reference_compat_all_runs_the_released_alignment(private_home: Path, tmp_path: Path, capsys) -> None:
    """`all` end to end on the micro zoo: FuseChat's DTW and stage 3, MS reference weighting, fork SCE."""
    db = tmp_path / "b.db"
    code = bench("run", "--fuser", "fusechat", "--db", str(db), *tiny_sets(steps=2, reference_compat="all"), *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    database = sqlite_utils.Database(db)
    rows = list(database.query("select m.details, rm.role from run_models rm join models m on m.id = rm.model_id "
                               "order by position"))
    fused, stage = json.loads(rows[0]["details"]), json.loads(rows[1]["details"])
    assert fused["merge"]["options"]["variant"] == "fuseai_fork"
    assert stage["alignment"]["options"]["mode"] == "dtw_fusechat"
    assert stage["alignment"]["options"]["distribution"] == "fusechat"
    assert stage["alignment"]["ms_weighting"] == "reference"


def test_one_source_gives_its_pairwise_target_not_a_no_op_merge(private_home: Path, tmp_path: Path, capsys) -> None:
    """With a single non-pivot source there is one pairwise target; SCE over one task vector would keep nothing
    and return the pivot. The target itself is the fused model, and the details say so."""
    db = tmp_path / "b.db"
    code = bench("run", "--fuser", "fusechat", "--sources", "zoo:gpt2-code,zoo:mpt-math", "--db", str(db),
                 *tiny_sets(), *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    database = sqlite_utils.Database(db)
    rows = list(database.query("select m.details, rm.role, m.content_hash from run_models rm join models m "
                               "on m.id = rm.model_id order by position"))
    assert [r["role"] for r in rows] == ["fused", "target", "source"]  # no separate stage: it is the fused model
    assert json.loads(rows[0]["details"])["merge"]["method"] == "none"
    assert rows[0]["content_hash"] != rows[1]["content_hash"]  # not the pivot
    assert json.loads(rows[0]["details"])["lr"] == 5e-4  # the zoo's rate for a zoo pivot


def test_user_conversations_from_jsonl(private_home: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "bench.db"
    code = bench("run", "--fuser", "fusechat", "--sources", "zoo:gpt2-code,zoo:mpt-math", "--db", str(db),
                 *tiny_sets(data=data, steps=2), *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    details = json.loads(next(sqlite_utils.Database(db).query(
        "select m.details from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'"))["details"])
    assert details["corpus"]["source"] == str(data) and details["corpus"]["conversations"] == 12
    assert list(details["stages"]) == ["gpt2-code+mpt-math"]


def test_bad_input_is_one_line_exit_2(private_home: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "bench.db")
    assert bench("run", "--fuser", "fusechat", "--sources", "zoo:gpt2-code", "--db", db, *SUITE) == 2
    assert "at least one source besides the pivot" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert bench("run", "--fuser", "fusechat", "--db", db, "--set", f"data={bad}", *SUITE) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err

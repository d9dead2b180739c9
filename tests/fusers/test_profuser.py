"""ProFuser: the schedule, the inference-mode winners, and `bench run --fuser profuser` on the micro zoo.

The end-to-end run uses a tiny random reward model (any HF sequence-classification model is a reward), so
that the sources' answers differ in reward even where the micro models cannot do arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from fusers.profuser import INFERENCE, TRAINING, ProFuser, schedule_plan, winning_conversations
from harness.chat_data import Conversation, Message
from tests.conftest import bench

TINY = {"inference_prompts": 12, "training_conversations": 24, "inference_steps": 3, "training_steps": 4,
        "batch_size": 2, "seq_len": 96, "top_k": 4, "warmup_steps": 1, "max_new_tokens": 12}
SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


class PrefersSource:
    """A reward that scores source ``k``'s answers 1 and everything else 0 (answers carry their source)."""

    name = "prefers"

    def __init__(self, k: int):
        self.k = k

    def score(self, prompts, responses, references):
        return [1.0 if r.startswith(f"[{self.k}]") else 0.0 for r in responses]


def test_two_stage_runs_inference_mode_first_then_training_mode() -> None:
    assert schedule_plan("two_stage", 3, 2, seed=0) == [INFERENCE] * 3 + [TRAINING] * 2
    assert schedule_plan("two_stage", 0, 2, seed=0) == [TRAINING] * 2


def test_linear_mix_decays_the_share_of_inference_mode_steps() -> None:
    plan = schedule_plan("linear_mix", 200, 200, seed=0)
    assert len(plan) == 400 and plan == schedule_plan("linear_mix", 200, 200, seed=0)
    first, last = plan[:100].count(INFERENCE), plan[-100:].count(INFERENCE)
    assert first > 75 and last < 25  # expected 87.5 and 12.5
    assert plan[0] == INFERENCE  # p(0) = 1
    assert schedule_plan("linear_mix", 200, 200, seed=1) != plan
    with pytest.raises(ValueError):
        schedule_plan("cosine", 1, 1, seed=0)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_reward_that_prefers_source_k_makes_its_answers_the_targets(k: int) -> None:
    prompts = [Conversation(f"p{i}", (Message("user", f"question {i}"), Message("assistant", f"truth {i}")))
               for i in range(5)]
    answers = [[f"[{s}] answer {i} from source {s}" for i in range(5)] for s in range(3)]
    chosen, winners, votes = winning_conversations(prompts, answers, [PrefersSource(k)])
    assert winners == [k] * 5 and len(votes) == 5
    assert [c.response for c in chosen] == answers[k]
    assert [c.prompt_messages for c in chosen] == [p.prompt_messages for p in prompts]


def test_prompts_the_rewards_cannot_tell_apart_are_left_out() -> None:
    prompts = [Conversation(f"p{i}", (Message("user", "q"), Message("assistant", "a"))) for i in range(3)]
    answers = [["[1] x", "same", "[1] y"], ["[0] x", "same", "[0] y"]]
    chosen, winners, votes = winning_conversations(prompts, answers, [PrefersSource(1)])
    assert winners == [0, 0] and [c.response for c in chosen] == ["[1] x", "[1] y"] and len(votes) == 3


def test_config_validation(monkeypatch) -> None:
    assert ProFuser.Config().schedule == "two_stage" and ProFuser.Config().rewards == ["math_steps"]
    monkeypatch.delenv("BENCH_ALLOW_CODE_EXEC", raising=False)
    for bad in ({"rewards": ["vibes"]}, {"rewards": []}, {"inference_steps": 0, "training_steps": 0},
                {"rewards": ["code"]}, {"schedule": "cosine"}):
        with pytest.raises(ValueError):
            ProFuser.Config(**bad)
    assert ProFuser.Config(rewards=["code"], allow_code_exec=True).rewards == ["code"]
    import fusers.profuser

    assert "bench run --fuser profuser" in fusers.profuser.__doc__


@pytest.mark.parametrize("schedule", ["two_stage", "linear_mix"])
def test_bench_run_profuser_records_wins_per_mode_and_the_schedule(private_home: Path, tmp_path: Path, reward_model,
                                                                  schedule: str, capsys) -> None:
    db = tmp_path / "bench.db"
    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    code = bench("run", "--fuser", "profuser", "--db", str(db), *sets, "--set", f"schedule={schedule}",
                 "--set", f'rewards=["reward_model:{reward_model}"]', *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    database = sqlite_utils.Database(db)
    (run,) = database.query("select * from runs")
    assert run["status"] == "ok" and run["fuser"] == "profuser"
    rows = list(database.query("select m.details, rm.role from run_models rm join models m on m.id = rm.model_id "
                               "order by position"))
    assert [r["role"] for r in rows] == ["fused", "target", "source", "source"]
    details = json.loads(rows[0]["details"])
    names = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    wins = details["wins"]
    assert set(wins) == {INFERENCE, TRAINING} and all(set(w) == set(names) for w in wins.values()), wins
    assert sum(wins[INFERENCE].values()) == details["prompts"]["used"] > 0
    assert sum(wins[TRAINING].values()) == details["training_conversations"]["used"] > 0
    mode = details["loss_curves"]["inference_mode"]
    expected = schedule_plan(schedule, TINY["inference_steps"], TINY["training_steps"], seed=0)
    assert mode == [1.0 if m == INFERENCE else 0.0 for m in expected]
    assert len(details["loss_curves"]["total"]) == len(expected)
    logged = [r["value"] for r in database.query("select value from train_log where name = 'inference_mode' "
                                                  "order by step")]
    assert logged == mode
    example = details["examples"][0]
    assert set(example["answers"]) == set(names) and example["winner"] in names
    assert details["sequences"]["one_conversation_each"] is True


def test_profuser_trains_on_whole_conversations_in_both_modes(private_home: Path, tmp_path: Path, reward_model,
                                                              monkeypatch, capsys) -> None:
    """Inference-mode dialogues (a source's rewarded answer) and training-mode ones alike: one per sequence."""
    from harness.model import load_hf, resolve
    from tests.fusers.conftest import TrainedSequences

    trained = TrainedSequences(monkeypatch)
    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    code = bench("run", "--fuser", "profuser", "--db", str(tmp_path / "b.db"), *sets, "--set", "fuser.batch_size=2",
                 "--set", f'rewards=["reward_model:{reward_model}"]', *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    _, tokenizer = load_hf(resolve("zoo:gpt2-code"))
    steps = TINY["inference_steps"] + TINY["training_steps"]
    assert trained.check_one_conversation_each(tokenizer) == steps * 2


def short_chats(tmp_path: Path, reward_model: Path) -> list[str]:
    """`bench run --fuser profuser` arguments with tiny settings on 12 short conversations (quicker to build than the
    built-in ones) and a reward model."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(_chat_row(i)) + "\n" for i in range(12)))
    sets = [x for key, value in {**TINY, "data": data}.items() for x in ("--set", f"fuser.{key}={value}")]
    return ["run", "--fuser", "profuser", *sets, "--set", f'rewards=["reward_model:{reward_model}"]', *SUITE]


def test_bench_run_in_2_processes_matches_one_process(private_home: Path, tmp_path: Path, reward_model,
                                                     monkeypatch, capsys) -> None:
    """ProFuser in 2 processes, FSDP2 through --accelerate-config (the batch split and the global-count loss are DDP's
    too; plain DDP is checked on fusellm and DSKD, to keep the suite short): the main process alone generates, votes
    and computes the stores, and the trained model is the 1-process one."""
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    common = short_chats(tmp_path, reward_model)
    one, one_details = fuse_and_forget(private_home, tmp_path / "one.db", common, capsys)
    config = sharded_on_cpu(monkeypatch, "fsdp")
    fsdp, fsdp_details = fuse_and_forget(private_home, tmp_path / "fsdp.db", [*common, "--accelerate-config", config],
                                         capsys)
    assert fsdp_details["distributed"]["type"] == "FSDP"
    assert_same_weights(one, fsdp, "fsdp")
    assert one_details["prompts"]["used"] > 0  # inference-mode steps train on rewarded answers
    for details in (fsdp_details,):  # the same answers won, in each mode
        assert details["wins"] == one_details["wins"] and details["prompts"] == one_details["prompts"]
        assert details["loss_curves"]["inference_mode"] == one_details["loss_curves"]["inference_mode"]


def test_bench_run_under_deepspeed_zero3_matches_one_process(private_home: Path, tmp_path: Path, reward_model,
                                                            monkeypatch, capsys) -> None:
    """ProFuser under DeepSpeed ZeRO-3 (2 CPU processes): the sources answer whole (not partitioned) on the main
    process, and the gathered model is the 1-process one."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    common = short_chats(tmp_path, reward_model)
    one, one_details = fuse_and_forget(private_home, tmp_path / "one.db", common, capsys)
    config = sharded_on_cpu(monkeypatch, "zero3")
    zero3, details = fuse_and_forget(private_home, tmp_path / "zero3.db", [*common, "--accelerate-config", config],
                                     capsys)
    assert (details["distributed"]["type"], details["distributed"]["zero_stage"]) == ("DEEPSPEED", 3)
    assert details["wins"] == one_details["wins"]
    assert_same_weights(one, zero3, "ZeRO-3")


# --- your own data ---------------------------------------------------------------------------------------


def _chat_row(i: int) -> dict:
    return {"prompt": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}. The answer is {2 * i}.",
            "reference": str(2 * i)}


def _own_data(root: Path, n_chats: int = 10, n_docs: int = 3) -> Path:
    """A folder with conversations (JSONL, prompt/response rows) and plain text (parquet)."""
    import pandas as pd

    root.mkdir()
    (root / "chats.jsonl").write_text("".join(json.dumps(_chat_row(i)) + "\n" for i in range(n_chats)))
    docs = [f"def double_{i}(x):\n    return 2 * x  # doubles {i}\n" * 6 for i in range(n_docs)]
    pd.DataFrame({"text": docs}).to_parquet(root / "notes.parquet")
    return root


def test_data_rows_become_prompts_ground_truth_and_documents(tmp_path: Path) -> None:
    from fusers.profuser import _Run
    from harness.api import FuseContext
    from harness.model import ModelRef

    def data_of(path: Path, **cfg):
        refs = [ModelRef("zoo:a", "hub"), ModelRef("zoo:b", "hub")]
        run = _Run(ProFuser.Config(data=str(path), **cfg), refs, None, FuseContext(out_dir=tmp_path, seed=0))
        return (*run._data(), run.prompt_source)

    prompts, truth, docs, source = data_of(_own_data(tmp_path / "mixed"), inference_prompts=4, training_conversations=6)
    assert source == "data" and len(prompts) == 4 and len(truth) == 6 and len(docs) == 3
    assert truth[1].messages[0].content == "What is 1 + 1?" and truth[1].reference == "2"
    text_only = tmp_path / "text.txt"
    text_only.write_text("some text to train on\n" * 20)
    prompts, truth, docs, source = data_of(text_only, inference_prompts=5, inference_domains=["math"])
    assert source == "built-in" and len(prompts) == 5 and truth == [] and docs == [text_only.read_text()]
    # streamed: after the conversations it needs and corpus_chars of text, a broken row is never read
    streamed = tmp_path / "streamed.jsonl"
    streamed.write_text(json.dumps(_chat_row(1)) + "\n" + json.dumps({"text": "x" * 1500}) + "\n{broken\n")
    _, truth, docs, _ = data_of(streamed, inference_prompts=1, training_conversations=1, corpus_chars=1000)
    assert len(truth) == 1 and docs == ["x" * 1000]


def test_profuser_trains_on_your_conversations_and_text(private_home: Path, tmp_path: Path, reward_model,
                                                        monkeypatch, capsys) -> None:
    """Conversations from the data answer in inference mode and are ground truth in training mode; its text rows
    are trained too, one piece per sequence, the loss on all of it."""
    from harness.model import load_hf, resolve
    from tests.fusers.conftest import TrainedSequences

    trained = TrainedSequences(monkeypatch)
    data = _own_data(tmp_path / "mine")
    sets = [x for key, value in TINY.items() for x in ("--set", f"fuser.{key}={value}")]
    db = tmp_path / "b.db"
    code = bench("run", "--fuser", "profuser", "--db", str(db), *sets, "--set", f"data={data}",
                 "--set", "fuser.training_conversations=2", "--set", f'rewards=["reward_model:{reward_model}"]', *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    details = json.loads(next(sqlite_utils.Database(db).query(
        "select m.details from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'"))["details"])
    assert details["data"] == {"source": str(data), "prompts": "data"}
    assert details["prompts"]["answered"] == 10 and details["training_conversations"]["given"] == 2
    assert details["training_documents"]["given"] == 3 and details["training_documents"]["chunks"] >= 3
    _, tokenizer = load_hf(resolve("zoo:gpt2-code"))
    from fusers import distill as D

    encoder = D.ChunkEncoder(tokenizer)
    doc_rows = {tuple(encoder.ids(c)) for c in trained.chunks if c.text.startswith("def double_")}
    assert doc_rows, "the text rows were not among the chunks"
    seen = [(row, mask) for row, mask in zip(trained.rows, trained.masks, strict=True) if tuple(row) in doc_rows]
    assert seen, "no text piece was trained"
    for _, mask in seen:  # a document's loss covers every token it predicts (not only a response)
        assert all(mask[:-1]) and not mask[-1]

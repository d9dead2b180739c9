"""FuseChat-3.0: the split, the pairs in the margin window, the losses against TRL, seeded sampling, and
`bench run --fuser fusechat3` (DPO with its SFT-only control, WRPO) on the micro zoo.

The end-to-end runs score the answers with a tiny random reward model (any HF sequence-classification model is a
reward), so that answers differ in reward even where the micro models cannot do arithmetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sqlite_utils
import torch

from fusers.distill.preference import (
    PreferenceCorpus,
    PreferenceSchedule,
    ResponseCorpus,
    dpo_loss,
    preference_loss,
    reference_logps,
    response_ce_loss,
    wrpo_loss,
)
from fusers.fusechat3 import (
    FuseChat3,
    best_answer,
    choose_pair,
    combined_scores,
    margin_status,
    source_pair,
    split_prompts,
    top_answer,
)
from tests.conftest import bench

TINY = {"prompts": 8, "samples_per_prompt": 3, "max_new_tokens": 10, "sft_steps": 2, "dpo_steps": 3,
        "batch_size": 2, "seq_len": 96, "warmup_steps": 1, "margin_min": 0.0001, "sft_fraction": 0.5}
SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


# --- pure pieces ---------------------------------------------------------------------------------------------------


def test_split_is_seeded_and_sized() -> None:
    sft, dpo = split_prompts(10, 0.4, seed=0)
    assert len(sft) == 4 and len(dpo) == 6 and sorted(sft + dpo) == list(range(10))
    assert (sft, dpo) == split_prompts(10, 0.4, seed=0) and sft != split_prompts(10, 0.4, seed=1)[0]
    assert split_prompts(5, 1.0, seed=0) == ([0, 1, 2, 3, 4], []) and split_prompts(5, 0.0, seed=0)[0] == []


def test_best_answer_over_all_sources_and_undecided_prompts() -> None:
    assert best_answer([[0.1, 0.5], [0.9, 0.2]]) == (1, 0)
    assert best_answer([[0.5, 0.9], [0.9, 0.2]]) == (0, 1)  # ties: the earliest source, then sample
    assert best_answer([[0.0, 0.0], [0.0, 0.0]]) is None and top_answer([[0.0, 0.0], [0.0, 0.0]]) == (0, 0, 0.0)


def test_pairs_come_from_one_source_with_a_margin_in_the_window() -> None:
    pair = source_pair([0.2, 0.7, 0.1, 0.7], source=3)
    assert (pair.source, pair.chosen, pair.rejected) == (3, 1, 2) and pair.margin == pytest.approx(0.6)
    assert [margin_status(m, 0.1, 0.5) for m in (0.0, 0.05, 0.1, 0.3, 0.5, 0.6)] == [
        "tied", "below", "kept", "kept", "kept", "above"]
    scores = [[0.0, 0.8],       # source 0: margin 0.8 (above 0.5)
              [0.30, 0.50],     # source 1: margin 0.2, chosen 0.5
              [0.55, 0.40],     # source 2: margin 0.15, chosen 0.55: the highest chosen among those kept
              [0.2, 0.2]]       # source 3: tied
    pair, status = choose_pair(scores, 0.1, 0.5)
    assert status == ["above", "kept", "kept", "tied"]
    assert (pair.source, pair.chosen, pair.rejected) == (2, 0, 1)
    assert choose_pair(scores, 0.25, 0.5) == (None, ["above", "below", "below", "tied"])
    # the same chosen score: the larger margin wins, then the earlier source
    assert choose_pair([[0.4, 0.5], [0.2, 0.5]], 0.01, 1.0)[0].source == 1
    assert choose_pair([[0.4, 0.5], [0.4, 0.5]], 0.01, 1.0)[0].source == 0


def test_rewards_combine_as_a_weighted_sum() -> None:
    assert combined_scores([[1.0, 0.0], [2.0, 4.0]], [1.0, 0.5]) == [2.0, 2.0]


def test_config_validation(monkeypatch) -> None:
    cfg = FuseChat3.Config()
    assert (cfg.samples_per_prompt, cfg.code_samples_per_prompt, cfg.temperature, cfg.top_p, cfg.sft_fraction) == (
        5, 8, 0.8, 0.95, 0.4)
    monkeypatch.delenv("BENCH_ALLOW_CODE_EXEC", raising=False)
    for bad in ({"margin_min": 0.5, "margin_max": 0.1}, {"rewards": ["vibes"]}, {"sft_steps": 0, "dpo_steps": 0},
                {"rewards": ["math", "math_steps"], "reward_weights": [1.0]}, {"preference": "ppo"},
                {"source_sampling": {"zoo:x": {"temprature": 0.7}}}, {"rewards": ["code"]}):
        with pytest.raises(ValueError):
            FuseChat3.Config(**bad)
    control = FuseChat3.control_config(FuseChat3.Config(sft_steps=3, dpo_steps=5))
    assert (control.sft_fraction, control.sft_steps, control.dpo_steps) == (1.0, 8, 0)
    wrpo = FuseChat3.control_config(FuseChat3.Config(sft_steps=3, dpo_steps=5, preference="wrpo"))
    assert wrpo.model_dump(mode="json") == control.model_dump(mode="json")  # one SFT-only control for both
    import fusers.fusechat3

    assert "bench run --fuser fusechat3" in fusers.fusechat3.__doc__ and "UNVERIFIED" in fusers.fusechat3.__doc__


# --- losses against TRL --------------------------------------------------------------------------------------------


@pytest.fixture
def trl_trainer_state():
    """A TRL trainer sets up accelerate's process-wide state (and its environment) its own way: reset both after,
    so that a later `bench run` in this process prepares its own."""
    import os

    from accelerate.state import AcceleratorState

    before = dict(os.environ)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


def _micro_models():
    from tests.fusers.conftest import bpe_tokenizer, corpus, llama

    tok = bpe_tokenizer([corpus()[0][:6000]], vocab_size=280)
    return tok, llama(tok, seed=0), llama(tok, seed=1)


PREFERENCES = {"prompt": ["def add(a, b):", "Q: 2 + 3 =", "import os", "x = [1,"],
               "chosen": [" return a + b", " 5", " os.path.join(a)", " 2, 3]"],
               "rejected": [" pass", " 7 or so", " sys", " 9"]}


@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm"])
def test_dpo_loss_matches_trl_dpo_trainer(tmp_path: Path, loss_type: str, trl_trainer_state) -> None:
    """TRL's DPOTrainer (precomputed reference log-probs from a separate reference model) and ours on the same
    tokenized examples: the same loss, the same reference log-probs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, policy, ref = _micro_models()
    args = DPOConfig(output_dir=str(tmp_path), beta=0.3, loss_type=[loss_type], per_device_train_batch_size=4,
                     precompute_ref_log_probs=True, report_to="none", use_cpu=True, max_length=None,
                     disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_dict(PREFERENCES),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, batch))

    items = [[([*ex["prompt_ids"], *ex[role]], [0] * len(ex["prompt_ids"]) + [1] * len(ex[role]))
              for role in ("chosen_ids", "rejected_ids")] for ex in trainer.train_dataset]
    corpus = PreferenceCorpus(items, tok.pad_token_id)
    corpus.ref_logps = reference_logps(ref, corpus, batch_size=4)
    trl_refs = sorted(zip(batch["ref_chosen_logps"].tolist(), batch["ref_rejected_logps"].tolist(), strict=True))
    ours_refs = sorted(map(tuple, corpus.ref_logps.tolist()))
    # TRL's fused LM head sums the log-probs in another order: equal to float32 rounding over ~10 tokens
    assert [x for row in ours_refs for x in row] == pytest.approx([x for row in trl_refs for x in row], rel=1e-4)
    policy.eval()
    with torch.no_grad():
        ours, logs = preference_loss("dpo", 0.3, length_normalize=loss_type == "sigmoid_norm")(
            policy, corpus.collate([0, 1, 2, 3]))
    assert float(ours) == pytest.approx(theirs, abs=1e-5)
    assert theirs != pytest.approx(math.log(2), abs=1e-3)  # the reference differs from the policy: a real test
    assert logs["dpo"] == pytest.approx(theirs, abs=1e-5) and 0.0 <= logs["reward_accuracy"] <= 1.0


def test_sft_loss_matches_trl_sft_trainer_completion_only(tmp_path: Path, trl_trainer_state) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, model, _ = _micro_models()
    data = Dataset.from_dict({"prompt": PREFERENCES["prompt"], "completion": PREFERENCES["chosen"]})
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, completion_only_loss=True,
                     report_to="none", use_cpu=True, max_length=None, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, dict(batch)))
    sequences = [(ex["input_ids"], [int(label != -100) for label in ex["labels"]]) for ex in trainer.train_dataset]
    assert all(0 < sum(mask) < len(mask) for _, mask in sequences)  # the prompt is masked, the completion counts
    model.eval()
    with torch.no_grad():
        ours, logs = response_ce_loss()(model, ResponseCorpus(sequences, tok.pad_token_id).collate([0, 1, 2, 3]))
    assert float(ours) == pytest.approx(theirs, abs=1e-5) and logs["sft"] == pytest.approx(theirs, abs=1e-5)


def test_sft_loss_over_two_processes_divides_by_the_global_count() -> None:
    """Two halves of a batch with different numbers of response tokens, each dividing by the mean count per
    process: the mean of their gradients is the whole batch's gradient (what DDP computes)."""
    torch.manual_seed(0)
    tok, model, _ = _micro_models()
    sequences = [([5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 1, 1]), ([5, 6, 7, 8], [0, 0, 0, 1]),
                 ([11, 12, 13, 14, 15], [0, 1, 1, 1, 1]), ([3, 4, 5], [0, 0, 1])]
    corpus = ResponseCorpus(sequences, tok.pad_token_id)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = grads(response_ce_loss()(model, corpus.collate([0, 1, 2, 3]))[0])
    halves = [corpus.collate([0, 2]), corpus.collate([1, 3])]
    counts = [float(h["response_mask"][:, 1:].sum()) for h in halves]
    assert counts == [8.0, 2.0]  # the processes count different numbers of response tokens

    def reduce_count_then_log():  # an all-reduce mean over the two "processes": first the count, then the logged loss
        calls = iter([lambda t: torch.full_like(t, sum(counts) / 2), lambda t: t])
        return lambda t: next(calls)(t)

    parts = [grads(response_ce_loss(reduce_count_then_log())(model, h)[0]) for h in halves]
    assert torch.allclose((parts[0] + parts[1]) / 2, whole, atol=1e-6)
    own_count = [grads(response_ce_loss()(model, h)[0]) for h in halves]  # each dividing by its own count: wrong
    assert not torch.allclose((own_count[0] + own_count[1]) / 2, whole, atol=1e-6)


def test_wrpo_is_dpo_at_alpha_zero_and_the_weighted_formula_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    ps, rs, pt, rt, pl, rl = (torch.randn(5, generator=g) * 3 for _ in range(6))
    wrpo0, _, _ = wrpo_loss(ps, rs, pt, rt, pl, rl, beta=0.2, alpha=0.0)
    dpo, _, _ = dpo_loss(pt, pl, rt, rl, beta=0.2)
    assert torch.allclose(wrpo0, dpo)
    alpha, beta = 0.3, 0.2
    loss, chosen, rejected = wrpo_loss(ps, rs, pt, rt, pl, rl, beta=beta, alpha=alpha)
    for i in range(5):
        z = (alpha * beta * float(ps[i] - rs[i]) + (1 - alpha) * beta * float(pt[i] - rt[i])
             - beta * float(pl[i] - rl[i]))
        assert float(loss[i]) == pytest.approx(math.log1p(math.exp(-z)), rel=1e-5)
    schedule = PreferenceSchedule(0.5, steps=5)
    seen = []
    for step in range(5):
        seen.append(schedule.alpha)
        schedule.advance(step, {})
    assert seen == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])


def test_sampling_is_seeded() -> None:
    from harness.sampling import sample_responses

    tok, model, _ = _micro_models()
    prompts = ["def add(a, b):", "import os", "class A:"]
    kw = {"n": 3, "temperature": 1.0, "top_p": 0.95, "repetition_penalty": 1.0, "max_new_tokens": 8, "batch_size": 2}
    first = sample_responses(model, tok, prompts, ["\n\n"], seed=0, **kw)
    assert len(first) == 3 and all(len(row) == 3 for row in first)
    assert sample_responses(model, tok, prompts, ["\n\n"], seed=0, **kw) == first
    assert sample_responses(model, tok, prompts, ["\n\n"], seed=1, **kw) != first
    assert len({a for row in first for a in row}) > 1  # sampled, not greedy


# --- bench run ------------------------------------------------------------------------------------------------------


def _sets(extra: dict | None = None) -> list[str]:
    return [x for key, value in {**TINY, **(extra or {})}.items() for x in ("--set", f"fuser.{key}={value}")]


def _members(db: Path) -> dict[str, dict]:
    database = sqlite_utils.Database(db)
    rows = database.query("select m.details, rm.role from run_models rm join models m on m.id = rm.model_id")
    return {r["role"]: json.loads(r["details"]) for r in rows if r["role"] in ("fused", "control")}


def test_bench_run_fusechat3_dpo_and_its_sft_only_control(private_home: Path, tmp_path: Path, reward_model,
                                                         capsys) -> None:
    db = tmp_path / "bench.db"
    code = bench("run", "--fuser", "fusechat3", "--db", str(db), *_sets({"code_samples_per_prompt": 4, "seq_len": 192}),
                 "--control",
                 "--set", 'domains=["math", "code"]',
                 "--set", f'rewards=["reward_model:{reward_model}"]',
                 "--set", 'source_sampling={"zoo:neox-docs": {"temperature": 0.7, "top_p": 0.8, '
                          '"repetition_penalty": 1.05}}', *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    members = _members(db)
    fused, control = members["fused"], members["control"]
    names = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    # 4 math prompts answered 3 times, 4 code prompts 4 times (code_samples_per_prompt), by each of 3 sources
    assert fused["sources"] == names and fused["samples"]["answers"] == 3 * (4 * 3 + 4 * 4)
    assert fused["samples"]["per_prompt"] == [3, 4]
    assert fused["samples"]["sampling"]["zoo:neox-docs"] == {"temperature": 0.7, "top_p": 0.8,
                                                             "repetition_penalty": 1.05}
    assert fused["prompts"] == {"given": 8, "sft": 4, "dpo": 4, "source": "built-in"}
    assert sum(fused["sft"]["best_answer_wins"].values()) == fused["sft"]["items"] > 0
    pairs = fused["pairs"]
    assert 0 < pairs["pairs"] == sum(pairs["pairs_per_source"].values())
    assert pairs["pairs"] + pairs["outside_window"] + pairs["skipped_too_long"] == 4
    assert sum(pairs["source_pairs"].values()) == 4 * 3  # every source's pair of every DPO prompt is counted
    curves = fused["loss_curves"]
    assert curves["phase_dpo"] == [0.0] * 2 + [1.0] * 3 and len(curves["total"]) == 5 and len(curves["sft"]) == 2
    assert len(curves["dpo"]) == len(curves["chosen_reward"]) == len(curves["reward_margin"]) == 3
    assert curves["dpo"][0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its reference
    assert curves["chosen_reward"][0] == pytest.approx(0.0, abs=1e-4)
    assert {"sample", "reward", "sft", "reference_logps", "dpo"} <= set(fused["timings"])
    # the control: SFT on the best answer of every prompt, the same number of steps, no DPO
    assert control["prompts"]["sft"] == 8 and control["pairs"]["pairs"] == 0
    assert control["loss_curves"]["phase_dpo"] == [0.0] * 5 and "dpo" not in control["loss_curves"]
    assert control["sft"]["items"] >= fused["sft"]["items"]


def test_bench_run_fusechat3_wrpo(private_home: Path, tmp_path: Path, reward_model, capsys) -> None:
    db = tmp_path / "bench.db"
    code = bench("run", "--fuser", "fusechat3", "--db", str(db), *_sets({"sft_steps": 1}), "--set",
                 "preference=wrpo", "--set", "wrpo_alpha=0.6", "--set", f'rewards=["reward_model:{reward_model}"]',
                 "--sources", "zoo:neox-docs,zoo:mpt-math", "--target", "zoo:gpt2-code", *SUITE)
    assert code == 0, capsys.readouterr().err[-3000:]
    fused = _members(db)["fused"]
    assert fused["preference"] == "wrpo" and fused["samples"]["models"] == 3  # two sources and the target
    pairs = fused["pairs"]
    assert pairs["pairs"] > 0 and sum(pairs["source_pairs"].values()) == 4  # the target's own pair per DPO prompt
    assert pairs["pairs"] + pairs["outside_window"] + pairs["source_not_better"] + pairs["skipped_too_long"] == 4
    assert fused["loss_curves"]["alpha"] == pytest.approx([0.0, 0.3, 0.6])


def test_bad_configs_exit_2(private_home: Path, tmp_path: Path, reward_model, capsys) -> None:
    db = str(tmp_path / "bench.db")
    code = bench("run", "--fuser", "fusechat3", "--db", db, "--set", "margin_min=0.5", "--set", "margin_max=0.1",
                 *SUITE)
    assert code == 2 and "margin_min" in capsys.readouterr().err
    code = bench("run", "--fuser", "fusechat3", "--db", db, "--set", 'source_sampling={"zoo:nope": {"top_p": 0.5}}',
                 *SUITE)
    assert code == 2 and "source_sampling names 'zoo:nope'" in capsys.readouterr().err
    no_pair = {"prompts": 4, "sft_steps": 0, "margin_min": 50, "margin_max": 60}
    code = bench("run", "--fuser", "fusechat3", "--db", db, *_sets(no_pair),
                 "--set", f'rewards=["reward_model:{reward_model}"]', *SUITE)
    err = capsys.readouterr().err
    assert code == 2 and "no preference pair" in err and "widen margin_min" in err, err[-2000:]


def _in_2_processes_matches_one_process(home: Path, tmp_path: Path, reward_model: Path, monkeypatch, capsys,
                                        engines: dict[str, str | None]) -> None:
    """2 CPU processes per engine (``kind -> accelerate config engine``, None: plain `--processes 2`, DDP). The main
    process samples and scores, both train their halves of every batch (the SFT loss divides by the global count of
    response tokens), the SFT model is gathered and reloaded whole for DPO, and the model is the 1-process one."""
    from tests.fusers.conftest import assert_same_weights, fuse_and_forget, sharded_on_cpu

    common = ["run", "--fuser", "fusechat3", *_sets({"sft_steps": 3}), "--set",
              f'rewards=["reward_model:{reward_model}"]', *SUITE]
    one, one_details = fuse_and_forget(home, tmp_path / "one.db", common, capsys)
    assert one_details["pairs"]["pairs"] > 0 and one_details["sft"]["items"] > 0
    runs = {kind: [*common, *(["--processes", "2"] if engine is None else
                              ["--accelerate-config", sharded_on_cpu(monkeypatch, engine)])]
            for kind, engine in engines.items()}
    for kind, args in runs.items():
        weights, details = fuse_and_forget(home, tmp_path / f"{kind}.db", args, capsys)
        assert details["distributed"]["type"] == kind
        assert details["pairs"] == one_details["pairs"] and details["sft"] == one_details["sft"]
        assert details["loss_curves"]["total"] == pytest.approx(one_details["loss_curves"]["total"], abs=1e-4)
        assert_same_weights(one, weights, kind)


def test_bench_run_in_2_processes_matches_one_process(private_home: Path, tmp_path: Path, reward_model,
                                                     monkeypatch, capsys) -> None:
    """FSDP2 (`--accelerate-config`, 2 processes) trains the 1-process model (plain DDP is checked on fusellm and
    DSKD, to keep the suite short; `_in_2_processes_matches_one_process` takes it as ``{"MULTI_CPU": None}``)."""
    _in_2_processes_matches_one_process(private_home, tmp_path, reward_model, monkeypatch, capsys, {"FSDP": "fsdp"})


def test_bench_run_under_deepspeed_zero3_matches_one_process(private_home: Path, tmp_path: Path, reward_model,
                                                            monkeypatch, capsys) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    _in_2_processes_matches_one_process(private_home, tmp_path, reward_model, monkeypatch, capsys,
                                        {"DEEPSPEED": "zero3"})


def test_wrpo_needs_a_source_other_than_the_target(private_home: Path, tmp_path: Path, reward_model, capsys) -> None:
    code = bench("run", "--fuser", "fusechat3", "--db", str(tmp_path / "b.db"), *_sets({"prompts": 4}),
                 "--set", "preference=wrpo", "--set", f'rewards=["reward_model:{reward_model}"]',
                 "--sources", "zoo:gpt2-code", "--target", "zoo:gpt2-code", *SUITE)
    err = capsys.readouterr().err
    assert code == 2 and "WRPO needs a source other than the target" in err, err[-2000:]

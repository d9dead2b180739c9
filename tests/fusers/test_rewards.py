"""ProFuser's reward plugins (math / code / reward model / judge) and the vote over sources."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from fusers._rewards import (
    REWARD_NAMES,
    UNRATED_SCORE,
    ExactAnswerReward,
    JudgeReward,
    Reward,
    RewardModelReward,
    UnitTestReward,
    VoteResult,
    decide,
    extract_answer,
    extract_code,
    make_reward,
    normalise,
    vote,
)
from harness.errors import BenchError
from harness.sandbox import Limits, SandboxError
from tests.harness.test_judge import ListJudge, serving


class Scripted:
    """A reward that scores each response with a function of (prompt, response)."""

    def __init__(self, name: str, fn) -> None:
        self.name = name
        self.fn = fn
        self.calls = 0

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        self.calls += 1
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses, strict=True)]


def table(name: str, rows: dict[str, list[float]]) -> Scripted:
    """Scores looked up per prompt by the source index written in the response ("s<k>")."""
    return Scripted(name, lambda p, r: rows[p][int(r[1:])])


# --- math ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("12 - 5 = 7. The answer is 7.", "7"),
    ("The answer is 7.\nQ: Ben has 40 apples and gives 3 away.", "7"),  # runs on into a new problem
    ("12 - 5 = 7.", "7"),  # no stated answer: the last number
    ("The answer is: $1,234.", "1234"),
    ("The final answer is **12.50**", "12.50"),
    ("#### -3", "-3"),
    ("so x = \\boxed{42}", "42"),
    ("12-5", "5"),  # the minus of a subtraction is no sign
    ("Answer = 8 apples, then 9 more", "8"),  # the stated answer beats the last number
    ("I do not know.", None),
    ("", None),
])
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize("response", [
    "12 - 5 = 7. The answer is 7.", "The answer is 7", "7", "The answer is 7.0.", " answer: 7 apples",
    "12 - 5 = 7.\nQ: What is 3 + 4?\nA: 3 + 4 = 10. The answer is 10.",
])
def test_math_reward_accepts_formatting_variants(response: str) -> None:
    assert ExactAnswerReward().score(["Q: Ana has 12 apples and gives 5 away.\nA:"], [response], ["7"]) == [1.0]


@pytest.mark.parametrize("response", ["The answer is 8.", "12 - 5 = 7. The answer is 17.", "-7", "no idea", "",
                                      "The answer is 7.5."])
def test_math_reward_rejects_wrong_answers(response: str) -> None:
    assert ExactAnswerReward().score(["q"], [response], ["7"]) == [0.0]


def test_math_reward_on_the_zoo_math_domain() -> None:
    from harness.corpus import math_examples

    problems = math_examples(20, seed=3)
    reward = make_reward("math")
    prompts = [f"Q: {p.question}\nA:" for p in problems]
    # a worked solution as the reference works as well as the bare answer
    assert reward.score(prompts, [" " + p.solution for p in problems], [p.answer for p in problems]) == [1.0] * 20
    assert reward.score(prompts, [p.answer for p in problems], [p.solution for p in problems]) == [1.0] * 20
    wrong = [f" The answer is {int(p.answer) + 1}." for p in problems]
    assert reward.score(prompts, wrong, [p.answer for p in problems]) == [0.0] * 20


def test_math_reward_needs_numeric_references() -> None:
    with pytest.raises(BenchError, match="needs a reference"):
        ExactAnswerReward().score(["q", "q"], ["1", "2"], ["1", None])
    with pytest.raises(BenchError, match="has no number"):
        ExactAnswerReward().score(["q"], ["1"], ["one"])
    with pytest.raises(ValueError, match="differ in length"):
        ExactAnswerReward().score(["q"], ["1", "2"], ["1"])


# --- code ---------------------------------------------------------------------------------------

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_extract_code() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```bash\nls\n```\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_code_reward_passing_failing_and_timing_out() -> None:
    reward = UnitTestReward(timeout_s=1.5)
    responses = [
        "def add(a, b):\n    return a + b\n",
        "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds.",
        "def add(a, b):\n    return a - b\n",  # an assertion fails
        "def add(a, b) return a + b",  # syntax error
        "def add(a, b):\n    while True:\n        pass\n",  # never returns
        "import sys\ndef add(a, b):\n    return a + b\nsys.exit(0)\n",  # an early exit is no pass
    ]
    scores = reward.score(["Write add(a, b)."] * len(responses), responses, [TESTS] * len(responses))
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert reward.last_outcomes[4].result == "timed out"
    assert reward.last_outcomes[2].result.startswith("failed")


def test_code_reward_completion_style_prompts() -> None:
    reward = make_reward("code", include_prompt=True, timeout_s=5.0)
    prompt = 'def add(a, b):\n    """Sum."""\n'
    # the completion runs on into another top-level def, cut like HumanEval does
    responses = ["    return a + b\n\ndef junk(:\n", "    return a * b\n"]
    assert reward.score([prompt] * 2, responses, [TESTS] * 2) == [1.0, 0.0]


def test_code_reward_cannot_be_gamed_by_the_response() -> None:
    """A policy trained against this reward must not be able to learn to fake passing tests."""
    responses = [
        "class Yes:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Yes()\n",
        "class Zero(int):\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Zero()\n",
        ("import sys\nframe = sys._getframe(1)\nwhile frame is not None and 'nonce' not in frame.f_locals:\n"
         "    frame = frame.f_back\nif frame is not None:\n    frame.f_locals['report']('ok', frame.f_locals['nonce'])\n"
         "    frame.f_locals['exit_now'](0)\ndef add(a, b):\n    return 0\n"),
        "def add(a, b):\n    return a + b\n",
    ]
    reward = UnitTestReward(timeout_s=5.0)
    assert reward.score(["p"] * 4, responses, [TESTS] * 4) == [0.0, 0.0, 0.0, 1.0]
    assert "not plain data" in reward.last_outcomes[0].result


def test_code_reward_completion_prompts_keep_their_helpers() -> None:
    prompt = 'def double(x):\n    return 2 * x\n\ndef add(a, b):\n    """Sum."""\n'
    tests = "assert add(double(1), 3) == 5\n"
    redefined = "    return 4\n\ndef double(x):\n    return 1\n"  # would pass if double were the response's
    reward = make_reward("code", include_prompt=True, timeout_s=5.0)
    assert reward.score([prompt] * 2, ["    return a + b\n", redefined], [tests] * 2) == [1.0, 0.0]
    assert reward.code_test(prompt, "    return a + b\n", tests).required == ("add",)
    assert reward.code_test("def add(a, b):\n", "    return a + b\n", tests).preamble == ""  # not Python alone


def test_code_reward_raises_when_the_sandbox_cannot_run() -> None:
    reward = UnitTestReward(limits=Limits(max_open_files=1 << 40))
    with pytest.raises(SandboxError, match="could not start"):
        reward.score(["p"], ["def add(a, b):\n    return a + b\n"], [TESTS])


def test_code_reward_needs_tests() -> None:
    with pytest.raises(BenchError, match="needs a reference"):
        UnitTestReward().score(["p"], ["x = 1"], ["  "])


# --- reward model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from tests.conftest import one_thread
    from tests.fusers.conftest import bpe_tokenizer, corpus, special_ids

    root = tmp_path_factory.mktemp("reward_models")
    with one_thread():
        tok = bpe_tokenizer([corpus()[0][:6000]], vocab_size=280)
        paths = {}
        torch.manual_seed(0)
        gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                                        n_positions=64, num_labels=1, **special_ids(tok)))
        paths["gpt2"] = root / "gpt2"
        gpt2.save_pretrained(paths["gpt2"])
        tok.save_pretrained(paths["gpt2"])

        torch.manual_seed(1)
        llama = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=128, num_labels=3, **special_ids(tok)))
        paths["llama3"] = root / "llama3"
        llama.save_pretrained(paths["llama3"])
        templated = tok.__class__.from_pretrained(paths["gpt2"])
        templated.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")
        templated.save_pretrained(paths["llama3"])

        # no pad token anywhere: the reward pads with EOS
        torch.manual_seed(2)
        nopad = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4, n_positions=64, num_labels=1,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        paths["nopad"] = root / "nopad"
        nopad.save_pretrained(paths["nopad"])
        bare = tok.__class__.from_pretrained(paths["gpt2"])
        bare.pad_token = None
        bare.save_pretrained(paths["nopad"])
    return paths


PROMPTS = ["Q: What is 2 + 2?\nA:", "Write a function.", "Hi", "Q: Ana has 12 apples and gives 5 away.\nA:", "x"]
RESPONSES = [" 2 + 2 = 4. The answer is 4.", "def f():\n    return 1\n", " Hello there, how can I help you today?",
             " 7", " a much longer response " * 3]


@pytest.mark.parametrize("which", ["gpt2", "llama3", "nopad"])
def test_reward_model_batching_equals_one_by_one(reward_models, which: str) -> None:
    batched = RewardModelReward(str(reward_models[which]), batch_size=4)
    single = RewardModelReward(str(reward_models[which]), batch_size=1)
    refs = [None] * len(PROMPTS)
    a = batched.score(PROMPTS, RESPONSES, refs)
    b = single.score(PROMPTS, RESPONSES, refs)
    assert len(a) == len(PROMPTS) and all(isinstance(x, float) and math.isfinite(x) for x in a)
    assert a == pytest.approx(b, abs=1e-5)
    assert batched.score(PROMPTS, RESPONSES, refs) == a  # deterministic
    assert RewardModelReward(str(reward_models[which]), batch_size=2).score(PROMPTS, RESPONSES, refs) == \
        pytest.approx(a, abs=1e-5)
    assert len(set(round(x, 6) for x in a)) > 1  # the texts are told apart


def test_reward_model_reads_the_right_logit_and_template(reward_models) -> None:
    import torch

    reward = RewardModelReward(str(reward_models["llama3"]))
    assert reward.num_labels == 3
    text = reward.render("Hi", " there")
    assert text == "<|user|>Hi\n<|assistant|> there\n"
    with torch.inference_mode():
        logits = reward.model(input_ids=torch.tensor([reward.encode(text)])).logits
    assert reward.score(["Hi"], [" there"], [None]) == pytest.approx([logits[0, 2].item()], abs=1e-6)

    plain = RewardModelReward(str(reward_models["gpt2"]))
    assert plain.render("Q: 1+1?\nA:", " 2") == "Q: 1+1?\nA: 2"
    with torch.inference_mode():
        logit = plain.model(input_ids=torch.tensor([plain.encode("Q: 1+1?\nA: 2")])).logits[0, 0].item()
    assert plain.score(["Q: 1+1?\nA:"], [" 2"], [None]) == pytest.approx([logit], abs=1e-6)


def test_reward_model_truncates_long_texts_on_the_left(reward_models) -> None:
    reward = RewardModelReward(str(reward_models["gpt2"]), batch_size=2)  # n_positions 64
    long = "word " * 200
    scores = reward.score(["p", long], [" short", long + " end"], [None, None])
    assert all(math.isfinite(s) for s in scores)
    assert len(reward.encode(long)) == 64


def test_reward_model_spec_and_bad_paths(reward_models, tmp_path) -> None:
    reward = make_reward(f"reward_model:{reward_models['gpt2']}", batch_size=3)
    assert isinstance(reward, RewardModelReward) and reward.batch_size == 3 and reward.name == "reward_model"
    with pytest.raises(BenchError, match="needs a model path"):
        make_reward("reward_model")
    with pytest.raises(BenchError, match="not a saved transformers model"):
        make_reward(f"reward_model:{tmp_path / 'missing'}")


# --- judge --------------------------------------------------------------------------------------


def test_judge_reward_ratings_and_unrated_answers(caplog) -> None:
    judge = ListJudge(["Fine. Rating: [[8]]", "I cannot say.", "Rating: [[3.5]]"])
    reward = JudgeReward(judge)
    scores = reward.score(["p1", "p2", "p3"], ["a1", "a2", "a3"], [None, None, "the reference"])
    assert scores == [8.0, UNRATED_SCORE, 3.5]
    assert reward.unrated == 1 and reward.failed_replies == 1
    assert "no parseable" in caplog.text
    users = [next(m["content"] for m in c if m["role"] == "user") for c in judge.seen]
    assert "p1" in users[0] and "a1" in users[0] and "Reference" not in users[0]
    assert "the reference" in users[2] and "Reference answer" in users[2]


def test_judge_reward_repeats_average() -> None:
    reward = JudgeReward(ListJudge(["[[4]]", "[[6]]", "none", "none"]), repeats=2)
    assert reward.score(["p", "q"], ["a", "b"], [None, None]) == [5.0, UNRATED_SCORE]
    assert reward.unrated == 1 and reward.failed_replies == 2


def test_judge_reward_over_http_votes_for_the_better_answer() -> None:
    def reply(body):
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        reply_text = user.split("=== Assistant reply ===")[1]
        return "Rating: [[9]]" if "good" in reply_text else "Rating: [[2]]"

    with serving(reply) as server:
        by_option = make_reward("judge", url=server.url, model="fake-judge")
        by_spec = make_reward(f"judge:{server.url}")
        for reward in (by_option, by_spec):
            results = vote([reward], ["p1", "p2"], [["bad", "good", "bad"], ["good", "bad", "bad"]])
            assert [r.winner for r in results] == [1, 0]
            assert results[0].scores == ((2.0, 9.0, 2.0),)
        assert all(r["model"] == "fake-judge" for r in server.requests[:6])


def test_judge_reward_needs_a_judge() -> None:
    with pytest.raises(BenchError, match="has no judge"):
        make_reward("judge")


# --- voting -------------------------------------------------------------------------------------


def test_unanimous_vote() -> None:
    rows = {"p": [0.1, 0.9, 0.3]}
    rewards = [table("a", rows), table("b", {"p": [1, 5, 2]}), table("c", {"p": [-3, -1, -2]})]
    (result,) = vote(rewards, ["p"], [["s0", "s1", "s2"]])
    assert isinstance(result, VoteResult)
    assert result.winner == 1 and result.votes == (1, 1, 1) and result.counts == (0, 3, 0)
    assert result.names == ("a", "b", "c") and result.scores[1] == (1.0, 5.0, 2.0)
    assert all(r.calls == 1 for r in rewards)  # one batched call per reward


def test_plurality_vote_beats_a_higher_mean() -> None:
    # source 2 has by far the highest normalised mean, but two of three rewards vote for source 0
    rewards = [table("a", {"p": [1.0, 0.0, 0.99]}), table("b", {"p": [1.0, 0.0, 0.99]}),
               table("c", {"p": [0.0, 0.5, 1.0]})]
    (result,) = vote(rewards, ["p"], [["s0", "s1", "s2"]])
    assert result.votes == (0, 0, 2) and result.counts == (2, 0, 1) and result.winner == 0


def test_plurality_tie_goes_to_the_highest_normalised_mean() -> None:
    # a votes 0, b votes 1: normalised means 0.5 (s0), 0.95 (s1), 0.25 (s2); b's scale does not matter
    for scale in (1.0, 1000.0):
        rewards = [table("a", {"p": [1.0, 0.9, 0.0]}), table("b", {"p": [0.0, 1.0 * scale, 0.5 * scale]})]
        (result,) = vote(rewards, ["p"], [["s0", "s1", "s2"]])
        assert result.votes == (0, 1) and result.counts == (1, 1, 0) and result.winner == 1


def test_full_ties_go_to_the_lowest_index() -> None:
    assert decide([[0.5, 0.5, 0.5]])[0] == 0  # argmax tie
    assert decide([[1.0, 0.0], [0.0, 1.0]])[0] == 0  # vote tie and equal means
    assert decide([[0.0, 3.0, 3.0]]) == (1, [1], [0, 1, 0])
    # a source without votes cannot win a tie-break, however high its mean
    assert decide([[1.0, 0.0, 0.99], [0.0, 1.0, 0.99]])[0] == 0


def test_nan_scores_count_as_the_lowest() -> None:
    assert decide([[math.nan, 0.1, 0.0]])[0] == 1
    assert normalise([math.nan, 2.0, 4.0, math.inf, -math.inf]) == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert normalise([3.0, 3.0]) == [0.0, 0.0]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_reward_preferring_source_k_makes_k_win_every_prompt(k: int) -> None:
    prompts = [f"prompt {i}" for i in range(6)]
    candidates = [[f"s{j}" for j in range(4)] for _ in prompts]
    always_k = Scripted("always", lambda p, r: 1.0 if r == f"s{k}" else 0.0)
    results = vote([always_k], prompts, candidates)
    assert [r.winner for r in results] == [k] * len(prompts)
    assert [candidates[i][r.winner] for i, r in enumerate(results)] == [f"s{k}"] * len(prompts)


def test_math_reward_vote_picks_the_correct_source() -> None:
    from harness.corpus import math_examples

    problems = math_examples(8, seed=1)
    prompts = [f"Q: {p.question}\nA:" for p in problems]
    correct_source = [i % 3 for i in range(len(problems))]
    candidates = [[f" The answer is {int(p.answer) + (0 if j == c else j + 1)}." for j in range(3)]
                  for p, c in zip(problems, correct_source, strict=True)]
    results = vote([make_reward("math")], prompts, candidates, [p.answer for p in problems])
    assert [r.winner for r in results] == correct_source


def test_mixed_rewards_vote_and_named_scores() -> None:
    candidates = ["The answer is 7.", "It is 8.", "7"]
    a = Scripted("judge", lambda p, r: {"The answer is 7.": 0.0, "It is 8.": 1.0, "7": 0.2}[r])
    b = Scripted("judge", lambda p, r: {"The answer is 7.": 0.1, "It is 8.": 0.0, "7": 1.0}[r])
    (result,) = vote([ExactAnswerReward(), a, b], ["Q: 3 + 4?\nA:"], [candidates], ["7"])
    # math ties s0 and s2 -> votes s0; a votes s1; b votes s2: a three-way tie on votes, and the
    # normalised means are s0 (1 + 0 + 0.1)/3, s1 (0 + 1 + 0)/3, s2 (1 + 0.2 + 1)/3 -> s2
    assert result.votes == (0, 1, 2) and result.counts == (1, 1, 1) and result.winner == 2
    assert result.scores_by_reward() == {"math": (1.0, 0.0, 1.0), "judge": (0.0, 1.0, 0.2),
                                         "judge#2": (0.1, 0.0, 1.0)}


def test_vote_checks_its_inputs() -> None:
    reward = table("a", {"p": [1.0, 0.0]})
    with pytest.raises(ValueError, match="at least one reward"):
        vote([], ["p"], [["s0"]])
    with pytest.raises(ValueError, match="differ in length"):
        vote([reward], ["p", "q"], [["s0", "s1"]])
    with pytest.raises(ValueError, match="no candidate"):
        vote([reward], ["p"], [[]])
    short = Scripted("short", lambda p, r: 0.0)
    short.score = lambda prompts, responses, references: [0.0]  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="returned 1 scores for 2"):
        vote([short], ["p"], [["s0", "s1"]])


# --- factory ------------------------------------------------------------------------------------


def test_make_reward_builds_each_kind() -> None:
    assert isinstance(make_reward("math"), ExactAnswerReward)
    code = make_reward(" Code ", timeout_s=2.0, memory_mb=256, workers=1)
    assert isinstance(code, UnitTestReward) and code.limits.timeout_s == 2.0 and code.limits.memory_mb == 256
    judge = make_reward("judge", judge=ListJudge(["[[5]]"]))
    assert isinstance(judge, JudgeReward) and judge.score(["p"], ["a"], [None]) == [5.0]
    for reward in (make_reward("math"), code, judge):
        assert isinstance(reward, Reward) and reward.name in REWARD_NAMES


def test_make_reward_errors_are_one_line_with_a_fix() -> None:
    with pytest.raises(BenchError) as info:
        make_reward("maths")
    text = str(info.value)
    assert "\n" not in text and "did you mean 'math'?" in text
    assert all(name in text for name in REWARD_NAMES) and info.value.fix
    with pytest.raises(BenchError, match="valid rewards: math, math_steps, code, reward_model, judge"):
        make_reward("bleu")
    with pytest.raises(BenchError, match="takes no argument"):
        make_reward("math:gsm8k")
    with pytest.raises(BenchError, match=re.escape("bad options for reward 'code'")) as info:
        make_reward("code", temperature=0.5)
    assert "timeout_s" in str(info.value)
    with pytest.raises(BenchError, match="bad options for reward 'math'"):
        make_reward("math", tolerance=0.1)


def test_math_steps_reward_gives_verified_partial_credit() -> None:
    from fusers._rewards import ArithmeticStepsReward

    reward = make_reward("math_steps")
    assert isinstance(reward, ArithmeticStepsReward)
    responses = ["7 - 3 = 4. 4 * 8 = 32. 32 * 7 = 224. The answer is 224.",  # 3 steps + answer, all right
                 "7 - 3 = 4. 4 * 8 = 30. The answer is 30.",  # 1 of 2 steps, wrong answer
                 "9 - 9 = 39. The answer is 39.\nQ: What is 1 + 1?\nA: 1 + 1 = 2.",  # run-on ignored
                 "#\n#\n#", "", "8 / 3 = 2. 8 / 4 = 2."]
    scores = reward.score(["p"] * 6, responses, ["224", "224", "0", "1", "1", None])
    assert scores == [1.0, pytest.approx(1 / 3), 0.0, 0.0, 0.0, 0.5]
    with pytest.raises(BenchError):
        make_reward("math_steps:x")

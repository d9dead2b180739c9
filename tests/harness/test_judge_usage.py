"""Judge accounting: the tokens LLM judges are sent and write, counted per judge, recorded per run (computed or taken
from the cache), shown by `bench runs` with a cost at ``--judge-price``.

Judges are the fake OpenAI-compatible server of ``tests/harness/test_judge.py``; runs go through the runner with the
torch-free fake plugins (``tests/harness/fake_plugins.py``) and a suite of this file's that judges with a real
:class:`~harness.judge.HttpJudge`."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from fusers._rewards import JudgeReward, judge_usage
from harness import registry
from harness.api import EvalResult, Score, Suite
from harness.errors import BenchError
from harness.judge import HttpJudge, JudgeUsage, cost_usd, parse_price, usage_line, usage_record
from harness.store import Store
from tests.conftest import bench
from tests.harness import fake_plugins
from tests.harness.test_judge import completion, serving


def with_usage(content: str, prompt_tokens: int, completion_tokens: int) -> tuple[int, str]:
    """A chat completion that reports its token counts, as OpenAI's API does."""
    return 200, json.dumps({**completion(content), "usage": {"prompt_tokens": prompt_tokens,
                                                             "completion_tokens": completion_tokens,
                                                             "total_tokens": prompt_tokens + completion_tokens}})


def test_http_judge_adds_up_the_reported_usage_and_counts_unmetered_replies() -> None:
    def reply(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        return "[[5]]" if text == "silent" else with_usage("[[5]]", len(text), 3)  # "silent": no usage reported

    with serving(reply) as server:
        judge = HttpJudge(server.url, "j", workers=3)
        judge.complete([[{"role": "user", "content": t}] for t in ("abc", "defgh", "silent", "ij")])
    assert (judge.usage.requests, judge.usage.prompt_tokens, judge.usage.completion_tokens) == (4, 3 + 5 + 2, 3 * 3)
    assert judge.usage.unmetered == 1
    record = usage_record(judge)
    assert record == {"judge": judge.describe(), "requests": 4, "prompt_tokens": 10, "completion_tokens": 9,
                      "unmetered": 1}
    assert "lower bound" in (usage_line({**record, "cached_prompt_tokens": 0, "cached_completion_tokens": 0}) or "")


def test_a_judge_that_was_sent_nothing_has_no_record() -> None:
    class Plain:
        def complete(self, conversations: Any) -> list[str]:
            return []

        def describe(self) -> str:
            return "plain"

    assert usage_record(Plain()) is None
    unused = HttpJudge("http://127.0.0.1:9/v1")
    assert usage_record(unused) is None and unused.usage == JudgeUsage()


@pytest.mark.parametrize(("text", "expected"), [("0.0025,0.01", (0.0025, 0.01)), (" 1 , 2 ", (1.0, 2.0)),
                                                ("0,0", (0.0, 0.0))])
def test_parse_price(text: str, expected: tuple[float, float]) -> None:
    assert parse_price(text) == expected


@pytest.mark.parametrize("text", ["0.01", "a,b", "1,2,3", "-1,2", "nan,1"])
def test_a_bad_price_is_a_one_line_error(text: str) -> None:
    with pytest.raises(BenchError, match="--judge-price") as e:
        parse_price(text)
    assert "\n" not in str(e.value) and "per 1k" in (e.value.fix or "")


def test_cost() -> None:
    assert cost_usd(12_000, 3_000, (0.0025, 0.01)) == pytest.approx(12 * 0.0025 + 3 * 0.01)


def test_profuser_judge_reward_reports_its_usage() -> None:
    """ProFuser puts what its judge reward spent into the fusion's details (``judge_usage``), recorded by the runner
    as the run's ``fuse`` stage."""
    with serving(lambda body: with_usage("Rating: [[6]]", 40, 7)) as server:
        reward = JudgeReward(url=server.url, model="j")
        assert reward.score(["p1", "p2"], ["r1", "r2"], [None, None]) == [6.0, 6.0]
    assert judge_usage([reward, object()]) == [{"judge": reward.judge.describe(), "requests": 2, "prompt_tokens": 80,
                                                "completion_tokens": 14, "unmetered": 0}]


# --- recorded per run ------------------------------------------------------------------------------------------


class JudgedSuite(Suite):
    """Sends each model's quality to the judge at ``judge_url`` ``items`` times: a suite that judges, as MT-Bench."""

    name: ClassVar[str] = "judgedsuite"
    version: ClassVar[str] = "1"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        judge_url: str
        items: int = 3

    def evaluate(self, lm: Any, cfg: Any, ctx: Any) -> EvalResult:
        judge = HttpJudge(cfg.judge_url, "judge-x")
        replies = judge.complete([[{"role": "user", "content": f"{lm.quality} #{i}"}] for i in range(cfg.items)])
        record = usage_record(judge)
        return EvalResult(scores=[Score("t", "score", float(len(replies)))], judge_usage=[record] if record else [])


@pytest.fixture
def judged(fake_plugins_registered: dict[str, Any]) -> Any:
    registry.suites().register("judgedsuite", JudgedSuite)
    try:
        with serving(lambda body: with_usage("[[7]]", 1000, 250)) as server:
            yield {**fake_plugins_registered, "url": server.url, "server": server}
    finally:
        registry.suites().unregister("judgedsuite")


def runs_lines(db: str, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    capsys.readouterr()
    assert bench("runs", "--db", db, *args) == 0
    return capsys.readouterr().out.splitlines()


def test_a_run_records_its_judge_tokens_and_bench_runs_shows_them_with_a_cost(judged: dict[str, Any],
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    db = judged["db"]
    args = ("--fuser", "fake", "--source", judged["a"], "--source", judged["b"], "--suite", "judgedsuite",
            "--set", f"judgedsuite.judge_url={judged['url']}", "--db", db)
    assert bench("run", *args, "--judge-price", "0.01,0.03") == 0
    assert "judge tokens 9,000 prompt + 2,250 completion in 9 requests; $0.1575" in capsys.readouterr().err
    assert len(judged["server"].requests) == 9  # fused model, two sources, three items each
    first = Store(db).runs()[0]["id"]
    assert json.loads(Store(db).get_run(first)["config"])["judge_price"] == [0.01, 0.03]

    assert bench("run", *args) == 0  # every evaluation comes from the cache now: no judge call, no token spent
    assert len(judged["server"].requests) == 9
    second = next(r["id"] for r in Store(db).runs() if r["id"] != first)
    usage = Store(db).judge_usage([first, second])
    assert usage[first] == {"requests": 9, "prompt_tokens": 9000, "completion_tokens": 2250, "unmetered": 0,
                            "cached_prompt_tokens": 0, "cached_completion_tokens": 0}
    assert usage[second]["requests"] == 0 and usage[second]["cached_prompt_tokens"] == 9000

    lines = runs_lines(db, capsys)
    assert "judge 9.0k+2.2k tok $0.1575" in next(line for line in lines if line.startswith(first))
    assert "judge" not in next(line for line in lines if line.startswith(second))
    priced = runs_lines(db, capsys, "--judge-price", "1,1")  # for runs that recorded no price of their own
    assert "$0.1575" in next(line for line in priced if line.startswith(first))
    as_json = json.loads("\n".join(runs_lines(db, capsys, "--json")))
    assert {r["id"]: r["judge_usage"]["cached_completion_tokens"] for r in as_json} == {first: 0, second: 2250}

    assert bench("report", "--db", db, "--run", first, "--out", str(judged["tmp"] / "report")) == 0
    page = (judged["tmp"] / "report" / "report.html").read_text()
    assert "judge tokens 9,000 prompt + 2,250 completion in 9 requests; $0.1575" in page  # the run's provenance


def test_bench_eval_takes_a_judge_price_too(judged: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("eval", "--model", judged["a"], "--suite", "judgedsuite", "--set",
                 f"judgedsuite.judge_url={judged['url']}", "--set", "judgedsuite.items=2", "--judge-price", "0,0.5",
                 "--db", judged["db"]) == 0
    assert "judge tokens 2,000 prompt + 500 completion in 2 requests; $0.2500" in capsys.readouterr().err


def test_a_bad_judge_price_flag_exits_2(judged: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("eval", "--model", judged["a"], "--suite", "judgedsuite", "--set",
                 f"judgedsuite.judge_url={judged['url']}", "--judge-price", "cheap", "--db", judged["db"]) == 2
    assert "--judge-price 'cheap' is not two numbers" in capsys.readouterr().err


class RewardedFuser(fake_plugins.FakeAverage):
    """The fake average, with what a judge reward spent in its details, as ProFuser reports it."""

    name: ClassVar[str] = "rewarded"

    def fuse(self, sources: Any, target: Any, cfg: Any, ctx: Any) -> Any:
        result = super().fuse(sources, target, cfg, ctx)
        result.details["judge_usage"] = [{"judge": "reward-judge", "requests": 4, "prompt_tokens": 400,
                                          "completion_tokens": 40, "unmetered": 1}]
        return result


def test_a_fusers_judge_reward_is_recorded_as_its_fuse_stage(fake_plugins_registered: dict[str, Any]) -> None:
    env = fake_plugins_registered
    registry.fusers().register("rewarded", RewardedFuser)
    try:
        args = ("run", "--fuser", "rewarded", "--source", env["a"], "--source", env["b"], "--suite", "fakesuite",
                "--db", env["db"])
        assert bench(*args) == 0
        assert bench(*args) == 0  # the fused model from the artifact cache: its reward's tokens were spent before
    finally:
        registry.fusers().unregister("rewarded")
    store = Store(env["db"])
    rows = store.db.query("select run_id, stage, judge, prompt_tokens, unmetered, cached from judge_usage")
    by_cached = {r["cached"]: r for r in rows}
    assert {(r["stage"], r["judge"], r["prompt_tokens"], r["unmetered"]) for r in by_cached.values()} == {
        ("fuse", "reward-judge", 400, 1)}
    assert set(by_cached) == {0, 1} and by_cached[0]["run_id"] != by_cached[1]["run_id"]
    assert store.judge_usage([by_cached[0]["run_id"]])[by_cached[0]["run_id"]]["requests"] == 4

"""HumanEval's instruct mode and chat template: reading the program from a reply, prompts, stops, config, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import sqlite_utils
from pydantic import ValidationError

from evals.humaneval import (
    INSTRUCTION,
    OPT_IN_ENV,
    Config,
    HumanEvalMini,
    MiniConfig,
    code_from_reply,
    generated_problems,
    instruct_completion,
    instruct_message,
    load_problems,
    score,
    score_predictions,
)
from harness.api import EvalContext
from harness.errors import BenchError
from tests.conftest import bench
from tests.evals.test_humaneval import ScriptedLM


@pytest.fixture(autouse=True)
def no_opt_in_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPT_IN_ENV, raising=False)


# --- the code of a reply -------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "code"), [
    ("Sure! Here it is:\n```python\ndef f(x):\n    return x\n```\nIt returns x.\n", "def f(x):\n    return x\n"),
    ("```\n    return x\n```", "    return x\n"),  # no language: the first block
    ("```text\nusage\n```\nand\n```py\nreturn 1\n```\n```python\nreturn 2\n```", "return 1\n"),  # first Python one
    ("```sh\npip install x\n```\n```python3\nreturn 3\n```", "return 3\n"),
    ("```json\n{}\n```\ntext", "{}\n"),  # no Python block: the first block
    ("    return x + 1\n", "    return x + 1\n"),  # no fence: the reply
    ("Here:\n```python\ndef f(x):\n    return x  # cut off by the token cap", "def f(x):\n    return x  # cut off by "
                                                                         "the token cap"),
    ("```python\nreturn x```", "return x"),  # the closing fence at the end of a line
])
def test_code_from_reply(reply: str, code: str) -> None:
    assert code_from_reply(reply) == code


def _real(task_id: str):
    return next(p for p in load_problems() if p.task_id == task_id)


def _body(problem) -> str:
    return problem.canonical_solution


def _whole(problem) -> str:
    return problem.prompt + problem.canonical_solution


REPLY_STYLES = {
    "whole function, prose before and after": lambda p: f"Here is the function:\n```python\n{_whole(p)}```\n\n"
                                                        "It loops over the pairs once.",
    "body only, indented, in a fence": lambda p: f"```python\n{_body(p)}```",
    "body only, unindented, no fence": lambda p: textwrap.dedent(_body(p)),
    "whole function, no fence": lambda p: _whole(p),
    "whole function after a non-Python block": lambda p: f"```text\nexample\n```\n```python\n{_whole(p)}\n```",
}


@pytest.mark.parametrize("style", list(REPLY_STYLES))
def test_every_reply_style_of_a_right_answer_passes_and_a_wrong_one_fails(style: str) -> None:
    """Real problems with imports (HumanEval/0), a helper in the prompt (HumanEval/38: the reply's body calls it) and a
    humaneval-mini one; the replies carry the canonical solutions, so they pass only when the program is right."""
    problems = [_real("HumanEval/0"), _real("HumanEval/38"), generated_problems(1, 0)[0]]
    cfg = Config(allow_code_exec=True, mode="instruct")
    right = score(problems, [[REPLY_STYLES[style](p)] for p in problems], cfg)
    assert [s.metrics["result"] for s in right.samples] == ["passed"] * 3
    wrong = score(problems, [[REPLY_STYLES[style](p).replace("return", "return 0 and")] for p in problems], cfg)
    assert [s.metrics["passed"] for s in wrong.samples] == [0.0] * 3


def test_the_program_is_the_prompt_then_the_code() -> None:
    problem = generated_problems(1, 0)[0]
    whole = f"```python\n{problem.prompt}    return 1\n```"
    assert instruct_completion(problem, whole) == f"\n{problem.prompt}    return 1\n"
    assert instruct_completion(problem, "```python\nx = 1\nreturn x\n```") == "    x = 1\n    return x\n"
    result = score([problem], [[whole]], MiniConfig(allow_code_exec=True, mode="instruct"))
    (sample,) = result.samples
    assert sample.output == whole and sample.extracted == problem.prompt + f"\n{problem.prompt}    return 1\n"


def test_a_reply_read_as_a_completion_fails_to_load() -> None:
    """What the issue saw: a chat reply appended to the prompt as if it were the function's body."""
    problem = generated_problems(1, 0)[0]
    reply = f"```python\n{problem.prompt}{problem.canonical_solution}```\nThis adds 3."
    completion = score([problem], [[reply]], MiniConfig(allow_code_exec=True))
    assert "SyntaxError" in completion.samples[0].metrics["result"]
    assert score([problem], [[reply]], MiniConfig(allow_code_exec=True, mode="instruct")).scores[0].value == 1.0


def test_predictions_are_replies_in_instruct_mode(tmp_path: Path) -> None:
    problems = generated_problems(2, 0)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"task_id": "{p.task_id}", "completion": {_json(f"```python{chr(10)}{_whole(p)}```")}}}\n'
                            for p in problems))
    assert score_predictions(path, MiniConfig(allow_code_exec=True, n_problems=2, mode="instruct")).scores[0].value == 1
    assert score_predictions(path, MiniConfig(allow_code_exec=True, n_problems=2)).scores[0].value == 0


def _json(text: str) -> str:
    import json

    return json.dumps(text)


# --- the settings --------------------------------------------------------------------------------


def test_the_chat_template_follows_the_mode_unless_set() -> None:
    assert Config().apply_chat_template is False and Config().mode == "completion"
    assert Config(mode="instruct").apply_chat_template is True
    assert Config(apply_chat_template=True).model_dump()["mode"] == "completion"
    with pytest.raises(ValidationError, match="mode=instruct prompts through the chat template"):
        MiniConfig(mode="instruct", apply_chat_template=False)
    with pytest.raises(ValidationError):
        Config(mode="chat")
    dumps = {str(Config(**kw).model_dump(mode="json")) for kw in
             ({}, {"apply_chat_template": True}, {"mode": "instruct"}, {"mode": "instruct", "apply_chat_template": True})}
    assert len(dumps) == 3  # the suite arguments (and so the evaluation key) tell the three ways apart


# --- prompts, stops and the error for a model without a template ---------------------------------


class ChatScriptedLM(ScriptedLM):
    """A scripted LM with a real tokenizer (the micro zoo's chat template) and lm-eval's HFLM rendering of turns."""

    def __init__(self, answer, tokenizer) -> None:
        super().__init__(answer)
        self.tokenizer = tokenizer

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        from lm_eval.models.huggingface import HFLM

        return HFLM.apply_chat_template(self, chat_history, add_generation_prompt)  # type: ignore[arg-type]

    chat_template_args: dict = {}


def test_instruct_prompt_and_stops_through_the_chat_template(zoo_home: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from harness import zoo

    tok = AutoTokenizer.from_pretrained(zoo.resolve("llama-code"))
    problems = generated_problems(2, 0)
    lm = ChatScriptedLM(lambda r: f"Sure.\n```python\n{r.doc['prompt']}{r.doc['canonical_solution']}```\nDone.", tok)
    result = HumanEvalMini().evaluate(lm, MiniConfig(allow_code_exec=True, mode="instruct", n_problems=2),
                                      EvalContext(workdir=tmp_path))
    assert result.scores[0].value == 1.0
    first = lm.requests[0]
    message = instruct_message(problems[0])
    assert message.startswith(INSTRUCTION) and f"```python\n{problems[0].prompt.rstrip()}\n```" in message
    assert first.args[0] == tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                    add_generation_prompt=True)
    assert first.args[0].endswith("<|assistant|>\n")
    assert first.args[1]["until"] == ["</s>"]  # the turn's end; no "\ndef" (a reply restates the function)

    lm = ChatScriptedLM(lambda r: r.doc["canonical_solution"], tok)
    HumanEvalMini().evaluate(lm, MiniConfig(allow_code_exec=True, apply_chat_template=True, n_problems=1),
                             EvalContext(workdir=tmp_path))
    assert lm.requests[0].args[0].endswith(f"{problems[0].prompt}</s>\n<|assistant|>\n")  # the bare prompt as the turn
    assert lm.requests[0].args[1]["until"][:2] == ["\nclass", "\ndef"] and "</s>" in lm.requests[0].args[1]["until"]


def test_a_model_without_a_chat_template_is_refused_in_one_line(tmp_path: Path) -> None:
    lm = ScriptedLM(lambda r: "")
    with pytest.raises(BenchError) as err:
        HumanEvalMini().evaluate(lm, MiniConfig(allow_code_exec=True, mode="instruct"), EvalContext(workdir=tmp_path))
    assert err.value.one_line() == (
        "humaneval-mini: mode=instruct prompts through the model's chat template, and the model (ScriptedLM) has none "
        "(fix: use mode=completion for a base model, or evaluate a chat/instruct model whose tokenizer has a chat "
        "template)")
    assert lm.requests == []  # refused before anything was generated


def test_cli_instruct_mode_end_to_end_on_the_micro_zoo(private_home: Path, tmp_path: Path, micro_llama: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """zoo:llama-code has the micro zoo's chat template; micro_llama (random weights, no template) is refused."""
    db = tmp_path / "b.db"
    common = ["--suite", "humaneval-mini", "--allow-code-exec", "--set", "humaneval-mini.n_problems=2",
              "--set", "humaneval-mini.max_gen_toks=8", "--db", str(db)]
    assert bench("eval", "--model", "zoo:llama-code", *common) == 0
    assert bench("eval", "--model", "zoo:llama-code", "--set", "humaneval-mini.mode=instruct", *common) == 0
    rows = list(sqlite_utils.Database(db).query(
        "select r.config, s.eval_key, s.value, s.n from scores s join runs r on r.id = s.run_id order by r.started_at"))
    assert len(rows) == 2 and rows[0]["eval_key"] != rows[1]["eval_key"] and [r["n"] for r in rows] == [2, 2]
    programs = [r["extracted"] for r in sqlite_utils.Database(db).query(
        "select extracted from samples where run_id = (select id from runs order by started_at desc limit 1)")]
    assert len(programs) == 2 and all(p.startswith("def ") for p in programs)
    capsys.readouterr()
    assert bench("eval", "--model", str(micro_llama), "--set", "humaneval-mini.mode=instruct", *common) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.endswith(f"and the model {micro_llama} has none (fix: use mode=completion for a base model, or evaluate "
                         "a chat/instruct model whose tokenizer has a chat template)")

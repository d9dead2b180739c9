"""BBH with the chat template: lm-eval renders the exemplars as turns, generation ends at the turn's end, the setting is
part of the evaluation key, and a model without a template is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils
from pydantic import ValidationError

from evals.bbh import BBHMini, Config, MiniConfig
from harness.api import EvalContext
from harness.chat_template import can_render_chat
from harness.errors import BenchError
from harness.skills import bbh_items as gen
from tests.conftest import bench

END_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class ChatOracle:
    """An lm-eval LM that renders turns with a real tokenizer (HFLM's method) and answers bbh-mini items correctly."""

    def __new__(cls, tokenizer):
        from lm_eval.api.model import LM
        from lm_eval.models.huggingface import HFLM

        answers = {i.input: i.target for t in gen.GENERATORS for i in gen.generate(t, 3, seed=0)}

        class Oracle(LM):
            chat_template_args: dict = {}

            def __init__(self) -> None:
                super().__init__()
                self.tokenizer = tokenizer
                self.requests: list = []

            apply_chat_template = HFLM.apply_chat_template

            @property
            def tokenizer_name(self) -> str:
                return "oracle"

            def generate_until(self, requests, disable_tqdm: bool = False):
                self.requests.extend(requests)
                return [answers[r.doc["input"]] for r in requests]

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

        return Oracle()


@pytest.fixture
def chat_tokenizer(zoo_home: Path):
    """The micro zoo's tokenizer with a template whose turns end in ``<|end|>`` (not the end-of-sequence token)."""
    from transformers import AutoTokenizer

    from harness import zoo

    tok = AutoTokenizer.from_pretrained(zoo.resolve("llama-base"))
    tok.chat_template = END_TEMPLATE
    return tok


def test_exemplars_become_turns_and_generation_stops_at_the_turns_end(tmp_path: Path, chat_tokenizer) -> None:
    lm = ChatOracle(chat_tokenizer)
    cfg = MiniConfig(tasks=["navigate"], n_per_task=3, apply_chat_template=True)
    assert cfg.fewshot_as_multiturn is True  # lm-eval's default with the template
    result = BBHMini().evaluate(lm, cfg, EvalContext(workdir=tmp_path))
    assert {s.task: s.value for s in result.scores}["navigate"] == 1.0
    prompt, gen_kwargs = lm.requests[0].args
    shots = gen.exemplars("navigate")
    assert prompt.startswith("<|system|>\n") and prompt.endswith("A:<|end|>\n<|assistant|>\n")
    assert prompt.count("<|user|>\n") == len(shots) + 1 and prompt.count("<|assistant|>\n") == len(shots) + 1
    assert f"<|assistant|>\n{shots[0].target}<|end|>" in prompt
    assert gen_kwargs["until"] == ["\n\nQ:", "</s>", "<|end|>"]

    lm = ChatOracle(chat_tokenizer)
    one_turn = MiniConfig(tasks=["navigate"], n_per_task=3, apply_chat_template=True, fewshot_as_multiturn=False)
    BBHMini().evaluate(lm, one_turn, EvalContext(workdir=tmp_path))
    prompt = lm.requests[0].args[0]
    assert prompt.count("<|user|>\n") == 1 and prompt.count("<|assistant|>\n") == 1
    assert f"A: {shots[0].target}\n\nQ: " in prompt  # the exemplars inside the one user turn


def test_plain_prompts_stay_as_they_were(tmp_path: Path, chat_tokenizer) -> None:
    lm = ChatOracle(chat_tokenizer)
    BBHMini().evaluate(lm, MiniConfig(tasks=["navigate"], n_per_task=1), EvalContext(workdir=tmp_path))
    prompt, gen_kwargs = lm.requests[0].args
    assert "<|" not in prompt and prompt.startswith("Given a series of navigation instructions")
    assert gen_kwargs["until"] == ["\n\nQ:", "</s>"]


def test_the_settings() -> None:
    assert Config().apply_chat_template is False and Config().fewshot_as_multiturn is False
    assert Config(apply_chat_template=True).fewshot_as_multiturn is True
    with pytest.raises(ValidationError, match="fewshot_as_multiturn=true needs apply_chat_template=true"):
        MiniConfig(fewshot_as_multiturn=True)
    assert len({str(MiniConfig(**kw).model_dump()) for kw in (
        {}, {"apply_chat_template": True}, {"apply_chat_template": True, "fewshot_as_multiturn": True},
        {"apply_chat_template": True, "fewshot_as_multiturn": False})}) == 3


def test_a_model_without_a_template_is_refused_before_generating(tmp_path: Path, chat_tokenizer) -> None:
    chat_tokenizer.chat_template = None
    lm = ChatOracle(chat_tokenizer)
    assert not can_render_chat(lm)
    with pytest.raises(BenchError, match=r"^bbh-mini: apply_chat_template prompts through the model's chat template, "
                                         r"and the model .*llama-base has none \(fix: drop --apply-chat-template"):
        BBHMini().evaluate(lm, MiniConfig(apply_chat_template=True), EvalContext(workdir=tmp_path))
    assert lm.requests == []


def test_cli_flag_end_to_end_on_the_micro_zoo(private_home: Path, tmp_path: Path, micro_llama: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "b.db"
    common = ["--model", "zoo:llama-base", "--suite", "bbh-mini", "--set", "bbh-mini.tasks=[navigate]",
              "--set", "bbh-mini.n_per_task=2", "--set", "bbh-mini.max_gen_toks=4", "--db", str(db)]
    assert bench("eval", *common) == 0
    assert bench("eval", *common, "--apply-chat-template") == 0
    keys = [r["eval_key"] for r in sqlite_utils.Database(db).query(
        "select s.eval_key from scores s join runs r on r.id = s.run_id where s.task = 'navigate' order by r.started_at")]
    assert len(keys) == 2 and keys[0] != keys[1]
    capsys.readouterr()
    assert bench("eval", "--model", str(micro_llama), *common[2:], "--apply-chat-template") == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: bbh-mini: apply_chat_template prompts through the model's chat template, and the "
                           f"model {micro_llama} has none (fix: drop --apply-chat-template")
    assert bench("eval", "--model", "zoo:llama-base", "--suite", "perplexity", "--apply-chat-template",
                 "--db", str(db)) == 2
    assert ("--apply-chat-template applies to suite(s) bbh, bbh-mini, humaneval, humaneval-mini, not to perplexity"
            in capsys.readouterr().err)

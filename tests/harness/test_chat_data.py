"""The chat corpus: built from the training split only, balanced, rendered with exact response spans, JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import chat_data as C
from harness.errors import BenchError

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class FakeTokenizer:
    """apply_chat_template with a Jinja template, like transformers (enough for rendering)."""

    def __init__(self, template: str | None = TEMPLATE):
        self.chat_template = template

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        import jinja2

        return jinja2.Template(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt)


@pytest.fixture(scope="module")
def conversations() -> list[C.Conversation]:
    return C.default_conversations(90, seed=3)


def test_default_corpus_is_deterministic_balanced_and_short(conversations) -> None:
    again = C.default_conversations(90, seed=3)
    assert [c.messages for c in again] == [c.messages for c in conversations]
    assert [c.messages for c in C.default_conversations(90, seed=4)] != [c.messages for c in conversations]
    assert [c.domain for c in conversations[:6]] == ["code", "docs", "math"] * 2
    assert {d: sum(c.domain == d for c in conversations) for d in ("code", "docs", "math")} == {
        "code": 30, "docs": 30, "math": 30}
    assert all(len(c.messages[0].content) + len(c.response) <= C.MAX_CHARS for c in conversations)
    assert all([m.role for m in c.messages] == ["user", "assistant"] for c in conversations)
    assert len(C.default_conversations(10, domains=("math",))) == 10
    with pytest.raises(ValueError):
        C.default_conversations(3, domains=("poetry",))


def test_math_references_are_the_answers_and_code_answers_omit_the_docstring(conversations) -> None:
    for c in conversations:
        if c.domain == "math":
            assert c.response.endswith(f"The answer is {c.reference}.")
        if c.domain == "code":
            assert c.response.lstrip().startswith("def ") and '"""' not in c.response.split("\n", 2)[1]


def test_only_the_training_split_is_used() -> None:
    from harness.corpus import is_heldout_file, math_examples, source_files

    heldout_functions = {f"{f.module}.{f.qualname}" for f in C._functions("heldout")}
    assert heldout_functions and not heldout_functions & {f"{f.module}.{f.qualname}" for f in C._functions("train")}
    heldout_files = {p for p, _ in source_files() if is_heldout_file(p)}
    assert all(f"{f.module.replace('.', '/')}.py" not in heldout_files for f in C._functions("train"))
    train_math = {c.messages[0].content for c in C.default_conversations(300, domains=("math",))}
    heldout_q = {p.question for p in math_examples(300, seed=10_000, split="heldout")}
    assert not any(q in text for q in heldout_q for text in train_math)


def test_render_spans_slice_the_answers_with_the_end_of_turn_marker() -> None:
    conv = C.Conversation("x", (C.Message("system", "Be brief."), C.Message("user", "Say 4"),
                                C.Message("assistant", "4"), C.Message("user", "Again?"),
                                C.Message("assistant", "4 again")))
    rendered = C.render(conv, FakeTokenizer())
    assert [rendered.text[a:b] for a, b in rendered.response_spans] == ["4</s>", "4 again</s>"]
    assert C.end_of_turn(FakeTokenizer()) == ["</s>"]
    plain = C.render(conv, FakeTokenizer(None))
    assert plain.text.startswith("System: Be brief.\nUser: Say 4\nAssistant: 4\n")
    assert [plain.text[a:b] for a, b in plain.response_spans] == ["4", "4 again"]
    assert C.render_prompt(conv, FakeTokenizer()).endswith("<|user|>\nAgain?</s>\n<|assistant|>\n")
    assert C.render_prompt(conv, FakeTokenizer(None)).endswith("User: Again?\nAssistant:")
    # an answer that also appears inside the question is found after the question
    quoted = C.Conversation("q", (C.Message("user", "Repeat: yes"), C.Message("assistant", "yes")))
    r = C.render(quoted, FakeTokenizer())
    (a, b), = r.response_spans
    assert a > r.text.index("Repeat") and r.text[a:b] == "yes</s>"
    assert C.with_response(quoted, "no").messages[-1] == C.Message("assistant", "no")


def test_jsonl_round_trip_in_both_styles(tmp_path: Path, conversations) -> None:
    path = C.save_conversations(conversations[:9], tmp_path / "c.jsonl")
    loaded = C.load_conversations(path)
    assert [(c.id, c.messages, c.domain, c.reference) for c in loaded] == [
        (c.id, c.messages, c.domain, c.reference) for c in conversations[:9]]
    share = tmp_path / "s.jsonl"
    share.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                                 "tests": "assert True"}) + "\n\n")
    (c,) = C.load_conversations(share)
    assert c.messages == (C.Message("user", "hi"), C.Message("assistant", "yo")) and c.tests == "assert True"


@pytest.mark.parametrize("line, problem", [
    ("not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"text": "no messages"}', "no 'messages'"),
    ('{"prompt": "q", "response": 3}', "turn 2"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "end with an assistant turn"),
    ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}', "alternate"),
    ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "turn 1"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(BenchError) as e:
        C.load_conversations(path)
    assert "bad.jsonl:2" in str(e.value) and problem in str(e.value)


def test_empty_or_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BenchError, match="no conversations"):
        C.load_conversations(tmp_path / "empty.jsonl")
    with pytest.raises(BenchError, match="does not exist"):
        C.load_conversations(tmp_path / "missing.jsonl")


def test_functions_are_cut_by_ast_line_numbers_even_after_a_form_feed() -> None:
    import ast

    # some stdlib files (e.g. Debian's email/__init__.py) hold a form feed, which str.splitlines counts as
    # a line break and ast does not
    source = 'import os\n\x0c\ndef f(a):\n    """A docstring long enough to count."""\n    return a\n'
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    assert C._without_docstring(C._AST_LINES.split(source), node) == "def f(a):\n    return a"

"""The prompts an LLM judge grades an answer with: FuseBench's own, or FastChat's ``judge_prompts.jsonl``.

A prompt plays one of four roles: ``single`` / ``single-ref`` grade a first reply (``-ref``: against a
reference answer), ``multi`` / ``multi-ref`` grade the second reply of a two-turn conversation. Each is
a system prompt and a ``str.format`` template over the placeholders its role offers (``question``,
``answer``, ``question_1``, ``answer_1``, ``ref_answer_1`` ...; FastChat's convention). Shared by the
MT-Bench suite, which picks the role per answer, and ProFuser's ``judge`` reward, which grades single
replies. The judge itself and the rating rules are in :mod:`harness.judge`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import BenchError, read_jsonl

if TYPE_CHECKING:
    from harness.judge import Message


@dataclass(frozen=True)
class JudgePrompt:
    """A system prompt and a user template with ``str.format`` placeholders (FastChat's convention)."""

    name: str
    system: str
    template: str

    def messages(self, fields: dict[str, str]) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return [*system, {"role": "user", "content": self.template.format(**fields)}]


_FORMAT_RULE = ("Write a short justification first. Then, on the last line, give your score from 1 (useless) "
                "to 10 (excellent) in double square brackets, exactly like this with N replaced: Rating: [[N]]")
_SYSTEM = ("You grade the replies of AI assistants. You are strict, fair and consistent, and you never let "
           "the length of a reply, or its confidence, stand in for its quality.")

#: FuseBench's own judge prompts, by role: single / single-ref (turn 1), multi / multi-ref (turn 2).
DEFAULT_PROMPTS: dict[str, JudgePrompt] = {
    "single": JudgePrompt("fusebench-single", _SYSTEM, (
        "Grade the assistant's reply to the user's request below. Consider whether it does what was "
        "asked, and how correct, relevant, clear and complete it is.\n" + _FORMAT_RULE + "\n\n"
        "=== User request ===\n{question}\n\n=== Assistant reply ===\n{answer}\n=== End of reply ===")),
    "single-ref": JudgePrompt("fusebench-single-ref", _SYSTEM, (
        "Grade the assistant's reply to the user's request below against the reference answer, which "
        "is correct. Correctness comes first: check the reply's result and steps against the reference "
        "and name any error. Then consider clarity and helpfulness.\n" + _FORMAT_RULE + "\n\n"
        "=== User request ===\n{question}\n\n=== Reference answer ===\n{ref_answer_1}\n\n"
        "=== Assistant reply ===\n{answer}\n=== End of reply ===")),
    "multi": JudgePrompt("fusebench-multi", _SYSTEM, (
        "Below is a conversation of two exchanges between a user and an assistant. Grade only the "
        "assistant's SECOND reply; the first exchange is context that the second request may build on. "
        "Consider whether it does what was asked, and how correct, relevant, clear and complete it is.\n"
        + _FORMAT_RULE + "\n\n"
        "=== User, first request ===\n{question_1}\n\n=== Assistant, first reply ===\n{answer_1}\n\n"
        "=== User, second request ===\n{question_2}\n\n=== Assistant, second reply (grade this) ===\n"
        "{answer_2}\n=== End of conversation ===")),
    "multi-ref": JudgePrompt("fusebench-multi-ref", _SYSTEM, (
        "Below is a conversation of two exchanges between a user and an assistant, and reference answers "
        "to both requests, which are correct. Grade only the assistant's SECOND reply, against the second "
        "reference answer. Correctness comes first: check the reply's result and steps and name any "
        "error. Then consider clarity and helpfulness.\n" + _FORMAT_RULE + "\n\n"
        "=== User, first request ===\n{question_1}\n\n=== Reference, first answer ===\n{ref_answer_1}\n\n"
        "=== User, second request ===\n{question_2}\n\n=== Reference, second answer ===\n{ref_answer_2}\n\n"
        "=== Assistant, first reply ===\n{answer_1}\n\n=== Assistant, second reply (grade this) ===\n"
        "{answer_2}\n=== End of conversation ===")),
}

#: Which FastChat ``judge_prompts.jsonl`` entry plays which role.
FASTCHAT_PROMPTS = {"single": "single-v1", "single-ref": "single-math-v1",
                    "multi": "single-v1-multi-turn", "multi-ref": "single-math-v1-multi-turn"}

# Placeholders each role can fill (turn 2 also offers ``question``/``answer`` = the second exchange).
_FIELDS = {
    "single": {"question", "answer", "question_1", "answer_1"},
    "single-ref": {"question", "answer", "question_1", "answer_1", "ref_answer_1"},
    "multi": {"question", "answer", "question_1", "answer_1", "question_2", "answer_2"},
    "multi-ref": {"question", "answer", "question_1", "answer_1", "question_2", "answer_2",
                  "ref_answer_1", "ref_answer_2"},
}


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """The four single-grading prompts of a FastChat ``judge_prompts.jsonl``, checked for placeholders."""
    file = Path(path).expanduser()
    fix = "give FastChat's judge_prompts.jsonl (entries with name, system_prompt, prompt_template)"
    by_name = {row.get("name"): (number, row) for number, row in read_jsonl(file, "judge prompt", fix)}
    prompts = {}
    for role, name in FASTCHAT_PROMPTS.items():
        if name not in by_name:
            raise BenchError(f"judge prompt file {file} has no entry named {name!r}", fix)
        number, row = by_name[name]
        system, template = row.get("system_prompt", ""), row.get("prompt_template")
        if not isinstance(template, str) or not isinstance(system, str):
            raise BenchError(f"{file}:{number}: {name} needs string system_prompt and prompt_template", fix)
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as e:
            raise BenchError(f"{file}:{number}: {name}'s prompt_template is not a valid template ({e})",
                             "escape literal braces as {{ and }}") from None
        unknown = used - _FIELDS[role]
        if unknown:
            raise BenchError(f"{file}:{number}: {name} uses unknown placeholder(s) {sorted(unknown)}",
                             f"use only {sorted(_FIELDS[role])}")
        prompts[role] = JudgePrompt(name, system, template)
    return prompts

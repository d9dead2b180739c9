"""The prompts an LLM judge grades an answer with: FuseBench's own, or FastChat's ``judge_prompts.jsonl``.

Single-answer grading: a prompt plays one of four roles: ``single`` / ``single-ref`` grade a first reply
(``-ref``: against a reference answer), ``multi`` / ``multi-ref`` grade the second reply of a two-turn
conversation. Pairwise judging (which of two answers is better) has the same four roles, ``pair``, ``pair-ref``,
``pair-multi``, ``pair-multi-ref``, over two assistants' answers (``answer_a``, ``answer_b``; ``answer_a_1`` ...
in two-turn conversations). Each prompt is a system prompt and a ``str.format`` template over the placeholders its
role offers (``question``, ``answer``, ``question_1``, ``answer_1``, ``ref_answer_1`` ...; FastChat's convention).
Shared by the MT-Bench suite, which picks the role per answer, and ProFuser's ``judge`` reward, which grades single
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

_PAIR_FORMAT_RULE = ("Compare the two replies and write a short justification first; the order in which they are "
                     "shown, their length and their confidence must not sway you. Then, on the last line, give your "
                     "verdict exactly like this: [[A]] if assistant A's reply is better, [[B]] if assistant B's reply "
                     "is better, [[C]] for a tie")
_PAIR_SYSTEM = ("You compare the replies of two AI assistants to the same request and say which is better. You are "
                "strict, fair and consistent.")

#: FuseBench's own pairwise prompts, by role: pair / pair-ref (turn 1), pair-multi / pair-multi-ref (turn 2).
DEFAULT_PAIR_PROMPTS: dict[str, JudgePrompt] = {
    "pair": JudgePrompt("fusebench-pair", _PAIR_SYSTEM, (
        "Which assistant's reply to the user's request below is better? Consider whether it does what was asked, "
        "and how correct, relevant, clear and complete it is.\n" + _PAIR_FORMAT_RULE + "\n\n"
        "=== User request ===\n{question}\n\n=== Assistant A's reply ===\n{answer_a}\n\n"
        "=== Assistant B's reply ===\n{answer_b}\n=== End of replies ===")),
    "pair-ref": JudgePrompt("fusebench-pair-ref", _PAIR_SYSTEM, (
        "Which assistant's reply to the user's request below is better? A reference answer, which is correct, is "
        "given: correctness comes first, so check each reply's result and steps against it and name any error. "
        "Then consider clarity and helpfulness.\n" + _PAIR_FORMAT_RULE + "\n\n"
        "=== User request ===\n{question}\n\n=== Reference answer ===\n{ref_answer_1}\n\n"
        "=== Assistant A's reply ===\n{answer_a}\n\n=== Assistant B's reply ===\n{answer_b}\n"
        "=== End of replies ===")),
    "pair-multi": JudgePrompt("fusebench-pair-multi", _PAIR_SYSTEM, (
        "Below are two conversations, each of two exchanges between the same user and an assistant. Which "
        "assistant's SECOND reply is better? The first exchange is context that the second request may build on. "
        "Consider whether it does what was asked, and how correct, relevant, clear and complete it is.\n"
        + _PAIR_FORMAT_RULE + "\n\n"
        "=== Conversation with assistant A ===\nUser: {question_1}\nAssistant A: {answer_a_1}\n"
        "User: {question_2}\nAssistant A (compare this): {answer_a_2}\n\n"
        "=== Conversation with assistant B ===\nUser: {question_1}\nAssistant B: {answer_b_1}\n"
        "User: {question_2}\nAssistant B (compare this): {answer_b_2}\n=== End of conversations ===")),
    "pair-multi-ref": JudgePrompt("fusebench-pair-multi-ref", _PAIR_SYSTEM, (
        "Below are two conversations, each of two exchanges between the same user and an assistant, and reference "
        "answers to both requests, which are correct. Which assistant's SECOND reply is better? Correctness comes "
        "first: check each second reply's result and steps against the second reference answer and name any "
        "error. Then consider clarity and helpfulness.\n" + _PAIR_FORMAT_RULE + "\n\n"
        "=== User, first request ===\n{question_1}\n\n=== Reference, first answer ===\n{ref_answer_1}\n\n"
        "=== User, second request ===\n{question_2}\n\n=== Reference, second answer ===\n{ref_answer_2}\n\n"
        "=== Conversation with assistant A ===\nAssistant A: {answer_a_1}\n"
        "Assistant A (compare this): {answer_a_2}\n\n"
        "=== Conversation with assistant B ===\nAssistant B: {answer_b_1}\n"
        "Assistant B (compare this): {answer_b_2}\n=== End of conversations ===")),
}

#: Which FastChat ``judge_prompts.jsonl`` entry plays which role: single-answer grading ...
FASTCHAT_PROMPTS = {"single": "single-v1", "single-ref": "single-math-v1",
                    "multi": "single-v1-multi-turn", "multi-ref": "single-math-v1-multi-turn"}
#: ... and pairwise judging.
FASTCHAT_PAIR_PROMPTS = {"pair": "pair-v2", "pair-ref": "pair-math-v1",
                         "pair-multi": "pair-v2-multi-turn", "pair-multi-ref": "pair-math-v1-multi-turn"}

# Placeholders each role can fill (turn 2 also offers ``question``/``answer`` = the second exchange).
_FIELDS = {
    "single": {"question", "answer", "question_1", "answer_1"},
    "single-ref": {"question", "answer", "question_1", "answer_1", "ref_answer_1"},
    "multi": {"question", "answer", "question_1", "answer_1", "question_2", "answer_2"},
    "multi-ref": {"question", "answer", "question_1", "answer_1", "question_2", "answer_2",
                  "ref_answer_1", "ref_answer_2"},
    "pair": {"question", "answer_a", "answer_b", "question_1", "answer_a_1", "answer_b_1"},
    "pair-ref": {"question", "answer_a", "answer_b", "question_1", "answer_a_1", "answer_b_1", "ref_answer_1"},
    "pair-multi": {"question", "answer_a", "answer_b", "question_1", "answer_a_1", "answer_b_1", "question_2",
                   "answer_a_2", "answer_b_2"},
    "pair-multi-ref": {"question", "answer_a", "answer_b", "question_1", "answer_a_1", "answer_b_1", "question_2",
                       "answer_a_2", "answer_b_2", "ref_answer_1", "ref_answer_2"},
}


def load_judge_prompts(path: str | Path, pairwise: bool = False) -> dict[str, JudgePrompt]:
    """The four single-grading prompts of a FastChat ``judge_prompts.jsonl`` (``pairwise``: its four pairwise ones,
    :data:`FASTCHAT_PAIR_PROMPTS`), checked for placeholders."""
    file = Path(path).expanduser()
    fix = "give FastChat's judge_prompts.jsonl (entries with name, system_prompt, prompt_template)"
    by_name = {row.get("name"): (number, row) for number, row in read_jsonl(file, "judge prompt", fix)}
    prompts = {}
    for role, name in (FASTCHAT_PAIR_PROMPTS if pairwise else FASTCHAT_PROMPTS).items():
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

"""Skills the embedded zoo's experts learn, in the suites' own formats, from items no suite ever scores.

Every generated item -- a ``bbh-mini`` question (:mod:`harness.skills.bbh_items`) or a ``humaneval-mini``
problem (:mod:`harness.skills.functions`) -- falls on one side of a fixed split decided by a hash of its task
and text (:func:`split_of`): the suites draw their test items and few-shot exemplars from the ``eval`` side
only, the zoo trains on the ``train`` side only. The split is a property of the item, not of a seed, so no
choice of ``data_seed`` and no number of training items can make the two meet (``tests/test_skills.py`` checks it over every task).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")


def split_of(task: str, text: str) -> Split:
    """The side of the train/eval split that the item of ``task`` whose text is ``text`` lies on (half each)."""
    digest = hashlib.sha256(f"{task}\0{text}".encode()).digest()
    return "train" if digest[0] & 1 else "eval"


#: The skill each zoo expert learns besides its domain's text, by member: one each, so that per task there is one
#: expert per family to inherit it from (the base learns none). Chosen by what a ~1M-parameter model learns in a
#: minute or two of CPU training (README "Skills in the zoo" has the measured accuracies and what was tried). The
#: bbh-mini tasks no member is trained on (:func:`held_out`) measure what nobody was taught.
ZOO_SKILLS: dict[str, tuple[str, ...]] = {
    "llama-code": ("humaneval_mini",),
    "llama-docs": ("hyperbaton",),
    "llama-math": ("object_counting",),
    "gpt2-code": ("dyck_languages",),
    "neox-docs": ("hyperbaton",),
    "mpt-math": ("object_counting",),
}


def skill_names() -> tuple[str, ...]:
    """Every skill a zoo member can be trained on: the bbh-mini tasks and ``humaneval_mini``."""
    from harness.skills import bbh_items

    return (*sorted(bbh_items.GENERATORS), "humaneval_mini")


def held_out() -> tuple[str, ...]:
    """The skills no zoo member is trained on (boolean_expressions, navigate, web_of_lies, ...)."""
    taught = {skill for group in ZOO_SKILLS.values() for skill in group}
    return tuple(s for s in skill_names() if s not in taught)


def training_documents(skills: Sequence[str], seed: int) -> Iterator[tuple[str, ...]]:
    """An endless, seeded stream of documents that teach ``skills``, from the train side of the split only.

    A bbh-mini task's document is what its suite's answer-only (``direct``) prompt looks like once solved:
    lm-eval's task description, then 2-6 solved questions. (Chain-of-thought documents taught nothing at this
    scale in the time a zoo build has: the README's "Skills in the zoo" has the measurements.) A
    ``humaneval_mini`` document is 2-4 solved problems (prompt and body). Skills take turns at random.

    A document comes in pieces, to be tokenised one by one and joined: a piece ends exactly where a suite's
    prompt ends (after the last question's ``A:``, after a function's docstring), so the tokens a model learns
    to answer with are the ones it must generate after that prompt. Tokenised whole, a tokenizer merges across
    the boundary (``'\n'`` + ``'    return'`` into one whitespace token; a SentencePiece-style BPE without
    whitespace splitting merges ``'A: 4'``), and the model never learns to begin an answer where the prompt stops.
    """
    from harness.skills import bbh_items

    unknown = [s for s in skills if s not in skill_names()]
    if unknown or not skills:
        raise ValueError(f"unknown skills {unknown} (known: {', '.join(skill_names())})")
    rng = random.Random(f"skills/{','.join(skills)}/{seed}")
    streams: dict[str, Iterator[Any]] = {}
    for skill in skills:
        if skill == "humaneval_mini":
            from harness.skills import functions

            streams[skill] = functions.training_problems(seed)
        else:
            streams[skill] = bbh_items.training_items(skill, seed)
    while True:
        skill = rng.choice(list(skills))
        if skill == "humaneval_mini":
            problems = [next(streams[skill]) for _ in range(rng.randint(2, 4))]
            yield tuple(piece for p in problems for piece in (p.prompt, p.canonical_solution + "\n\n"))
        else:
            *shots, last = (next(streams[skill]) for _ in range(rng.randint(2, 6)))
            yield (bbh_items.fewshot_prompt(skill, shots, last, "direct"), bbh_items.answer(last, "direct"))

"""The offline corpora: deterministic, disjoint splits of sensible documents, and correct math."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest

from harness import corpus


def test_domains() -> None:
    assert corpus.DOMAINS == ("code", "docs", "math")
    with pytest.raises(ValueError, match="unknown domain"):
        corpus.train_documents("poetry")


@pytest.mark.parametrize("domain", corpus.DOMAINS)
def test_splits_are_disjoint_and_sized(domain: str) -> None:
    train = corpus.train_documents(domain)
    heldout = corpus.heldout_documents(domain)
    assert len(train) > 500 and len(heldout) >= 16
    assert not set(train) & set(heldout)
    # ~5% held out (by file for code/docs, by question for math; chunk counts vary a little)
    share = sum(map(len, heldout)) / sum(map(len, train + heldout))
    assert 0.01 < share < 0.15
    sizes = sorted(len(d) for d in train)
    assert sizes[-1] <= 3000 and sizes[0] >= 64
    assert 800 <= sizes[len(sizes) // 2] <= 3000  # the typical document is 1-3k characters
    assert corpus.heldout_documents(domain, 5) == heldout[:5]


def test_code_and_docs_come_from_the_pinned_wheel_minus_tests() -> None:
    paths = [p for p, _ in corpus.source_files()]
    assert "sympy/core/basic.py" in paths and "sympy/solvers/solvers.py" in paths
    assert all(p.startswith("sympy/") or p == "isympy.py" for p in paths) and all(p.endswith(".py") for p in paths)
    assert not [p for p in paths if {"tests", "benchmarks", "_antlr"} & set(p.split("/"))]
    code_sample = " ".join(corpus.heldout_documents("code", 30))
    assert "def " in code_sample and "import " in code_sample
    # docstrings are prose: mostly words, few code-only characters
    docs_sample = " ".join(corpus.heldout_documents("docs", 30))
    assert docs_sample.count(" ") / len(docs_sample) > 0.12
    assert docs_sample.count("def ") < docs_sample.count(" the ")


def test_heldout_files_contribute_nothing_to_training() -> None:
    """The split is by file: a held-out file's code and its docstrings are both absent from training."""
    heldout = [source for path, source in corpus.source_files() if corpus.is_heldout_file(path)]
    assert 20 < len(heldout) < 80  # ~5% of ~820 files
    train_code, train_docs = set(corpus.train_documents("code")), set(corpus.train_documents("docs"))
    for source in heldout:
        assert not set(corpus._code_documents(source)) & train_code
        assert not set(corpus._docs_documents(source)) & train_docs


def test_splits_are_deterministic_across_processes() -> None:
    """No salted hash() anywhere: another interpreter produces the very same documents."""
    script = (
        "import hashlib; from harness import corpus\n"
        "h = hashlib.sha256()\n"
        "for d in ('code', 'math'):\n"
        "    for doc in corpus.train_documents(d)[:200] + corpus.heldout_documents(d):\n"
        "        h.update(doc.encode())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    import hashlib

    h = hashlib.sha256()
    for d in ("code", "math"):
        for doc in corpus.train_documents(d)[:200] + corpus.heldout_documents(d):
            h.update(doc.encode())
    assert out == h.hexdigest()


def test_train_slice_and_mix() -> None:
    docs = corpus.train_slice("code", 10_000)
    assert docs == corpus.train_documents("code")[: len(docs)]
    assert sum(map(len, docs)) <= 10_000
    mix = corpus.train_slice("mix", 30_000)
    text = "\n".join(mix)
    assert "Q: " in text and "def " in text
    assert corpus.train_text("math", 5_000).startswith("Q: ")


def test_fingerprint_is_the_pinned_content_hash() -> None:
    fp = corpus.corpus_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp) and fp == corpus.CONTENT_SHA256[:16]
    blob = corpus.serialize({d: (tuple(corpus.train_documents(d)), tuple(corpus.heldout_documents(d)))
                             for d in corpus.DOMAINS})
    assert hashlib.sha256(blob).hexdigest() == corpus.CONTENT_SHA256


# --- math -----------------------------------------------------------------------------------------

_STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")


def _check_worked_solution(question: str, solution: str, answer: str) -> None:
    """Every step is correct arithmetic on numbers from the question or earlier results, and the last
    result is the stated answer."""
    known = {int(n) for n in re.findall(r"\d+", question)}
    steps = _STEP.findall(solution)
    assert steps, solution
    for a, op, b, result in steps:
        a, b, result = int(a), int(b), int(result)
        assert a in known and b in known, (question, solution)
        if op == "/":
            assert b != 0 and a % b == 0 and result * b == a, (question, solution)
        else:
            assert result == eval(f"{a} {op} {b}"), (question, solution)
        known.add(result)
    assert solution.endswith(f"The answer is {answer}.")
    assert int(steps[-1][3]) == int(answer)


def test_math_answers_are_correct() -> None:
    examples = corpus.math_examples(400, seed=0)
    kinds = set()
    for ex in examples:
        _check_worked_solution(ex.question, ex.solution, ex.answer)
        expression = re.fullmatch(r"What is (.+)\?", ex.question)
        if expression:
            assert re.fullmatch(r"[\d +*()-]+", expression.group(1))
            assert eval(expression.group(1)) == int(ex.answer)  # only digits, + - * and parentheses
            kinds.add("expression")
        else:
            kinds.add("word")
        assert int(ex.answer) >= 0
    assert {"expression", "word"} <= kinds
    assert any(len(_STEP.findall(ex.solution)) >= 3 for ex in examples)  # multi-step expressions


def test_math_problems_api() -> None:
    problems = corpus.math_problems(50, seed=7)
    assert problems == corpus.math_problems(50, seed=7)
    assert problems != corpus.math_problems(50, seed=8)
    assert len({q for q, _ in problems}) == 50
    assert all(isinstance(q, str) and re.fullmatch(r"\d+", a) for q, a in problems)


def test_math_question_spaces_are_disjoint() -> None:
    train_questions = set(re.findall(r"^Q: (.*)$", "\n".join(corpus.train_documents("math")), flags=re.M))
    heldout_questions = set(re.findall(r"^Q: (.*)$", "\n".join(corpus.heldout_documents("math")), flags=re.M))
    eval_questions = {q for q, _ in corpus.math_problems(500, seed=0)}
    assert len(train_questions) > 10_000
    assert not train_questions & heldout_questions
    assert not train_questions & eval_questions
    # the format the training documents use is the one MathProblem.format produces
    example = corpus.math_examples(1, seed=0)[0]
    assert example.format() == f"Q: {example.question}\nA: {example.solution}"

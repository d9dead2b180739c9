"""Offline domain corpora for the embedded zoo: text that exists on every machine with Python.

Three domains, none of which needs a download:

* ``code`` -- the ``.py`` files of the standard library directory (``sysconfig.get_paths()["stdlib"]``),
  minus third-party packages, test suites and data-like modules (see ``_EXCLUDED_DIRS``);
* ``docs`` -- the docstrings of those same files (``ast.get_docstring``, longer than 40 characters): English
  prose about programming, a clearly different distribution from the code around it;
* ``math`` -- arithmetic and word problems with worked answers, from a seeded generator in this module
  (``Q: ...\\nA: 12 - 5 = 7. The answer is 7.``).

Splits are deterministic and disjoint. For ``code`` and ``docs`` a file belongs to the held-out split when a
stable hash of its path relative to the stdlib dir falls in a ~5% bucket, so a held-out file contributes
neither its code nor its docstrings to training. For ``math`` a *question* belongs to the held-out split when
a stable hash of its text falls in a ~5% bucket, and the two splits are drawn from different seed spaces,
so no question is ever in both (:func:`math_problems` draws from the held-out side by default, which keeps
exact-match evaluations clean).

Extraction is cached in-process (``functools.lru_cache``): reading the files takes a fraction of a second
and parsing them for docstrings about two seconds, paid only by the domains actually used.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sys
import sysconfig
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

DOMAINS = ("code", "docs", "math")
MIX = "mix"  # not a domain of its own: an equal-size blend of all three, used to train base models

# Bump when extraction, chunking or the math generator changes what the documents contain.
CORPUS_VERSION = "1"

# Directory names (at any depth below the stdlib dir) whose files are not part of the corpus: third-party
# packages, test suites, the IDLE app, the deprecated 2to3 tool, codec tables (megabytes of hex literals),
# pydoc's dumped HTML topics and the bundled pip wheels.
_EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "encodings",
        "pydoc_data",
        "ensurepip",
        "__pycache__",
        "lib-dynload",
    }
)
_HELDOUT_PERCENT = 5
_MIN_DOCSTRING_CHARS = 40  # "more than 40 characters"
_CHUNK_MIN_CHARS = 1500  # a chunk is cut at the first good boundary after this many characters ...
_CHUNK_MAX_CHARS = 3000  # ... and at any line boundary after this many
_MIN_DOCUMENT_CHARS = 64  # drops stubs such as an __init__.py holding one import
_MATH_PROBLEMS_PER_DOC = 12
_MATH_TRAIN_DOCS = 2000  # ~2.6 MB: more than the largest math training run reads
_SHUFFLE_SEED = 1234


# --- public API ---------------------------------------------------------------------------------


def train_documents(domain: str) -> list[str]:
    """The training documents of ``domain`` (1-3k characters each), in a fixed shuffled order.

    The order is shuffled once with a fixed seed so that any prefix (see :func:`train_slice`) is a varied
    sample of the whole domain rather than the first few modules alphabetically.
    """
    _check_domain(domain)
    return list(_split(domain)[0])


def heldout_documents(domain: str, n: int | None = None) -> list[str]:
    """The held-out documents of ``domain``, disjoint from :func:`train_documents`; the first ``n`` if given."""
    _check_domain(domain)
    docs = _split(domain)[1]
    return list(docs if n is None else docs[:n])


def train_slice(domain: str, max_chars: int) -> list[str]:
    """A prefix of the training documents holding at most ``max_chars`` characters (at least one document).

    ``domain`` may also be ``"mix"``: a third of the budget from each domain, interleaved in a fixed order.
    This is how callers tokenise only as much text as a training run needs.
    """
    if domain == MIX:
        parts = [train_slice(d, max_chars // len(DOMAINS)) for d in DOMAINS]
        mixed = [doc for group in parts for doc in group]
        random.Random(_SHUFFLE_SEED).shuffle(mixed)
        return mixed
    docs = _split_checked(domain)[0]
    out: list[str] = []
    total = 0
    for doc in docs:
        if out and total + len(doc) > max_chars:
            break
        out.append(doc)
        total += len(doc)
    return out


def train_text(domain: str, max_chars: int) -> str:
    """:func:`train_slice` joined with blank lines: handy for training tokenizers."""
    return "\n\n".join(train_slice(domain, max_chars))


def corpus_fingerprint() -> str:
    """A short hash of what determines the corpus: Python version, stdlib location, generator version.

    The zoo folds it into every recipe hash, so upgrading Python (a different stdlib) or changing this
    module's extraction rebuilds the zoo instead of silently mixing models trained on different text.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    key = f"{sys.implementation.name}|{sys.version}|{stdlib}|corpus-v{CORPUS_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# --- math: a seeded generator of problems with worked answers ---------------------------------------


@dataclass(frozen=True)
class MathProblem:
    """One problem: ``question`` text, a worked ``solution`` ending in "The answer is N.", exact ``answer``."""

    question: str
    solution: str
    answer: str

    def format(self) -> str:
        """The training format: ``Q: <question>\\nA: <solution>``."""
        return f"Q: {self.question}\nA: {self.solution}"


def math_problems(n: int, seed: int, split: str = "heldout") -> list[tuple[str, str]]:
    """``n`` distinct ``(question, final answer)`` pairs, e.g. ``("Ana has 12 apples ...", "7")``.

    Drawn from the held-out side of the question space by default, so exact-match evaluations never ask a
    question the zoo was trained on. The same ``(n, seed, split)`` always gives the same list.
    """
    return [(p.question, p.answer) for p in math_examples(n, seed, split)]


def math_examples(n: int, seed: int, split: str = "heldout") -> list[MathProblem]:
    """Like :func:`math_problems`, with the worked solutions."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = random.Random(f"fusebench-math:{split}:{seed}")
    seen: set[str] = set()
    out: list[MathProblem] = []
    while len(out) < n:
        problem = _random_problem(rng)
        if _is_heldout_question(problem.question) != (split == "heldout") or problem.question in seen:
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


_NAMES = (
    "Ana",
    "Ben",
    "Cara",
    "Dev",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lea",
    "Max",
    "Nia",
    "Omar",
    "Pia",
)
_ITEMS = (
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "books",
    "coins",
    "cards",
    "shells",
    "stamps",
    "eggs",
    "cookies",
)
_CONTAINERS = ("box", "bag", "jar", "basket", "pack", "crate", "tray")


def _random_problem(rng: random.Random) -> MathProblem:
    """One problem from one of the templates; every step of the worked answer is ``a op b = c``."""
    kind = rng.randrange(7)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    pronoun = "she" if name in ("Ana", "Cara", "Fay", "Hana", "Lea", "Nia", "Pia") else "he"
    if kind == 0:
        a = rng.randint(5, 60)
        b = rng.randint(1, a)
        q = f"{name} has {a} {item} and gives {b} away. How many {item} are left?"
        return _solved(q, [f"{a} - {b}"])
    if kind == 1:
        a, b = rng.randint(1, 60), rng.randint(1, 40)
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {pronoun} have now?"
        return _solved(q, [f"{a} + {b}"])
    if kind == 2:
        per, count = rng.randint(2, 12), rng.randint(2, 12)
        box = rng.choice(_CONTAINERS)
        q = f"A {box} holds {per} {item}. How many {item} are in {count} {box}s?"
        return _solved(q, [f"{count} * {per}"])
    if kind == 3:
        each, friends = rng.randint(2, 12), rng.randint(2, 9)
        q = f"{each * friends} {item} are shared equally among {friends} friends. How many {item} does each friend get?"
        return _solved(q, [f"{each * friends} // {friends}"])
    if kind == 4:
        start, packs, per = rng.randint(1, 40), rng.randint(2, 6), rng.randint(2, 10)
        q = f"{name} has {start} {item}. {pronoun.capitalize()} buys {packs} packs of {per} {item} each. How many {item} does {pronoun} have now?"
        return _solved(q, [f"{packs} * {per}", f"{start} + {{0}}"])
    if kind == 5:
        a, b = rng.randint(10, 50), rng.randint(2, 9)
        c = rng.randint(1, a + b)
        q = f"{name} has {a} {item}, finds {b} more and then loses {c}. How many {item} does {pronoun} have?"
        return _solved(q, [f"{a} + {b}", f"{{0}} - {c}"])
    expression, steps = _random_expression(rng)
    return _solved(f"What is {expression}?", steps)


def _solved(question: str, steps: list[str]) -> MathProblem:
    """Work through ``steps`` (``"{0}"`` refers to the previous result) into a worked solution."""
    parts: list[str] = []
    value = 0
    for step in steps:
        expr = step.format(value)
        value = _apply(expr)
        parts.append(f"{expr.replace('//', '/')} = {value}.")
    parts.append(f"The answer is {value}.")
    return MathProblem(question=question, solution=" ".join(parts), answer=str(value))


def _apply(expr: str) -> int:
    """Evaluate one ``a op b`` step with integer arithmetic."""
    left, op, right = expr.split()
    a, b = int(left), int(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b


_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def _random_expression(rng: random.Random) -> tuple[str, list[str]]:
    """A random expression with 2-3 operators and its evaluation steps, innermost first.

    Values stay non-negative and below 1000, so every step is small-number arithmetic; the rendered
    expression uses only ``+ - *`` and parentheses, so ``eval`` of it gives the answer (tests rely on that).
    """
    while True:
        tree = _random_tree(rng, operators=rng.randint(2, 3))
        steps: list[str] = []
        value = _evaluate(tree, steps)
        if value is not None:
            return _render(tree), steps


def _random_tree(rng: random.Random, operators: int) -> int | tuple:
    if operators == 0:
        return rng.randint(1, 12)
    op = rng.choice("+-*")
    left_ops = rng.randint(0, operators - 1)
    return (op, _random_tree(rng, left_ops), _random_tree(rng, operators - 1 - left_ops))


def _evaluate(tree: int | tuple, steps: list[str]) -> int | None:
    """Post-order evaluation recording ``a op b = c`` steps; None if a value goes negative or >= 1000."""
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a = _evaluate(left, steps)
    b = _evaluate(right, steps) if a is not None else None
    if a is None or b is None:
        return None
    value = _apply(f"{a} {op} {b}")
    if not 0 <= value < 1000:
        return None
    steps.append(f"{a} {op} {b}")
    return value


def _render(tree: int | tuple, parent_op: str | None = None, right_side: bool = False) -> str:
    """Infix text with only the parentheses precedence requires (``3 + 4 * 5``, ``(3 + 4) * 5``)."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    text = f"{_render(left, op)} {op} {_render(right, op, right_side=True)}"
    if parent_op is not None:
        weaker = _PRECEDENCE[op] < _PRECEDENCE[parent_op]
        # a - (b + c) and a - (b - c) need parentheses on the right; a * (b * c) does not, but keep it simple.
        non_associative = right_side and _PRECEDENCE[op] == _PRECEDENCE[parent_op] and parent_op in "-*"
        if weaker or non_associative:
            text = f"({text})"
    return text


def _is_heldout_question(question: str) -> bool:
    return _stable_percent(f"math:{question}") < _HELDOUT_PERCENT


# --- code and docs: the standard library ------------------------------------------------------------


def stdlib_dir() -> Path:
    """Where the code and docs domains come from: this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def _source_files() -> tuple[tuple[str, str], ...]:
    """``(relative path, source)`` of every corpus file, sorted by path.

    ``os.walk`` with in-place pruning: ``Path.rglob`` would also descend into site-packages, which can be
    much bigger than the stdlib itself.
    """
    root = stdlib_dir()
    files: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith(("config-", "."))
        )
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = Path(dirpath) / filename
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if source.strip():
                files.append((path.relative_to(root).as_posix(), source))
    files.sort()
    return tuple(files)


def _docstrings(source: str) -> list[str]:
    """The module, class and function docstrings of one file that are longer than 40 characters."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > _MIN_DOCSTRING_CHARS:
                found.append(doc.strip())
    return found


def _chunk_lines(text: str, good_break) -> list[str]:
    """Split ``text`` into chunks of roughly 1.5-3k characters at line boundaries.

    A chunk ends at the first line, once it holds ``_CHUNK_MIN_CHARS``, for which ``good_break(line)`` says a
    new unit starts there (a top-level statement, a new docstring); and at any line once it would exceed
    ``_CHUNK_MAX_CHARS``. A single huge line is cut hard so no chunk is unbounded.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > _CHUNK_MAX_CHARS:
            line_head, line = line[:_CHUNK_MAX_CHARS], line[_CHUNK_MAX_CHARS:]
            if current:
                chunks.append("".join(current))
                current, size = [], 0
            chunks.append(line_head)
        if current and (
            size + len(line) > _CHUNK_MAX_CHARS or (size >= _CHUNK_MIN_CHARS and good_break(line))
        ):
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    chunks = [c.strip("\n") for c in chunks]
    return [c for c in chunks if len(c.strip()) >= _MIN_DOCUMENT_CHARS]


def _code_documents(source: str) -> list[str]:
    return _chunk_lines(
        source, good_break=lambda line: bool(line) and not line[0].isspace() and line[0] != ")"
    )


def _docs_documents(source: str) -> list[str]:
    docstrings = _docstrings(source)
    if not docstrings:
        return []
    # Prefer cutting between docstrings: mark where each starts, chunk, then drop the marks.
    marked = "\n\n\x00".join(docstrings)
    chunks = _chunk_lines(marked, good_break=lambda line: line.startswith("\x00"))
    return [c.replace("\x00", "") for c in chunks]


def _is_heldout_file(relative_path: str) -> bool:
    return _stable_percent(f"file:{relative_path}") < _HELDOUT_PERCENT


def _stable_percent(key: str) -> int:
    """0-99 from a hash that, unlike ``hash()``, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


@cache
def _split(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train, heldout)`` documents of a domain, each in a fixed shuffled order, with no text in both.

    Identical chunks can occur in different files (licence headers, boilerplate); such a chunk is dropped
    from training when the held-out side has it, so the splits are disjoint as texts, not only as files.
    """
    train: list[str] = []
    heldout: list[str] = []
    if domain == "math":
        for index in range(_MATH_TRAIN_DOCS):
            problems = math_examples(_MATH_PROBLEMS_PER_DOC, seed=index, split="train")
            train.append("\n\n".join(p.format() for p in problems))
        # A distinct seed space (negative seeds) from the one evaluations use by default (small seeds).
        for index in range(200):
            problems = math_examples(_MATH_PROBLEMS_PER_DOC, seed=-1 - index, split="heldout")
            heldout.append("\n\n".join(p.format() for p in problems))
    else:
        to_documents = _code_documents if domain == "code" else _docs_documents
        for relative_path, source in _source_files():
            (heldout if _is_heldout_file(relative_path) else train).extend(to_documents(source))
    heldout_set = set(heldout)
    train = [doc for doc in train if doc not in heldout_set]
    heldout = list(dict.fromkeys(heldout))  # drop duplicates, keep order
    rng = random.Random(_SHUFFLE_SEED)
    rng.shuffle(train)
    rng.shuffle(heldout)
    return tuple(train), tuple(heldout)


def _split_checked(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    _check_domain(domain)
    return _split(domain)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")

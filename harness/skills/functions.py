"""Seeded generator of simple Python function problems in HumanEval's format (the ``humaneval-mini`` suite,
and the training text of the zoo's code experts).

A problem is a record exactly like HumanEval's -- ``{"task_id", "prompt", "canonical_solution", "test",
"entry_point"}`` -- where the prompt is a signature and a docstring holding a one-line description and one
``>>>`` example, the canonical solution is the one-line body (indented four spaces, ending in a newline, so
``prompt + canonical_solution`` is the function), and the test is ``def check(candidate):`` with 3-5
asserts on inputs other than the example's, at least two of them with different answers.

Fourteen families (:data:`FAMILIES`), each a templated description that a tiny model can map to its body:

* ``add_constant`` ("Return x plus 7."), ``multiply_constant`` ("Return x times 3."), ``is_divisible``
  ("Return True if n is divisible by 4, else False."), ``square``, ``parity`` (even / odd),
  ``absolute_difference``, ``clamp`` (to a constant range);
* ``list_reduce`` (largest / smallest / sum / number of items), ``edge_element`` (first / last item);
* ``count_char``, ``reverse_string``, ``repeat_string``, ``change_case`` (upper / lower), ``concatenate``.

Function names (from a pool of descriptive names per family and variant, e.g. ``add_seven``,
``plus_seven``, ``increase_by_seven``), parameter names, constants and the example are drawn at random,
so the problems the suite scores are not the ones the zoo trains on: every prompt falls on one side of
the skills split (:func:`harness.skills.split_of` with task ``humaneval_mini``), and :func:`generate`
keeps only the side it is asked for. Families take turns, so any ``n`` covers them evenly; the smallest
family (``square``) caps one list at about 27,000 problems.

Zoo use: ``[p.training_text() for p in generate(n, seed, split="train")]``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import BenchError
from harness.skills import SPLITS, Split, split_of

#: The task name of these problems in the skills split.
SPLIT_TASK = "humaneval_mini"
#: ``task_id`` prefix, as HumanEval's records use "HumanEval/N".
TASK_ID_PREFIX = "HumanEvalMini"
#: How many draws :func:`generate` may spend on one problem before it gives up (a family has run out).
_DRAWS_PER_PROBLEM = 1000


@dataclass(frozen=True)
class Problem:
    """One generated problem; ``family`` names the kind of function it asks for."""

    task_id: str
    family: str
    entry_point: str
    prompt: str
    canonical_solution: str
    test: str

    def as_record(self) -> dict[str, str]:
        """The problem in HumanEval's record format."""
        return {"task_id": self.task_id, "prompt": self.prompt, "canonical_solution": self.canonical_solution,
                "test": self.test, "entry_point": self.entry_point}

    def training_text(self) -> str:
        """The whole function, as a code expert trains on it: prompt + canonical solution."""
        return self.prompt + self.canonical_solution


@dataclass(frozen=True)
class _Sketch:
    """What a family draws: the function, its meaning in Python, and a way to draw arguments for it."""

    name: str
    params: tuple[str, ...]
    description: str
    body: str  # the returned expression
    compute: Callable[..., Any]  # what the body computes, to write the example and the asserts
    draw_args: Callable[[random.Random], tuple[Any, ...]]
    #: What the asserts' arguments must cover besides two different answers (clamp: below, inside and above).
    covers: Callable[[list[tuple[Any, ...]]], bool] = lambda tested: True


# --- pools ---------------------------------------------------------------------------------------------

_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
                 10: "ten", 11: "eleven", 12: "twelve"}
_NUMBER_PARAMS = ("x", "n", "num", "value", "number", "val", "i", "k")
_NUMBER_PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("first", "second"), ("left", "right"))
_LIST_PARAMS = ("nums", "numbers", "items", "values", "xs", "lst")
_STRING_PARAMS = ("s", "text", "word", "phrase")
_STRING_PAIRS = (("a", "b"), ("s", "t"), ("first", "second"), ("left", "right"), ("prefix", "suffix"))
_LETTERS = "abcdeilmnorstu"
_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "paper", "candle", "garden", "rocket", "silver",
          "bread", "music", "ocean", "pencil", "window", "forest", "banana", "mirror", "planet", "sun", "owl", "cat",
          "dog", "tea", "map", "ink", "sea")


def _small_int(rng: random.Random) -> tuple[int]:
    return (rng.randint(-10, 30),)


def _int_list(rng: random.Random) -> tuple[list[int]]:
    return ([rng.randint(-9, 20) for _ in range(rng.randint(2, 6))],)


def _word(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_WORDS)
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 7)))


def _one_word(rng: random.Random) -> tuple[str]:
    return (_word(rng),)


# --- families ------------------------------------------------------------------------------------------


def add_constant(rng: random.Random) -> _Sketch:
    k = rng.randint(2, 12)
    w, x = _NUMBER_WORDS[k], rng.choice(_NUMBER_PARAMS)
    name = rng.choice((f"add_{w}", f"plus_{w}", f"increase_by_{w}", f"{w}_more"))
    return _Sketch(name, (x,), f"Return {x} plus {k}.", f"{x} + {k}", lambda v: v + k, _small_int)


def multiply_constant(rng: random.Random) -> _Sketch:
    k = rng.randint(2, 12)
    w, x = _NUMBER_WORDS[k], rng.choice(_NUMBER_PARAMS)
    name = rng.choice((f"times_{w}", f"multiply_by_{w}", f"scale_by_{w}", f"{w}_times"))
    return _Sketch(name, (x,), f"Return {x} times {k}.", f"{x} * {k}", lambda v: v * k, _small_int)


def is_divisible(rng: random.Random) -> _Sketch:
    k = rng.randint(2, 9)
    w, x = _NUMBER_WORDS[k], rng.choice(_NUMBER_PARAMS)
    name = rng.choice((f"is_divisible_by_{w}", f"divisible_by_{w}", f"is_multiple_of_{w}"))

    def draw(r: random.Random) -> tuple[int]:  # about half of them divisible
        return (k * r.randint(0, 8),) if r.random() < 0.5 else (r.randint(0, 60),)

    return _Sketch(name, (x,), f"Return True if {x} is divisible by {k}, else False.", f"{x} % {k} == 0",
                   lambda v: v % k == 0, draw)


def square(rng: random.Random) -> _Sketch:
    x = rng.choice(_NUMBER_PARAMS)
    name = rng.choice(("square", "squared", "square_of", "sq", "square_number", "get_square"))
    return _Sketch(name, (x,), f"Return {x} squared.", f"{x} * {x}", lambda v: v * v,
                   lambda r: (r.randint(-30, 50),))


def parity(rng: random.Random) -> _Sketch:
    x = rng.choice(_NUMBER_PARAMS)
    even = rng.random() < 0.5
    word = "even" if even else "odd"
    name = rng.choice((f"is_{word}", word, f"check_{word}", f"{word}_number"))
    return _Sketch(name, (x,), f"Return True if {x} is {word}, else False.", f"{x} % 2 == {0 if even else 1}",
                   (lambda v: v % 2 == 0) if even else (lambda v: v % 2 == 1), lambda r: (r.randint(0, 99),))


def absolute_difference(rng: random.Random) -> _Sketch:
    a, b = rng.choice(_NUMBER_PAIRS)
    name = rng.choice(("abs_diff", "absolute_difference", "distance", "gap"))
    return _Sketch(name, (a, b), f"Return the absolute difference of {a} and {b}.", f"abs({a} - {b})",
                   lambda u, v: abs(u - v), lambda r: (r.randint(-5, 30), r.randint(-5, 30)))


def clamp(rng: random.Random) -> _Sketch:
    low = rng.randint(0, 5)
    high = low + rng.randint(3, 12)
    x = rng.choice(_NUMBER_PARAMS)
    name = rng.choice(("clamp", "clip", "limit", "keep_in_range"))

    def draw(r: random.Random) -> tuple[int]:  # below, inside or above the range
        return (r.choice((low - r.randint(1, 6), r.randint(low, high), high + r.randint(1, 6))),)

    def below_inside_above(tested: list[tuple[int, ...]]) -> bool:
        values = [v for (v,) in tested]
        return min(values) < low and max(values) > high and any(low < v < high for v in values)

    return _Sketch(name, (x,), f"Return {x} clamped to the range {low} to {high}.", f"max({low}, min({x}, {high}))",
                   lambda v: max(low, min(v, high)), draw, below_inside_above)


_REDUCTIONS: dict[str, tuple[tuple[str, ...], str, str, Callable[[list[int]], int]]] = {
    # variant: (names, description of the result, function applied, Python function)
    "max": (("largest", "max_of", "biggest", "maximum"), "the largest number in", "max", max),
    "min": (("smallest", "min_of", "lowest", "minimum"), "the smallest number in", "min", min),
    "sum": (("total", "sum_of", "add_all", "list_sum"), "the sum of the numbers in", "sum", sum),
    "len": (("count_items", "length", "size", "num_items"), "the number of items in", "len", len),
}


def list_reduce(rng: random.Random) -> _Sketch:
    names, what, function, compute = _REDUCTIONS[rng.choice(list(_REDUCTIONS))]
    xs = rng.choice(_LIST_PARAMS)
    return _Sketch(rng.choice(names), (xs,), f"Return {what} {xs}.", f"{function}({xs})", compute, _int_list)


def edge_element(rng: random.Random) -> _Sketch:
    xs = rng.choice(_LIST_PARAMS)
    if rng.random() < 0.5:
        name = rng.choice(("first", "first_item", "head", "get_first"))
        return _Sketch(name, (xs,), f"Return the first item of {xs}.", f"{xs}[0]", lambda v: v[0], _int_list)
    name = rng.choice(("last", "last_item", "final_item", "get_last"))
    return _Sketch(name, (xs,), f"Return the last item of {xs}.", f"{xs}[-1]", lambda v: v[-1], _int_list)


def count_char(rng: random.Random) -> _Sketch:
    c = rng.choice("aeiost")
    s = rng.choice(_STRING_PARAMS)
    name = rng.choice((f"count_{c}", f"count_letter_{c}", f"how_many_{c}", f"number_of_{c}"))
    def draw(r: random.Random) -> tuple[str]:  # the letter put in 0-2 times, so the counts differ
        letters = list(_word(r))
        for _ in range(r.choice((0, 1, 1, 2))):
            letters.insert(r.randint(0, len(letters)), c)
        return ("".join(letters),)

    return _Sketch(name, (s,), f"Return how many times '{c}' appears in {s}.", f"{s}.count('{c}')",
                   lambda v: v.count(c), draw)


def reverse_string(rng: random.Random) -> _Sketch:
    s = rng.choice(_STRING_PARAMS)
    name = rng.choice(("reverse", "reverse_string", "reversed_text", "backwards"))
    return _Sketch(name, (s,), f"Return {s} reversed.", f"{s}[::-1]", lambda v: v[::-1], _one_word)


def repeat_string(rng: random.Random) -> _Sketch:
    k = rng.randint(2, 5)
    w, s = _NUMBER_WORDS[k], rng.choice(_STRING_PARAMS)
    name = rng.choice((f"repeat_{w}", f"repeat_{w}_times", f"{w}_copies"))
    return _Sketch(name, (s,), f"Return {s} repeated {k} times.", f"{s} * {k}", lambda v: v * k,
                   lambda r: ("".join(r.choice(_LETTERS) for _ in range(r.randint(1, 4))),))


def change_case(rng: random.Random) -> _Sketch:
    s = rng.choice(_STRING_PARAMS)
    if rng.random() < 0.5:
        name = rng.choice(("to_upper", "upper", "uppercase", "shout"))
        return _Sketch(name, (s,), f"Return {s} in upper case.", f"{s}.upper()", str.upper, _one_word)
    name = rng.choice(("to_lower", "lower", "lowercase", "whisper"))

    def draw(r: random.Random) -> tuple[str]:  # something to lower
        word = _word(r)
        return (word.upper() if r.random() < 0.5 else word.capitalize(),)

    return _Sketch(name, (s,), f"Return {s} in lower case.", f"{s}.lower()", str.lower, draw)


def concatenate(rng: random.Random) -> _Sketch:
    a, b = rng.choice(_STRING_PAIRS)
    name = rng.choice(("concat", "join_two", "combine", "glue"))
    return _Sketch(name, (a, b), f"Return {a} followed by {b}.", f"{a} + {b}", lambda u, v: u + v,
                   lambda r: (_word(r), _word(r)))


FAMILIES: dict[str, Callable[[random.Random], _Sketch]] = {
    "add_constant": add_constant,
    "multiply_constant": multiply_constant,
    "is_divisible": is_divisible,
    "square": square,
    "parity": parity,
    "absolute_difference": absolute_difference,
    "clamp": clamp,
    "list_reduce": list_reduce,
    "edge_element": edge_element,
    "count_char": count_char,
    "reverse_string": reverse_string,
    "repeat_string": repeat_string,
    "change_case": change_case,
    "concatenate": concatenate,
}


# --- from a sketch to a problem ------------------------------------------------------------------------


def _call(name: str, args: tuple[Any, ...]) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def _cases(sketch: _Sketch, rng: random.Random) -> list[tuple[Any, ...]]:
    """The example's arguments, then 3-5 more for the asserts: all different, with at least two different
    answers (so both True and False for a yes/no family) and what the family's ``covers`` asks for."""
    wanted = 1 + rng.randint(3, 5)
    for _ in range(_DRAWS_PER_PROBLEM):
        cases: list[tuple[Any, ...]] = []
        for _ in range(20 * wanted):
            args = sketch.draw_args(rng)
            if args not in cases:
                cases.append(args)
            if len(cases) == wanted:
                break
        if len({repr(sketch.compute(*args)) for args in cases[1:]}) >= 2 and sketch.covers(cases[1:]):
            return cases
    raise RuntimeError(f"{sketch.name}: could not draw test cases with two different answers")  # a family bug


def _problem(family: str, rng: random.Random) -> Problem:
    sketch = FAMILIES[family](rng)
    example, *tested = _cases(sketch, rng)
    prompt = (f"def {sketch.name}({', '.join(sketch.params)}):\n"
              f'    """{sketch.description}\n'
              f"    >>> {_call(sketch.name, example)}\n"
              f"    {sketch.compute(*example)!r}\n"
              f'    """\n')
    asserts = "".join(f"    assert {_call('candidate', args)} == {sketch.compute(*args)!r}\n" for args in tested)
    return Problem(task_id="", family=family, entry_point=sketch.name, prompt=prompt,
                   canonical_solution=f"    return {sketch.body}\n", test=f"\n\ndef check(candidate):\n{asserts}")


def generate(n: int, seed: int, split: Split = "eval") -> list[Problem]:
    """``n`` problems with distinct prompts from one side of the train/eval split, families taking turns;
    the same (n, seed, split) always gives the same list. ``task_id`` is ``HumanEvalMini/<position>``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise BenchError(f"cannot generate {n!r} function problems", "ask for a whole number >= 0")
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r} for function problems", f"use one of: {', '.join(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BenchError(f"function problem seed {seed!r} is not a whole number", "give an integer seed")
    rng = random.Random(f"humaneval-mini/{split}/{seed}")
    families = list(FAMILIES)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < n:
        family = families[len(problems) % len(families)]
        for _ in range(_DRAWS_PER_PROBLEM):
            problem = _problem(family, rng)
            if problem.prompt not in seen and split_of(SPLIT_TASK, problem.prompt) == split:
                break
        else:
            raise BenchError(f"only {len(problems)} distinct {split} function problems could be generated, not {n} "
                             f"({family} ran out)", f"ask for at most {len(problems)} problems")
        seen.add(problem.prompt)
        problems.append(replace(problem, task_id=f"{TASK_ID_PREFIX}/{len(problems)}"))
    return problems


def training_problems(seed: int) -> Iterator[Problem]:
    """An endless stream of train-side problems, families at random (repeats possible: it is training data)."""
    rng = random.Random(f"humaneval-mini/train-stream/{seed}")
    families = list(FAMILIES)
    while True:
        problem = _problem(rng.choice(families), rng)
        if split_of(SPLIT_TASK, problem.prompt) == "train":
            yield problem

"""Code tests: the solution and its tests run in separate processes, so the solution cannot forge the verdict.

Each forgery is first shown to work where the solution and the tests share one process (``run_program``
on the two joined, as HumanEval ran before), then to fail as a code test. Then: what crosses between
the processes (plain data, exceptions, broken rules), and the codec that carries it.
"""

from __future__ import annotations

import collections
import enum
import math
import textwrap
from typing import Any, NamedTuple

import pytest

from harness.sandbox import CodeTest, Limits, Outcome, run_code_test, run_code_tests, run_program
from harness.sandbox.child import MAX_DEPTH, MESSAGE_CAP, NotPlainData, decode, encode, to_plain

LIMITS = Limits(timeout_s=5.0, memory_mb=256)
# total(xs) should be sum(xs); the tests use ==, abs() and a helper from the trusted preamble
PREAMBLE = "def scale(x):\n    return 10 * x\n\ndef total(xs):\n    \"\"\"Sum of xs.\"\"\"\n"
TESTS = textwrap.dedent("""
    def check(candidate):
        assert candidate([1, 2]) == 3
        assert abs(candidate([0.5, 0.25]) - 0.75) < 1e-9
        assert candidate([scale(1), 2]) == 12

    check(total)
""")


def code_test(completion: str, tests: str = TESTS) -> CodeTest:
    return CodeTest(solution=PREAMBLE + textwrap.dedent(completion), tests=tests, preamble=PREAMBLE,
                    required=("total",))


def one_process(test: CodeTest) -> Outcome:
    return run_program(f"{test.solution}\n\n{test.tests}", LIMITS)


# HumanEval/38's shape: the tests encode with the prompt's helper, the solution must decode.
CODEC_PREAMBLE = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    \"\"\"Undo encode.\"\"\"\n"
CODEC_TESTS = "def check(candidate):\n    for s in ('abc', 'hello'):\n        assert candidate(encode(s)) == s\n\ncheck(decode)\n"


FORGERIES = {
    "always-equal result": """
        class Anything:
            def __eq__(self, other):
                return True
            def __sub__(self, other):
                return self
            def __abs__(self):
                return 0
        def total(xs):
            return Anything()
    """,
    "always-equal int subclass": """
        class Three(int):
            def __eq__(self, other):
                return True
            def __sub__(self, other):
                return 0
        def total(xs):
            return Three(3)
    """,
    "patched builtin": """
        import builtins
        builtins.abs = lambda x: 0
        def total(xs):
            return 3 if len(xs) == 2 and xs[0] == 1 else 12
    """,
    "shadowed builtin": """
        def abs(x):
            return 0
        def total(xs):
            return 3 if xs == [1, 2] else 12
    """,
    "nonce stolen through sys._getframe": """
        import sys
        frame = sys._getframe(1)
        while frame is not None and "nonce" not in frame.f_locals:
            frame = frame.f_back
        if frame is not None:
            frame.f_locals["report"]("ok", frame.f_locals["nonce"])
            frame.f_locals["exit_now"](0)
        def total(xs):
            return 0
    """,
    "nonce stolen at call time, fds scribbled": """
        import os, re, sys
        def total(xs):
            frame, guesses = sys._getframe(), set()
            while frame is not None:
                guesses |= {v for v in frame.f_locals.values() if isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v)}
                frame = frame.f_back
            for guess in guesses or {"0" * 32}:
                for fd in range(3, 4096):  # the pipes keep the parent's fd numbers: high in a long test session
                    try:
                        os.write(fd, ("ok " + guess + "\\n").encode())
                    except OSError:
                        pass
            os._exit(0)
    """,
}


@pytest.mark.parametrize("forgery", list(FORGERIES), ids=list(FORGERIES))
def test_a_forged_pass_works_in_one_process_but_not_as_a_code_test(forgery: str) -> None:
    test = code_test(FORGERIES[forgery])
    assert one_process(test).passed, "the forgery should work when the tests share its process"
    outcome = run_code_test(test, LIMITS)
    assert not outcome.passed and outcome.result.startswith("failed: "), outcome


def test_a_solution_cannot_redefine_the_helpers_the_tests_take_from_the_prompt() -> None:
    identity = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    forged = CodeTest(solution=CODEC_PREAMBLE + identity, tests=CODEC_TESTS, preamble=CODEC_PREAMBLE,
                      required=("decode",))
    assert one_process(forged).passed
    assert run_code_test(forged, LIMITS).result == "failed: AssertionError (tests line 3)"
    honest = CodeTest(solution=CODEC_PREAMBLE + "    return s[::-1]\n", tests=CODEC_TESTS, preamble=CODEC_PREAMBLE,
                      required=("decode",))
    assert run_code_test(honest, LIMITS).passed


def test_a_correct_solution_passes_and_a_wrong_one_fails_at_the_tests_line() -> None:
    right, wrong = run_code_tests([code_test("def total(xs):\n    return sum(xs)\n"),
                                   code_test("def total(xs):\n    return max(xs)\n")], LIMITS)
    assert right.passed and right.result == "passed", right
    assert wrong.result == "failed: AssertionError (tests line 3)"


def test_the_stub_in_the_preamble_must_be_filled_by_the_solution() -> None:
    outcome = run_code_test(CodeTest(solution="def other():\n    return 1\n", tests=TESTS, preamble=PREAMBLE,
                                     required=("total",)), LIMITS)
    assert outcome.result == "failed: the solution defines no function total"


def test_a_solution_that_does_not_load_fails_with_its_reason() -> None:
    outcome = run_code_test(code_test("def total(xs) return 1\n"), LIMITS)
    assert outcome.result == "failed: the solution failed to load: SyntaxError: expected ':' (solution line 6)"
    outcome = run_code_test(code_test("raise SystemExit(0)\n"), LIMITS)
    assert outcome.result == "failed: the solution failed to load: SystemExit: 0 (solution line 6)"


# --- exceptions and broken rules ------------------------------------------------------------------------


def test_the_solutions_exceptions_come_back_as_their_builtin_classes() -> None:
    tests = textwrap.dedent("""
        for bad, expected in (([], ValueError), ([None], TypeError), (["k"], LookupError)):
            try:
                total(bad)
            except expected as e:
                assert "total says" in str(e), e
            else:
                raise AssertionError(f"no {expected.__name__} for {bad}")
    """)
    solution = """
        class EmptyError(ValueError):
            pass
        def total(xs):
            if not xs:
                raise EmptyError("total says: empty")
            if xs == ["k"]:
                raise KeyError("total says: no key")
            raise TypeError("total says: not a number")
    """
    assert run_code_test(code_test(solution, tests), LIMITS).passed


def test_an_uncaught_exception_says_where_it_was_raised_and_called() -> None:
    outcome = run_code_test(code_test("def total(xs):\n    return 1 / 0\n"), LIMITS)
    assert outcome.result == ("failed: ZeroDivisionError: division by zero "
                              "(solution line 7, called at tests line 3)")


@pytest.mark.parametrize(("leave", "reason"), [
    ("sys.exit(0)", "the solution left during a call to total: SystemExit: 0 (solution line 8)"),
    ("raise KeyboardInterrupt", "the solution left during a call to total: KeyboardInterrupt (solution line 8)"),
    ("os._exit(3)", "the solution's process ended during a call to total: it exited with code 3"),
])
def test_leaving_during_a_call_fails_even_when_the_tests_catch_everything(leave: str, reason: str) -> None:
    tests = "try:\n    total([1])\nexcept BaseException:\n    pass\n"
    outcome = run_code_test(code_test(f"import os, sys\ndef total(xs):\n    {leave}\n"[:-1] + "\n", tests), LIMITS)
    assert outcome.result == f"failed: {reason}"


@pytest.mark.parametrize(("value", "kind"), [
    ("(x for x in xs)", "generator"), ("lambda: 3", "function"), ("object()", "object"), ("map(int, xs)", "map"),
])
def test_results_that_are_not_plain_data_fail(value: str, kind: str) -> None:
    tests = "try:\n    total([1])\nexcept Exception:\n    pass\n"  # caught or not, the run fails
    outcome = run_code_test(code_test(f"def total(xs):\n    return {value}\n", tests), LIMITS)
    assert outcome.result == ("failed: the solution's total returned a value the tests cannot receive: "
                              f"{kind} is not plain data")


def test_garbage_on_the_protocol_pipe_fails_the_run() -> None:
    scribble = """
        import os
        for fd in range(3, 4096):  # the pipes keep the parent's fd numbers: high in a long test session
            try:
                os.write(fd, b"not json\\n")
            except OSError:
                pass
        def total(xs):
            return sum(xs)
    """
    outcome = run_code_test(code_test(scribble), LIMITS)
    assert outcome.result.startswith("failed: the solution sent malformed data while loading"), outcome
    huge = run_code_test(code_test(f"def total(xs):\n    return 'x' * {MESSAGE_CAP + 1}\n"), LIMITS)
    assert huge.result == ("failed: the solution sent malformed data during a call to total: "
                           f"more than {MESSAGE_CAP} bytes in one message")


def test_a_solution_stuck_in_a_call_times_out_or_hits_its_cpu_limit() -> None:
    spin = code_test("def total(xs):\n    while True:\n        pass\n")
    assert run_code_test(spin, Limits(timeout_s=1.0)).result == "timed out"
    outcome = run_code_test(spin, Limits(timeout_s=30.0, cpu_s=1))
    assert outcome.result == "failed: the solution's process ended during a call to total: killed (SIGKILL)"


# --- what crosses -------------------------------------------------------------------------------------------


def test_values_cross_with_their_types_nan_and_infinities_included() -> None:
    tests = textwrap.dedent("""
        import math
        got = total([])
        assert type(got) is tuple and len(got) == 9
        assert got[0] == [1, (2, 3)] and type(got[0][1]) is tuple
        assert math.isnan(got[1]) and got[2] == -math.inf and math.copysign(1, got[3]) == -1
        assert got[4] == {(1, "a"): {1, 2}, "k": frozenset({None, True})}
        assert got[5] == b"\\x00\\xff" and type(got[5]) is bytes and got[6] == bytearray(b"z")
        assert got[7] == 1.5 - 2j and got[8] == 7 ** 5000
        assert total([]) != [1, (2, 3)]  # a tuple stays a tuple, never equal to a list
    """)
    solution = """
        import math
        def total(xs):
            return ([1, (2, 3)], math.nan, -math.inf, -0.0, {(1, "a"): {1, 2}, "k": frozenset({None, True})},
                    b"\\x00\\xff", bytearray(b"z"), 1.5 - 2j, 7 ** 5000)
    """
    outcome = run_code_test(code_test(solution, tests), LIMITS)
    assert outcome.passed, outcome


def test_subclasses_of_plain_types_arrive_as_the_base_type() -> None:
    tests = ("got = total([])\nassert got == ((1, 2), {'a': 2}, 3)\n"
             "assert [type(x) for x in got] == [tuple, dict, int]\n")
    solution = """
        import collections, enum
        class Point(collections.namedtuple("Point", "x y")):
            pass
        class Colour(enum.IntEnum):
            BLUE = 3
        def total(xs):
            return Point(1, 2), collections.Counter("aa"), Colour.BLUE
    """
    assert run_code_test(code_test(solution, tests), LIMITS).passed


def test_arguments_are_copies_and_must_be_plain() -> None:
    tests = textwrap.dedent("""
        xs = [1, 2]
        assert total(xs) == 3 and xs == [1, 2]  # the solution's mutation stays in its process
        try:
            total(lambda: 1)
        except TypeError as e:
            assert "passes only plain data" in str(e)
        else:
            raise AssertionError("a function crossed")
    """)
    solution = "def total(xs):\n    if callable(xs):\n        return 0\n    xs.append(100)\n    return sum(xs) - 100\n"
    assert run_code_test(code_test(solution, tests), LIMITS).passed


def test_the_tests_see_the_solutions_functions_by_name_without_a_preamble() -> None:
    solution = "def helper(x):\n    return x * 2\n\ndef add(a, b=0, *, c=0):\n    return a + b + c\n"
    tests = "assert add(1, 2) == 3\nassert add(1, c=5) == 6\nassert helper(add(1)) == 2\n"
    assert run_code_test(CodeTest(solution=solution, tests=tests), LIMITS).passed


# --- the plain-data codec -----------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (and nan equal to nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def round_trip(value: Any) -> Any:
    return decode(encode(["returned", to_plain(value)]))[1]


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2 ** 200, -(3 ** 20000), 0.1, -0.0, math.inf, -math.inf, math.nan, "", "é\n\"\\\udcff",
    b"", b"\x00\xff", bytearray(b"ab"), 1 - 2j, complex(math.inf, math.nan), [], (), (1,), [1, [2, (3,)]],
    {}, {"a": 1, 2: [3], (4, 5): None, frozenset({6}): {7}}, set(), {1, "x", (2, 3)}, frozenset({1.5}),
], ids=lambda v: type(v).__name__)
def test_plain_values_round_trip_exactly(value: Any) -> None:
    assert same(round_trip(value), value)


def test_subclasses_travel_as_their_base_type() -> None:
    class Point(NamedTuple):
        x: int
        y: int

    class Colour(enum.IntEnum):
        RED = 1

    class AlwaysEqual(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    assert same(round_trip(Point(1, 2)), (1, 2))
    assert same(round_trip(collections.Counter("aab")), {"a": 2, "b": 1})
    assert same(round_trip(collections.OrderedDict(k=1)), {"k": 1})
    assert same(round_trip(Colour.RED), 1)
    assert round_trip(AlwaysEqual("yes")) != "no"  # it arrives as a str, which compares honestly


@pytest.mark.parametrize("value", [lambda: 1, (x for x in ()), object(), range(3), {}.keys(), type, print],
                         ids=lambda v: type(v).__name__)
def test_other_values_are_refused(value: Any) -> None:
    with pytest.raises(NotPlainData):
        to_plain(value)


def test_deep_and_circular_data_are_refused() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    circular: list[Any] = []
    circular.append(circular)
    for value in (deep, circular):
        with pytest.raises(NotPlainData, match="nested more than"):
            to_plain(value)


@pytest.mark.parametrize("line", [
    '["returned", {"a": 1, "b": 2}]', '["returned", {"list": [1]}]', '["returned", {"set": [[1]]}]',
    '["returned", {"dict": [[1]]}]', '["returned", {"complex": ["1", "2"]}]', '["returned", {"tuple": "ab"}]',
    '["returned", {"bytes": "zz"}]', '["returned", {"int": 5}]', '["returned", [1, 2', "[" * 100_000,
])
def test_malformed_lines_do_not_decode(line: str) -> None:
    with pytest.raises((ValueError, TypeError, RecursionError)):
        decode(line.encode())

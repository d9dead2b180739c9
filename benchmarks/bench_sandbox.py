"""Benchmark harness/sandbox: HumanEval programs per second, before and after the judge/solution split.

Run: ``.venv/bin/python benchmarks/bench_sandbox.py`` (about a minute on 2 cores; ``--quick``: 40 problems,
one round). Root gives the full sandbox (uids of their own, namespaces); as another user both sides run
with what that user gets.

The workload is HumanEval's 164 canonical solutions, two at a time (``SANDBOX_WORKERS``), as the suite
scores them. Three ways, in rounds that alternate them so that a change in the machine's load hits all
three alike:

* **before**: the sandbox at ``--baseline-ref`` (default: the last commit before the split), loaded from
  git: one process per problem running prompt + completion + tests + ``check(entry_point)``, with the
  privilege drop to a shared ``nobody`` and a network namespace;
* **one process, now**: the same joined programs through today's :func:`harness.sandbox.run_programs`
  (today's isolation: uids of their own, PID/mount/IPC namespaces, seccomp), to tell the cost of the
  isolation from that of the split;
* **code tests, now**: what the suite runs, :func:`harness.sandbox.run_code_tests` (two processes per
  problem, calls across a pipe).

Printed per way: the median over rounds of programs/s, the spread (min-max), and the ratio to *before*;
also the load average at the start and end, since other work on the machine slows every way down.
Every run must pass (they are the canonical solutions), or the figures mean nothing and it says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evals.humaneval import SANDBOX_WORKERS, Problem, load_problems  # noqa: E402
from harness.sandbox import Limits, run_code_tests, run_programs  # noqa: E402

#: The last commit whose sandbox ran each HumanEval program in one process.
DEFAULT_BASELINE_REF = "d53954a"


def load_baseline(ref: str) -> ModuleType:
    """The sandbox as it was at ``ref`` (then ``evals/_sandbox.py``), imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:evals/_sandbox.py"], check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as folder:  # the module needs no file once loaded
        path = Path(folder) / "baseline_sandbox.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("baseline_sandbox", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["baseline_sandbox"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def joined_program(problem: Problem) -> str:
    """The single program the suite ran before the split."""
    return (f"{problem.prompt}{problem.canonical_solution}\n\n{problem.test}\n\n"
            f"check({problem.entry_point})\n")


def measure(name: str, run: Callable[[], list], n: int) -> float:
    """Programs per second of one round; exits if any program did not pass."""
    start = time.monotonic()
    outcomes = run()
    seconds = time.monotonic() - start
    failed = [o.result for o in outcomes if not o.passed]
    if failed:
        sys.exit(f"{name}: {len(failed)} of {n} canonical solutions failed (first: {failed[0]}); "
                 "the throughput would mean nothing")
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE_REF, help="git ref of the 'before' sandbox")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 problems, one round")
    args = parser.parse_args()
    problems = load_problems()[:40] if args.quick else load_problems()
    rounds = 1 if args.quick else args.rounds
    baseline = load_baseline(args.baseline_ref)
    programs = [joined_program(p) for p in problems]
    tests = [p.code_test(p.canonical_solution) for p in problems]
    ways: dict[str, Callable[[], list]] = {
        f"before ({args.baseline_ref}, one process)": lambda: baseline.run_programs(
            programs, baseline.Limits(), workers=SANDBOX_WORKERS),
        "one process, now": lambda: run_programs(programs, Limits(), workers=SANDBOX_WORKERS),
        "code tests, now (the suite)": lambda: run_code_tests(tests, Limits(), workers=SANDBOX_WORKERS),
    }
    load_before = os.getloadavg()
    print(f"{len(problems)} canonical HumanEval solutions, {SANDBOX_WORKERS} at a time, {rounds} round(s), "
          f"euid {os.geteuid()}, {os.cpu_count()} CPUs")
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for round_number in range(rounds):
        for name, run in ways.items():
            rates[name].append(measure(name, run, len(problems)))
            print(f"  round {round_number + 1}: {name}: {rates[name][-1]:.1f} programs/s", flush=True)
    load_after = os.getloadavg()
    before = statistics.median(rates[next(iter(ways))])
    print(f"\n{'way':<44} {'programs/s':>10} {'min-max':>13} {'vs before':>9}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<44} {median:>10.1f} {min(values):>6.1f}-{max(values):<6.1f} {median / before:>9.2f}")
    print(f"\nratio, code tests / before: {statistics.median(rates[list(ways)[-1]]) / before:.2f}")
    print(f"load average (1 min) at start {load_before[0]:.2f}, at end {load_after[0]:.2f}: "
          "figures taken under other load are slower for every way")


if __name__ == "__main__":
    main()

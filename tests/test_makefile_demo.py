"""`make demo` judges MT-Bench with zoo:smollm2-135m when, and only when, `bench zoo has smollm2-135m` says it is in
the zoo: the Makefile runs against a stand-in `bench` that records its command lines (nothing is installed, built or
downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_BENCH = """#!/bin/bash
printf '%s\\n' "$*" >> "$BENCH_CALLS"
if [ "$1 $2" = "zoo has" ]; then exit "$ZOO_HAS_EXIT"; fi
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_demo(tmp_path: Path, zoo_has_exit: int, *make_args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `make demo` with VENV pointing at a folder whose `bench` is the stand-in (and whose install stamp is
    newer than pyproject.toml, so nothing is installed); returns the result and the stand-in's command lines."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bench = venv / "bin" / "bench"
    bench.write_text(FAKE_BENCH)
    bench.chmod(0o755)
    (venv / ".fusebench-installed").touch()
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "BENCH_CALLS": str(calls), "ZOO_HAS_EXIT": str(zoo_has_exit)}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "demo", f"VENV={venv}", *make_args],
                          env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


RUN = ("run --fuser fusechat --name demo-fusechat --suite perplexity --suite bbh-mini --suite humaneval-mini "
       "--allow-code-exec --suite mtbench --per-task")


def run_line(calls: list[str]) -> str:
    (line,) = [c for c in calls if c.startswith("run ")]
    return line


def test_demo_judges_mtbench_with_smollm2_when_it_is_in_the_zoo(tmp_path: Path) -> None:
    done, calls = make_demo(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    assert "zoo has smollm2-135m" in calls
    assert run_line(calls) == (RUN + " --judge-model zoo:smollm2-135m --set mtbench.categories=[writing] "
                               "--set mtbench.max_gen_toks=64 --set mtbench.judge_max_tokens=64")
    assert "demo: MT-Bench judged by zoo:smollm2-135m, a small local model, on a part only" in done.stdout


def test_demo_leaves_mtbench_unjudged_when_smollm2_is_not_added(tmp_path: Path) -> None:
    done, calls = make_demo(tmp_path, 1)
    assert done.returncode == 0, done.stderr
    assert "zoo has smollm2-135m" in calls and not any(c.startswith("zoo add") for c in calls)
    assert run_line(calls) == RUN
    assert "demo: so MT-Bench answers are stored, not judged" in done.stdout


def test_demo_without_a_judge_does_not_ask_the_zoo(tmp_path: Path) -> None:
    done, calls = make_demo(tmp_path, 0, "DEMO_JUDGE=")
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith("zoo has") for c in calls)
    assert run_line(calls) == RUN


def test_demo_stops_on_a_bad_judge_name(tmp_path: Path) -> None:
    done, calls = make_demo(tmp_path, 2, "DEMO_JUDGE=smollm2-13m")
    assert done.returncode != 0 and not any(c.startswith("run ") for c in calls)


def test_demo_shows_the_skills_per_task_after_the_run(tmp_path: Path) -> None:
    done, calls = make_demo(tmp_path, 1)
    assert calls[0] == "zoo build --only gpt2-code,neox-docs,mpt-math"  # what the FuseChat run needs
    after = calls[calls.index(run_line(calls)) + 1:]
    assert "--per-task" in run_line(calls)  # the run prints its leaderboard once, every task shown
    assert after == ["skills demo-fusechat"]

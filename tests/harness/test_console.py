"""What a user sees: FuseBench's own lines and progress on the console, the libraries' output in the run's log file
(unless --verbose), and after a command the leaderboard of the runs it made, once."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import bench

PPL = ("--suite", "perplexity", "--set", "perplexity.max_docs=1", "--set", "perplexity.max_chars_per_doc=200")
SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "demo_first_screen.txt"
#: `make demo`'s run (Makefile DEMO_SUITES), on the micro zoo with a tiny FuseChat budget and one item per task.
DEMO_RUN = ("run", "--fuser", "fusechat", "--name", "demo-fusechat", "--suite", "perplexity", "--suite", "bbh-mini",
            "--suite", "humaneval-mini", "--allow-code-exec", "--suite", "mtbench", "--limit", "1",
            "--set", "perplexity.max_docs=1", "--set", "perplexity.max_chars_per_doc=200",
            "--set", "mtbench.max_gen_toks=16", "--set", "humaneval-mini.max_gen_toks=32",
            *(x for key, value in {"steps": 2, "batch_size": 2, "seq_len": 96, "conversations": 16, "top_k": 4,
                                   "warmup_steps": 1}.items() for x in ("--set", f"fuser.{key}={value}")))
LIBRARY_NOISE = re.compile(r"it/s\]|s/it\]|Running generate_until|Scoring rolling windows|\[transformers\]|Warning")


def test_a_command_prints_the_leaderboard_of_its_own_run_once(private_home: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "b.db")
    assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", db) == 0
    capsys.readouterr()
    assert bench("eval", "--model", "zoo:llama-code", *PPL, "--db", db) == 0
    out = capsys.readouterr().out
    assert "zoo:llama-code" in out and "zoo:llama-base" not in out  # the other run is in the DB, not in this table
    assert out.count("perplexity/avg") == 1
    assert bench("leaderboard", "--db", db) == 0  # the DB's leaderboard has both
    board = capsys.readouterr().out
    assert "zoo:llama-code" in board and "zoo:llama-base" in board


def test_a_run_left_unjudged_says_so(private_home: Path, tmp_path: Path, capsys) -> None:
    assert bench("eval", "--model", "zoo:llama-base", "--suite", "mtbench", "--limit", "1",
                 "--db", str(tmp_path / "b.db")) == 0
    out = capsys.readouterr().out
    assert "no scores to show; the answers on mtbench are stored, not judged" in out
    assert "no scores yet" not in out


def test_library_output_goes_to_the_run_log_unless_verbose(private_home: Path, tmp_path: Path, capsys) -> None:
    common = ("eval", "--model", "zoo:llama-base", *PPL, "--suite", "bbh-mini", "--limit", "1")
    assert bench(*common, "--db", str(tmp_path / "quiet.db")) == 0
    err = capsys.readouterr().err
    (log,) = (private_home / "logs").glob("*.log")
    assert f"log: {log}" in err.replace("\n", "")
    assert not LIBRARY_NOISE.search(err), err
    assert "Running generate_until requests" in log.read_text()  # lm-eval's progress bars, kept in the log

    for entry in (private_home / "cache" / "evals").iterdir():  # compute again, with everything shown
        entry.unlink()
    assert bench(*common, "--verbose", "--db", str(tmp_path / "verbose.db")) == 0
    err = capsys.readouterr().err
    assert "Running generate_until requests" in err and "log: " not in err
    assert len(list((private_home / "logs").glob("*.log"))) == 1


def _normalised(text: str, home: Path) -> str:
    """Console text without what changes from run to run: times, run ids, hashes, paths, durations, padding."""
    text = text.replace(str(home), "$BENCH_HOME")
    for pattern, replacement in ((r"\[\d\d:\d\d:\d\d\]", "[time]"), (r"\b\d{8}-\d{6}-[0-9a-f]{4}\b", "RUN"),
                                 (r"\b[0-9a-f]{16,}\b", "HASH"), (r"#[0-9a-f]{6}\b", "#HASH"),
                                 (r"━+", "━"), (r"\d[\d,]*(\.\d+)? tok/s", "N tok/s"), (r"loss \d+\.\d+", "loss L"),
                                 (r"\d+:\d\d:\d\d", "H:MM:SS"),
                                 (r"\d+(\.\d+)? ?s\b", "Ns"), (r" +\n", "\n")):
        text = re.sub(pattern, replacement, text)
    return text


def test_the_demo_run_first_screen(private_home: Path, tmp_path: Path, capsys) -> None:
    """Snapshot of the first screen (24 lines) of `make demo`'s `bench run`, on the micro zoo: FuseBench's own lines
    only. FUSEBENCH_UPDATE_SNAPSHOTS=1 rewrites it (then read the diff)."""
    assert bench(*DEMO_RUN, "--db", str(tmp_path / "b.db")) == 0
    captured = capsys.readouterr()
    assert not LIBRARY_NOISE.search(captured.err), captured.err
    lines = _normalised(captured.err + captured.out, private_home).splitlines()
    # the log file's path is printed once, when a library first writes to it: where that falls varies
    assert sum(line.startswith("log: $BENCH_HOME/logs/RUN.log") for line in lines) == 1
    screen = "\n".join([line for line in lines if not line.startswith("log: ")][:24]) + "\n"
    if os.environ.get("FUSEBENCH_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(screen)
    if not SNAPSHOT.is_file():
        pytest.fail(f"no snapshot yet: run with FUSEBENCH_UPDATE_SNAPSHOTS=1 to write {SNAPSHOT}")
    assert screen == SNAPSHOT.read_text()

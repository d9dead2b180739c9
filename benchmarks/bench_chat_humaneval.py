"""Measure a chat model on HumanEval three ways: plain completion, completion through its chat template, instruct mode.

Run: ``.venv/bin/python benchmarks/bench_chat_humaneval.py`` (SmolLM2-135M-Instruct, ``zoo:smollm2-135m``: 10
humaneval-mini problems and 3 HumanEval problems per way; tens of minutes on 2 CPU cores). ``--model``,
``--mini N``, ``--humaneval N``, ``--ways`` and ``--batch-size`` change that. The model must be in the zoo of
``$BENCH_HOME`` (``bench zoo add smollm2-135m``); results go to a throwaway DB and the eval cache of ``$BENCH_HOME``.

The three ways (``bench eval ... --allow-code-exec`` plus):

* ``completion``: nothing (the prompt as plain text, the output appended to it: how base models are measured);
* ``completion+template``: ``--apply-chat-template`` (the prompt as a user turn, the reply appended to it, as
  lm-eval's ``humaneval`` task does with ``apply_chat_template``);
* ``instruct``: ``--set SUITE.mode=instruct`` (an instruction and the prompt as a user turn, the program read from
  the reply's code block).

Printed per (suite, way): problems, pass@1, and how many programs failed to load with a SyntaxError (a reply read as
code), passed, or failed otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAYS = {"completion": [], "completion+template": ["--apply-chat-template"], "instruct": ["--set", "{suite}.mode=instruct"]}


def run_way(model: str, suite: str, problems: int, way: str, batch_size: str, db: Path) -> dict[str, object]:
    """One `bench eval` of ``model`` on the first ``problems`` of ``suite``, the ``way`` one; its pass@1 and failures."""
    import sqlite_utils

    extra = [arg.format(suite=suite) for arg in WAYS[way]]
    size = ["--set", f"humaneval-mini.n_problems={problems}"] if suite == "humaneval-mini" else ["--limit", str(problems)]
    name = f"{suite}:{way}"
    command = [sys.executable, "-m", "harness.cli", "eval", "--model", model, "--suite", suite, "--allow-code-exec",
               *size, *extra, "--batch-size", batch_size, "--name", name, "--db", str(db)]
    start = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                   stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    rows = sqlite_utils.Database(db)
    (run_id,) = [r["id"] for r in rows.query("select id from runs where name = ? order by started_at desc limit 1",
                                             [name])]
    (value,) = [r["value"] for r in rows.query("select value from scores where run_id = ? and metric = 'pass@1'",
                                               [run_id])]
    results = [json.loads(r["metrics"])["result"] for r in rows.query("select metrics from samples where run_id = ?",
                                                                     [run_id])]
    return {"suite": suite, "way": way, "problems": len(results), "pass@1": value, "seconds": round(seconds),
            "syntax errors": sum("SyntaxError" in r for r in results), "passed": sum(r == "passed" for r in results),
            "other failures": sum(r != "passed" and "SyntaxError" not in r for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:smollm2-135m")
    parser.add_argument("--mini", type=int, default=10, help="humaneval-mini problems (0: none)")
    parser.add_argument("--humaneval", type=int, default=3, help="HumanEval problems, the first N (0: none)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of {', '.join(WAYS)}")
    parser.add_argument("--batch-size", default="8")
    args = parser.parse_args()
    plan = [(s, n) for s, n in (("humaneval-mini", args.mini), ("humaneval", args.humaneval)) if n > 0]
    print(f"load average at the start: {os.getloadavg()[0]:.1f} (other work on the machine slows every way down)")
    with tempfile.TemporaryDirectory() as tmp:
        for suite, problems in plan:
            for way in args.ways.split(","):
                print(json.dumps(run_way(args.model, suite, problems, way, args.batch_size, Path(tmp) / "b.db")),
                      flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""The openai backend against a real OpenAI-compatible server on loopback serving the real checkpoint.

The server is ``transformers serve`` (transformers' own FastAPI server: ``/v1/completions``,
``/v1/chat/completions``) on zoo:smollm2-135m's folder. llama.cpp's server (``llama-cpp-python[server]``) was
tried first: no wheel on PyPI (a 9 CPU-minute source build), no token-id prompts, and echoed log-probabilities
shifted by one token. ``transformers serve`` returns no prompt log-probabilities, so it also shows the
one-line refusal of log-likelihood suites (tests/test_backends.py scores them through a loopback endpoint).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

pytestmark = pytest.mark.real


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(real_micro_home: Path) -> Iterator[tuple[str, str]]:
    """(base URL, served model id): ``transformers serve`` preloading the real checkpoint, on CPU, float32."""
    pytest.importorskip("fastapi", reason="transformers serve needs the serving extras (pip install -e .[dev])")
    folder = real_micro_home / "zoo" / "smollm2-135m"
    port = _free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--dtype", "float32", str(folder)]
    log = real_micro_home / f"serve-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield f"{base}/v1", str(folder)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _outputs(db: Path, model_like: str) -> list[str]:
    return [r["output"] for r in sqlite_utils.Database(db).query(
        "select s.output from samples s join models m on m.id = s.model_id where s.suite = 'mtbench' and m.name like ? "
        "order by s.task, s.doc_id", [model_like])]


def test_a_served_model_answers_mtbench_like_its_weights(real_home: Path, server: tuple[str, str], tmp_path: Path,
                                                         capsys) -> None:
    """The server renders the chat template itself; greedy answers equal the hf backend's on the same weights."""
    url, model_id = server
    db = tmp_path / "b.db"
    mt = ["--suite", "mtbench", "--limit", "1", "--set", "mtbench.max_gen_toks=24"]
    code = bench("eval", "--model", f"openai:{model_id}", "--base-url", url, *mt, "--db", str(db))
    assert code == 0, capsys.readouterr().err[-2000:]
    assert bench("eval", "--model", "zoo:smollm2-135m", *mt, "--db", str(db)) == 0
    served, local = _outputs(db, "openai:%"), _outputs(db, "zoo:smollm2-135m")
    assert len(served) == 2 and all(served), served
    assert served == local
    (row,) = sqlite_utils.Database(db).query("select distinct s.backend, s.dtype from scores s join models m "
                                             "on m.id = s.model_id where m.name like 'openai:%'")
    assert (row["backend"], row["dtype"]) == ("openai", "served")


def test_completions_go_through_the_server(real_home: Path, server: tuple[str, str]) -> None:
    """Plain prompts (BBH, HumanEval) use /completions, cut at the stop string like the hf backend."""
    import dataclasses

    from lm_eval.api.instance import Instance

    from harness.backends import load_lm
    from harness.model import current_placement, resolve
    from harness.model import load_lm as load_hf_lm

    url, model_id = server
    where = dataclasses.replace(current_placement(), backend="openai", base_url=url)
    served = load_lm(resolve(f"openai:{model_id}"), 8, where)
    requests = [Instance(request_type="generate_until", doc={}, idx=0, arguments=(prompt, {
        "until": ["\n"], "max_gen_toks": 16, "do_sample": False})) for prompt in ("Q: What is 2 + 3?\nA:", "def add(a, b):")]
    assert served.generate_until(requests) == load_hf_lm(resolve("zoo:smollm2-135m"), 8).generate_until(requests)


def test_a_server_without_prompt_logprobs_is_refused_for_perplexity(real_home: Path, server: tuple[str, str],
                                                                    tmp_path: Path, capsys) -> None:
    url, model_id = server
    ppl = ["--suite", "perplexity", "--set", "perplexity.max_docs=1", "--db", str(tmp_path / "b.db")]
    code = bench("eval", "--model", f"openai:{model_id}", "--base-url", url, *ppl)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "needs its tokenizer" in err and "--tokenizer" in err
    code = bench("eval", "--model", f"openai:{model_id}", "--base-url", url, "--tokenizer", "zoo:smollm2-135m", *ppl)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "returns no prompt log-probabilities" in err and "vllm serve" in err
    rows = list(sqlite_utils.Database(tmp_path / "b.db").query("select status from runs"))
    assert [r["status"] for r in rows] == ["error", "error"]


def test_nothing_listening_is_one_line(real_home: Path, tmp_path: Path, capsys) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    code = bench("eval", "--model", "openai:m", "--base-url", url, "--suite", "mtbench", "--limit", "1",
                 "--db", str(tmp_path / "b.db"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "refused the connection" in err and "--base-url" in err

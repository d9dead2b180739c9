"""The LLM-judge backends against a real HTTP server on loopback speaking OpenAI's chat-completions protocol.

:class:`FakeJudgeServer` (also used by ``tests/evals/test_mtbench.py``) binds ``127.0.0.1`` on a free port and
answers each POST with whatever its ``reply(body)`` callback returns: a string becomes a normal
completion, a ``(status, body[, headers])`` tuple is sent as is.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness.errors import BenchError
from harness.judge import (
    HttpJudge,
    LocalJudge,
    Verdict,
    build_judge,
    chat_completions_url,
    judge_many,
    parse_rating,
    parse_rating_fastchat,
)

Reply = Callable[[dict[str, Any]], "str | tuple"]


def completion(content: str | None) -> dict[str, Any]:
    return {"id": "cmpl-test", "object": "chat.completion", "model": "fake-judge",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


class FakeJudgeServer:
    """An OpenAI-compatible chat-completions server in a thread, recording every request."""

    def __init__(self, reply: Reply):
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.paths.append(self.path)
                out = server.reply(body)
                status, payload, extra = (200, json.dumps(completion(out)), {}) if isinstance(out, str) else (
                    out if len(out) == 3 else (*out, {}))
                data = payload.encode() if isinstance(payload, str) else payload
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in extra.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def user_texts(self) -> list[str]:
        """The user message of every request received, in arrival order."""
        with self.lock:
            return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in self.requests]


@contextlib.contextmanager
def serving(reply: Reply) -> Iterator[FakeJudgeServer]:
    server = FakeJudgeServer(reply)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], FakeJudgeServer]]:
    with contextlib.ExitStack() as stack:
        yield lambda reply: stack.enter_context(serving(reply))


def one_line(e: BenchError) -> str:
    text = str(e)
    assert "\n" not in text
    return text


# --- parsing and aggregation --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Rating: [[7]]", 7.0),
    ("good answer.\nRating: [[ 8.5 ]]", 8.5),
    ("[[10]]", 10.0),
    ("format is [[5]] ... final: Rating: [[3]]", 3.0),  # the last one counts
    ("Rating: 7", None),
    ("Rating: [7]", None),
    ("[[0]]", None),
    ("[[11]]", None),
    ("[[seven]]", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text: str | None, expected: float | None) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Rating: [[7]]", 7.0),
    ("format is [[5]] ... final: Rating: [[3]]", 5.0),  # FastChat: the first one counts
    ("Rating: [[8.5]]", 8.5),
    ("Rating: [[8.]]", 8.0),
    ("Rating: [7]", 7.0),                                # the single-bracket fallback
    ("see [1] and then Rating: [[4]]", 4.0),             # [[N]] is tried first, anywhere
    ("Rating: [[ 8 ]]", None),                           # no spaces inside
    ("[[11]]", 11.0),                                    # no range check
    ("[[seven]]", None),
    ("", None),
    (None, None),
])
def test_parse_rating_fastchat(text: str | None, expected: float | None) -> None:
    assert parse_rating_fastchat(text) == expected


class ListJudge:
    """An in-process judge replying from a list, to test :func:`judge_many` without HTTP."""

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.seen: list[list[dict[str, str]]] = []

    def complete(self, conversations):
        self.seen += conversations
        return [self.replies.pop(0) for _ in conversations]

    def describe(self) -> str:
        return "list"


def test_judge_many_repeats_mean_std_and_failures() -> None:
    judge = ListJudge(["[[2]]", "[[4]]", "[[6]]", "[[5]]", "no idea", "[[5]]"])
    a = [{"role": "user", "content": "A"}]
    b = [{"role": "user", "content": "B"}]
    va, vb = judge_many(judge, [a, b], repeats=3)
    assert [c[0]["content"] for c in judge.seen] == ["A", "A", "A", "B", "B", "B"]
    assert va.ratings == [2, 4, 6] and va.rating == 4.0 and va.failures == 0
    assert va.std == pytest.approx(statistics.pstdev([2, 4, 6]))
    assert vb.ratings == [5, 5] and vb.rating == 5.0 and vb.std == 0.0 and vb.failures == 1
    none = Verdict(raw=["?", "?"])
    assert none.rating is None and none.std is None and none.failures == 2


# --- the HTTP judge -----------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("http://h:8/v1", "http://h:8/v1/chat/completions"),
    ("http://h:8/v1/", "http://h:8/v1/chat/completions"),
    ("https://api.example.org/v1/chat/completions", "https://api.example.org/v1/chat/completions"),
])
def test_chat_completions_url(given: str, expected: str) -> None:
    assert chat_completions_url(given) == expected


def test_bad_url_is_one_line_error() -> None:
    with pytest.raises(BenchError, match="not an http"):
        chat_completions_url("localhost:8000")


def test_request_shape_and_api_key(serve, monkeypatch) -> None:
    server = serve(lambda body: "Rating: [[7]]")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge = build_judge(url=server.url, model="judge-x", api_key_env="MY_JUDGE_KEY", max_tokens=77)
    assert isinstance(judge, HttpJudge)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert judge.complete([msgs]) == ["Rating: [[7]]"]
    body = server.requests[0]
    assert body == {"model": "judge-x", "messages": msgs, "temperature": 0.0, "max_tokens": 77}
    assert server.paths == ["/v1/chat/completions"]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_no_key_no_model_sends_neither(serve, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = serve(lambda body: "[[3]]")
    judge = build_judge(url=server.url, model=None)
    assert judge.complete([[{"role": "user", "content": "x"}]]) == ["[[3]]"]
    assert "model" not in server.requests[0] and "Authorization" not in server.headers[0]


def test_concurrent_requests_keep_order(serve) -> None:
    server = serve(lambda body: f"echo {body['messages'][0]['content']}")
    judge = HttpJudge(server.url, workers=4)
    convs = [[{"role": "user", "content": str(i)}] for i in range(20)]
    assert judge.complete(convs) == [f"echo {i}" for i in range(20)]


def test_retry_after_500_then_200(serve) -> None:
    calls = []

    def reply(body):
        calls.append(1)
        return (500, '{"error": {"message": "overloaded"}}') if len(calls) == 1 else "Rating: [[6]]"

    server = serve(reply)
    judge = HttpJudge(server.url, backoff=0.01)
    assert judge.chat([{"role": "user", "content": "q"}]) == "Rating: [[6]]"
    assert len(server.requests) == 2


def test_retry_on_429_with_retry_after(serve) -> None:
    calls = []

    def reply(body):
        calls.append(1)
        return (429, "{}", {"Retry-After": "0"}) if len(calls) < 3 else "[[4]]"

    judge = HttpJudge(serve(reply).url, backoff=0.01)
    assert judge.chat([{"role": "user", "content": "q"}]) == "[[4]]"
    assert len(calls) == 3


def test_persistent_5xx_gives_up_with_one_line(serve) -> None:
    server = serve(lambda body: (503, '{"error": {"message": "down for maintenance"}}'))
    judge = HttpJudge(server.url, retries=2, backoff=0.01)
    with pytest.raises(BenchError) as e:
        judge.chat([{"role": "user", "content": "q"}])
    text = one_line(e.value)
    assert "kept failing" in text and "HTTP 503" in text and "down for maintenance" in text and server.url in text
    assert len(server.requests) == 3


def test_a_failing_batch_stops_early(serve) -> None:
    server = serve(lambda body: (503, "{}"))
    judge = HttpJudge(server.url, retries=1, backoff=0.05, workers=2)
    with pytest.raises(BenchError, match="kept failing"):
        judge.complete([[{"role": "user", "content": str(i)}] for i in range(20)])
    assert len(server.requests) <= 8  # the queued conversations were cancelled, not all retried


def test_timeout_is_retried(serve) -> None:
    calls = []

    def reply(body):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.6)
        return "[[8]]"

    judge = HttpJudge(serve(reply).url, timeout=0.2, backoff=0.01)
    assert judge.chat([{"role": "user", "content": "q"}]) == "[[8]]"


def test_401_names_the_key_variable(serve) -> None:
    server = serve(lambda body: (401, '{"error": {"message": "Incorrect API key provided"}}'))
    judge = HttpJudge(server.url, api_key_env="JUDGE_KEY", backoff=0.01)
    with pytest.raises(BenchError) as e:
        judge.chat([{"role": "user", "content": "q"}])
    text = one_line(e.value)
    assert "HTTP 401" in text and "JUDGE_KEY" in text and server.url in text and "Incorrect API key" in text
    assert len(server.requests) == 1  # not retried


def test_404_points_at_the_base_url(serve) -> None:
    server = serve(lambda body: (404, "not found"))
    with pytest.raises(BenchError, match="no chat-completions endpoint"):
        HttpJudge(server.url).chat([{"role": "user", "content": "q"}])


@pytest.mark.parametrize("payload", ["<html>oops</html>", '{"choices": []}', '{"result": "[[5]]"}'])
def test_malformed_reply_is_one_line_error(serve, payload: str) -> None:
    server = serve(lambda body: (200, payload))
    with pytest.raises(BenchError) as e:
        HttpJudge(server.url).chat([{"role": "user", "content": "q"}])
    text = one_line(e.value)
    assert "malformed" in text and server.url in text


def test_null_content_is_an_unrated_reply(serve) -> None:
    server = serve(lambda body: (200, json.dumps(completion(None))))
    (verdict,) = judge_many(HttpJudge(server.url), [[{"role": "user", "content": "q"}]])
    assert verdict.raw == [""] and verdict.rating is None and verdict.failures == 1


def test_connection_refused_is_one_line_error() -> None:
    url = closed_port_url()
    with pytest.raises(BenchError) as e:
        build_judge(url=url, model="m")  # the pre-flight connect
    text = one_line(e.value)
    assert "refused the connection" in text and url in text and "fix:" in text
    with pytest.raises(BenchError, match="refused the connection"):
        HttpJudge(url).chat([{"role": "user", "content": "q"}])


# --- construction -------------------------------------------------------------------------------


def test_build_judge_without_options_is_none() -> None:
    assert build_judge(url=None, model=None) is None


def test_local_judge_reference_is_resolved_eagerly(tmp_path) -> None:
    with pytest.raises(BenchError, match="not a model folder"):
        build_judge(url=None, model=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    judge = build_judge(url=None, model=str(tmp_path), temperature=0.7, max_tokens=5)
    assert isinstance(judge, LocalJudge) and judge._model is None  # weights load on first use
    assert judge.temperature == 0.7 and judge.max_tokens == 5

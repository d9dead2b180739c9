"""One client for OpenAI-compatible endpoints (OpenAI, ``vllm serve``, llama.cpp's server, SGLang, TGI ...).

Used by the LLM judge (``/chat/completions``) and by the ``openai`` backend, whose lm-eval model classes
send their requests through it (:mod:`harness.backends`). Spoken with the standard library's ``urllib``.
Transient failures (HTTP 408/409/429/5xx, timeouts, dropped connections) are retried with exponential
backoff, honouring ``Retry-After`` up to a minute; configuration mistakes (nothing listening, 401/403,
404/405, a reply that is not JSON) stop at once with a one-line :class:`~harness.errors.BenchError` naming
the URL and the fix, because retrying them only wastes the time already spent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from harness.errors import BenchError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/models")


def base_url(url: str, flag: str = "--base-url") -> str:
    """``http://host:8000/v1`` (or that plus ``/chat/completions`` / ``/completions``) -> ``http://host:8000/v1``."""
    url = url.strip()
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BenchError(f"{url!r} is not an http(s) URL",
                         f"give the endpoint's base URL, e.g. {flag} http://localhost:8000/v1")
    base = url.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


class OpenAIClient:
    """POST/GET JSON to one OpenAI-compatible server.

    ``what`` names the endpoint in errors ("judge endpoint", "model server") and ``flag`` the option that sets
    its URL; ``api_key_env`` only names the key's variable in error messages.
    """

    def __init__(self, url: str, *, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, what: str = "endpoint",
                 flag: str = "--base-url"):
        self.base = base_url(url, flag)
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.what = what
        self.flag = flag

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def check(self) -> None:
        """Fail now if nothing listens at the URL: only a TCP connect, no request (nothing billed)."""
        parsed = urllib.parse.urlparse(self.base)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=min(self.timeout, 10.0)):
                pass
        except OSError as e:
            raise self.unreachable(self.base, e) from None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """The parsed JSON reply to ``body`` POSTed at ``path`` (``"chat/completions"`` ...)."""
        return self._json(path, self.send(path, json.dumps(body).encode()))

    def get(self, path: str) -> Any:
        return self._json(path, self.send(path, None))

    def send(self, path: str, data: bytes | None) -> bytes:
        """The raw reply; retried on transient failures, one-line errors otherwise."""
        url = self.url(path)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            wait = self.backoff * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                detail = error_detail(e)
                if e.code not in RETRY_STATUS and e.code < 500:
                    raise self.rejected(url, e.code, detail) from None
                last = f"HTTP {e.code}{': ' + detail if detail else ''}"
                wait = max(wait, retry_after(e.headers.get("Retry-After")))
            except urllib.error.URLError as e:
                if not isinstance(e.reason, (TimeoutError, socket.timeout, ConnectionResetError)):
                    raise self.unreachable(url, e.reason) from None
                last = f"{type(e.reason).__name__}"
            except (TimeoutError, ConnectionResetError, http.client.RemoteDisconnected,
                    http.client.IncompleteRead) as e:
                last = type(e).__name__
            if attempt < self.retries:
                logger.info("%s %s: %s, retrying in %.1fs", self.what, url, last, wait)
                time.sleep(wait)
        raise BenchError(f"{self.what} {url} kept failing ({last}) after {self.retries + 1} attempts",
                         "check the server's health and load, then rerun")

    def _json(self, path: str, payload: bytes) -> Any:
        try:
            return json.loads(payload)
        except ValueError:
            raise self.malformed(path, payload) from None

    def malformed(self, path: str, payload: bytes) -> BenchError:
        snippet = " ".join(payload[:120].decode(errors="replace").split())
        return BenchError(f"{self.what} {self.url(path)} sent a malformed {_name(path)} reply: {snippet!r}",
                          f"point {self.flag} at an OpenAI-compatible /v1 endpoint")

    def unreachable(self, url: str, reason: object) -> BenchError:
        what = "refused the connection" if isinstance(reason, ConnectionRefusedError) else f"is unreachable ({reason})"
        return BenchError(f"{self.what} {url} {what}", f"start the server or correct {self.flag}")

    def rejected(self, url: str, code: int, detail: str) -> BenchError:
        said = f": {detail}" if detail else ""
        if code in (401, 403):
            return BenchError(f"{self.what} {url} rejected the API key (HTTP {code}){said}",
                              f"export {self.api_key_env}=<a valid key>")
        if code in (404, 405):
            path = url[len(self.base):].strip("/")
            return BenchError(f"no {_name(path)} endpoint at {url} (HTTP {code}){said}",
                              f"give the base URL that serves /{path}, e.g. {self.flag} http://host:8000/v1")
        return BenchError(f"{self.what} {url} rejected the request (HTTP {code}){said}",
                          "check the model name and generation settings against what the server accepts")


def _name(path: str) -> str:
    """``chat/completions`` -> ``chat-completions`` (how the API's endpoints are usually named in prose)."""
    return path.strip("/").replace("/", "-")


def error_detail(e: urllib.error.HTTPError) -> str:
    """The server's error message, one line, short (OpenAI: ``{"error": {"message": ...}}``)."""
    try:
        text = e.read().decode(errors="replace")
    except Exception:  # an unreadable body just means no detail
        return ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        err = json.loads(text).get("error")
        text = err.get("message", text) if isinstance(err, dict) else str(err or text)
    return " ".join(text.split())[:200]


def retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else 0.0

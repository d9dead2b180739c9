"""LLM judges: send chat conversations to a grader model and read a 1-10 rating back.

Two backends share one small interface, :class:`ChatJudge` (``complete(conversations) -> texts``),
so a suite (MT-Bench) or a fuser's reward (ProFuser's LLM-judge reward) can grade text without caring
where the grader runs:

* :class:`HttpJudge` — any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp,
  TGI …), through :mod:`harness.openai_client`, the client the ``openai`` model backend uses too:
  transient failures are retried with backoff, configuration mistakes stop the run at once with a
  one-line :class:`~harness.errors.BenchError` naming the URL and the fix.
* :class:`LocalJudge` — a transformers model loaded from ``zoo:NAME``, a folder or a hub id, prompted
  through its chat template and decoded greedily (or sampled at ``temperature`` > 0).

:func:`judge_many` sends every conversation ``repeats`` times and parses each reply with
:func:`parse_rating`, so callers get the mean rating, the spread across repeats and the number of
replies that carried no rating — a reply without a rating is a *failure*, never a guessed score.
The grading prompts themselves are in :mod:`harness.judge_prompts`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import BenchError
from harness.openai_client import OpenAIClient, base_url

if TYPE_CHECKING:
    from harness.model import ModelRef

logger = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}

MIN_RATING, MAX_RATING = 1.0, 10.0
# "[[7]]", "[[ 8.5 ]]". The judge is asked to end with its rating, so the *last* match wins: an
# explanation that quotes the requested format earlier ("a rating like [[5]]") does not count.
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")

# FastChat's llm_judge rule for its own prompts: the *first* "[[N]]", else the first "[N]"; no range check.
_FASTCHAT_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_FASTCHAT_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating_fastchat(text: str | None) -> float | None:
    """The rating as FastChat's ``llm_judge`` reads it with its ``judge_prompts.jsonl``: the first
    ``[[N]]`` (digits, an optional point and decimals, no spaces), else the first ``[N]``; None where
    FastChat records -1 (no rating). Used whenever MT-Bench runs with FastChat's judge prompts, so that
    scores sit beside FastChat's."""
    if not text:
        return None
    match = _FASTCHAT_RATING.search(text) or _FASTCHAT_RATING_BACKUP.search(text)
    return float(match.group(1)) if match else None


def parse_rating(text: str | None) -> float | None:
    """The judge's rating from ``[[N]]`` / ``[[N.5]]`` (the last one in the text), or None.

    A number outside 1-10 counts as unparseable: accepting it would put an impossible value into
    the mean.
    """
    if not text:
        return None
    matches = _RATING.findall(text)
    if not matches:
        return None
    value = float(matches[-1])
    return value if MIN_RATING <= value <= MAX_RATING else None


# --- the interface ------------------------------------------------------------------------------


class ChatJudge(Protocol):
    """A grader model. ``complete`` returns one reply per conversation, in order."""

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Verdict:
    """The judge's replies to one conversation, ``repeats`` times, and the ratings parsed from them.

    ``ratings`` holds only the replies that carried a valid rating; ``failures`` counts the others.
    ``rating`` / ``std`` are None when no reply carried one (the answer stays unrated).
    """

    raw: list[str]
    ratings: list[float] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return len(self.raw) - len(self.ratings)

    @property
    def rating(self) -> float | None:
        return statistics.fmean(self.ratings) if self.ratings else None

    @property
    def std(self) -> float | None:
        """Population std across repeats: how much the judge disagrees with itself (0 for one rating)."""
        return statistics.pstdev(self.ratings) if self.ratings else None


def judge_many(judge: ChatJudge, conversations: Sequence[list[Message]], repeats: int = 1,
               parse: Callable[[str | None], float | None] = parse_rating) -> list[Verdict]:
    """Send each conversation ``repeats`` times (all in one ``complete`` call) and parse the replies with
    ``parse`` (:func:`parse_rating`, or :func:`parse_rating_fastchat` with FastChat's prompts).

    Repeats are sent even to a deterministic judge: the caller asked for them, and an endpoint that
    claims temperature 0 is not always deterministic (batching, MoE routing).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    expanded = [conv for conv in conversations for _ in range(repeats)]
    replies = judge.complete(expanded) if expanded else []
    if len(replies) != len(expanded):
        raise RuntimeError(f"judge returned {len(replies)} replies for {len(expanded)} conversations")
    verdicts = []
    for i in range(len(conversations)):
        raw = [r or "" for r in replies[i * repeats:(i + 1) * repeats]]
        verdicts.append(Verdict(raw=raw, ratings=[r for r in map(parse, raw) if r is not None]))
    return verdicts


# --- OpenAI-compatible endpoint -----------------------------------------------------------------


def chat_completions_url(url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions``; a full path stays as is."""
    return f"{base_url(url, '--judge-url')}/chat/completions"


class HttpJudge:
    """A judge behind an OpenAI-compatible chat-completions endpoint, through FuseBench's one client
    (:class:`~harness.openai_client.OpenAIClient`: retries with backoff, one-line errors).

    ``workers`` requests run concurrently (endpoints batch them); ``retries`` extra attempts are made
    on 429 / 5xx / timeouts, waiting ``backoff * 2**attempt`` seconds (or the server's
    ``Retry-After``, capped at a minute). ``api_key_env`` only names the variable in error messages.
    """

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0, max_tokens: int = 1024,
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, workers: int = 4):
        self.client = OpenAIClient(url, api_key=api_key, api_key_env=api_key_env, timeout=timeout, retries=retries,
                                   backoff=backoff, what="judge endpoint", flag="--judge-url")
        self.url = self.client.url("chat/completions")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.workers = max(1, workers)

    def describe(self) -> str:
        return f"{self.model or 'default model'} at {self.url}"

    def check(self) -> None:
        """Fail now if nothing listens at the URL, before minutes of answer generation are spent."""
        self.client.check()

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]:
        if self.workers == 1 or len(conversations) <= 1:
            return [self.chat(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self.chat, c) for c in conversations]
            try:
                return [f.result() for f in futures]
            except BaseException:
                # One failure (after its retries) fails the batch: don't make the user wait while
                # every queued request retries against the same broken endpoint.
                for f in futures:
                    f.cancel()
                raise

    def chat(self, messages: list[Message]) -> str:
        """One chat completion; returns the reply text ('' when the server sent no content)."""
        body: dict[str, Any] = {"messages": messages, "temperature": self.temperature,
                                "max_tokens": self.max_tokens}
        if self.model:
            body["model"] = self.model
        data = self.client.post("chat/completions", body)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self.client.malformed("chat/completions", json.dumps(data).encode()) from None
        return content if isinstance(content, str) else ""


# --- local transformers model -------------------------------------------------------------------


class LocalJudge:
    """A transformers model as judge, loaded on first use so that a bad reference fails early
    (``resolve`` runs in the constructor) while the weights only occupy memory when grading starts.

    Prompts go through the tokenizer's chat template; a template that rejects the system role gets
    the system text prepended to the user turn instead; a tokenizer without a template gets a plain
    ``System: / User: / Assistant:`` transcript. ``temperature`` 0 decodes greedily; above 0 it
    samples, seeded so that a rerun gives the same ratings.
    """

    def __init__(self, ref: ModelRef, *, temperature: float = 0.0, max_tokens: int = 1024, batch_size: int = 8,
                 seed: int = 0):
        self.ref = ref
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self._calls = 0
        self._model: Any = None
        self._tok: Any = None

    def describe(self) -> str:
        return f"local model {self.ref.name}"

    def _load(self) -> None:
        if self._model is None:
            from harness.model import load_hf

            self._model, self._tok = load_hf(self.ref)
            if self._tok.pad_token is None:
                if self._tok.eos_token is None:
                    raise BenchError(f"judge model {self.ref.spec} has neither a pad nor an eos token",
                                     "give its tokenizer a pad_token, or use another judge")
                self._tok.pad_token = self._tok.eos_token

    def render(self, messages: list[Message]) -> str:
        self._load()
        tok = self._tok
        if not getattr(tok, "chat_template", None):
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nAssistant:"
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # jinja raises for templates without a system role
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"]
            if system and rest:
                rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            return tok.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]:
        import torch

        from harness.model import max_length

        self._load()
        model, tok = self._model, self._tok
        prompts = [self.render(c) for c in conversations]
        max_new = max(1, min(self.max_tokens, max_length(model) - 1))
        room = max(1, max_length(model) - max_new)
        sample = self.temperature > 0
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample,
                                      "pad_token_id": tok.pad_token_id}
        if sample:
            gen_kwargs["temperature"] = self.temperature
        self._calls += 1
        replies: list[str] = []
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(self.seed + self._calls)
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start:start + self.batch_size]
                ids = [tok(p, add_special_tokens=not starts_with_bos(tok, p))["input_ids"][-room:] for p in chunk]
                width = max(len(x) for x in ids)
                input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
                out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                     **gen_kwargs)
                replies += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]
        return replies


def starts_with_bos(tok: Any, text: str) -> bool:
    """Chat templates often write the BOS token themselves; adding another one hurts the model."""
    bos = getattr(tok, "bos_token", None)
    return bool(bos and text.startswith(bos))


# --- construction -------------------------------------------------------------------------------


def build_judge(*, url: str | None, model: str | None, api_key_env: str = "OPENAI_API_KEY",
                temperature: float = 0.0, max_tokens: int = 1024, timeout: float = 120.0, batch_size: int = 8,
                seed: int = 0) -> HttpJudge | LocalJudge | None:
    """The judge the options describe, checked as far as possible without grading anything.

    ``url`` given -> :class:`HttpJudge` (``model`` is the name sent to the endpoint; the key comes
    from ``$api_key_env`` when set); only ``model`` -> :class:`LocalJudge` for that model reference;
    neither -> None (nothing will be graded).
    """
    if url:
        judge = HttpJudge(url, model, api_key=os.environ.get(api_key_env) or None, api_key_env=api_key_env,
                          temperature=temperature, max_tokens=max_tokens, timeout=timeout)
        judge.check()
        return judge
    if model:
        from harness.model import resolve

        return LocalJudge(resolve(model, build_missing_zoo=True), temperature=temperature, max_tokens=max_tokens,
                          batch_size=batch_size, seed=seed)
    return None

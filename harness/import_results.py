"""`bench import FILE|DIR`: evaluations made elsewhere into the results DB, as finished runs of kind ``import``, so
that published or external evaluations sit on the same leaderboard as FuseBench's own.

What it reads (told apart by content; a folder is searched for both):

* **lm-eval results**: the JSON that ``lm_eval --output_path`` writes (``results_<date>.json``), with the
  ``samples_<task>_<date>.jsonl`` files of the same date beside it when ``--log_samples`` wrote them. Each results
  file is one run whose one member is the model it names (``model_name``, else the ``pretrained=`` of its
  ``model_args``).
* **FastChat MT-Bench**: ``model_answer/*.jsonl`` and ``model_judgment/*_single.jsonl`` (FastChat's single-answer
  grading; pairwise ``*_pair.jsonl`` files are skipped), with ``question.jsonl`` beside those folders for categories,
  question texts and references: a FastChat ``data/mt_bench`` folder, or one such file. Each folder (or file) is one
  run with a member per model, scored as the ``mtbench`` suite scores (its ``from_fastchat``: mean rating per turn,
  overall and category, judge failures, ``judged = 0`` for answers without judgments).

**Suite names.** A file written by `bench export --format lm-eval` names FuseBench's suite and task in each task's
``configs[task].metadata.fusebench``: those scores come back exactly as they were (suite, task, metric, version, the
run's suite arguments). lm-eval's own BBH tasks map exactly onto FuseBench's ``bbh`` suite at its version 1, which
ran lm-eval's BBH tasks unchanged (prompts, stops and answer filter): ``bbh_cot_fewshot_<task>`` (metric
``exact_match`` with filter ``get-answer``) and ``bbh_fewshot_<task>`` (``exact_match``, no filter) become
``bbh``/``<task>``, their groups ``bbh_cot_fewshot`` / ``bbh_fewshot`` (a mean weighted by size) ``bbh``/``weighted``
(version 2 scores, by the BBH authors' answer rule, are never ranked with them: the leaderboard keys columns by
version). Every other lm-eval task keeps its names: the suite is its group (or the task itself), the task its name
without the group's prefix, the metric lm-eval's (``acc``; ``exact_match,strict-match`` when a filter other than
``none`` made it), the version lm-eval's; a suite name that FuseBench's own suites use gets the prefix ``lm-eval:``
(lm-eval's ``humaneval`` is ``lm-eval:humaneval``), so scores made another way never share a column. FastChat's files
are MT-Bench: the ``mtbench`` suite.

**Models.** An imported model's id is the one FuseBench recorded (a FuseBench-written file names it), else
``ext-<hash of its name>``: two imports of one model name are one leaderboard row (the newest value per column).

**All or nothing, once.** Every file is read and checked before anything is written, then all runs are written in
one transaction. A run's ``run_hash`` is a hash of the files it was read from (names and bytes), so importing the
same files again is recognised and skipped; the run's config records the format and the files
(``{"import": {"format", "source", "files": {name: sha256}}}``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import stable_hash
from harness.errors import BenchError, read_jsonl, read_text
from harness.store import Store

#: The FuseBench suite that lm-eval's BBH tasks map onto, and its version that ran them unchanged.
BBH_SUITE, BBH_LM_EVAL_VERSION = "bbh", "1"
_BBH_TASK = re.compile(r"^bbh_(cot_fewshot|fewshot)_(\w+)$")
_BBH_GROUPS = {"bbh_cot_fewshot": "get-answer", "bbh_fewshot": "none"}
FOREIGN_PREFIX = "lm-eval:"
_FUSEBENCH_KEY = "fusebench"
_LM_EVAL_FIX = "give the results_<date>.json that `lm_eval --output_path DIR` writes"
_FASTCHAT_FIX = "give FastChat's data/mt_bench folder, or a model_answer/*.jsonl or model_judgment/*_single.jsonl file"


@dataclass
class Member:
    """One model of an imported run: its models row, shown name, and evaluations (suite, version, scores, samples)."""

    model: dict[str, Any]
    name: str
    evals: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, suite: str, version: str, scores: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
        entry = self.evals.setdefault((suite, version), {"suite": suite, "suite_version": version, "scores": [],
                                                         "samples": []})
        entry["scores"] += scores
        entry["samples"] += samples


@dataclass
class ImportedRun:
    """What one run of kind ``import`` will hold: where it came from and its members."""

    format: str
    source: Path
    files: dict[str, str]  # file (as found) -> sha256
    members: list[Member]
    versions: dict[str, Any] = field(default_factory=dict)
    git_sha: str | None = None
    suite_args: dict[str, Any] = field(default_factory=dict)

    @property
    def run_hash(self) -> str:
        return "import:" + stable_hash(sorted(self.files.values()), length=32)


@dataclass(frozen=True)
class Outcome:
    """One run of `bench import`: its id, whether it is new (False: these files were imported before), and what."""

    run_id: str
    new: bool
    what: str


def import_path(store: Store, path: Path, name: str | None = None, command: str = "") -> list[Outcome]:
    """Import the lm-eval and FastChat files at ``path`` (a file, or a folder searched for them) into ``store``,
    all runs in one transaction; a BenchError before anything is written when a file is not what it should be."""
    if not path.exists():
        raise BenchError(f"{path} not found", "give an lm-eval results file, a FastChat file, or a folder of them")
    runs = _read_folder(path) if path.is_dir() else [_read_file(path)]
    if not runs:
        raise BenchError(f"{path} holds no lm-eval results (results_*.json) or FastChat MT-Bench files "
                         "(model_answer/, model_judgment/)", _LM_EVAL_FIX + "; or " + _FASTCHAT_FIX)
    rows = []
    for run in runs:
        config = {"import": {"format": run.format, "source": str(run.source.resolve()), "files": run.files}}
        if run.suite_args:
            config["suite_args"] = run.suite_args
        members = [{"model": m.model, "name": m.name, "evals": [
            {**ev, "eval_key": stable_hash(run.run_hash, m.model["id"], ev["suite"], ev["suite_version"])}
            for ev in m.evals.values()]} for m in run.members]
        rows.append(({"name": name, "command": command, "config": config, "run_hash": run.run_hash,
                      "sources": [m.name for m in run.members], "versions": run.versions, "git_sha": run.git_sha,
                      "git_dirty": 0, "host": {}}, members))
    recorded = store.record_imports(rows)
    return [Outcome(run_id, new, f"{run.format} {run.source} ({', '.join(m.name for m in run.members)})")
            for (run_id, new), run in zip(recorded, runs, strict=True)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_folder(folder: Path) -> list[ImportedRun]:
    runs = [_read_lm_eval(file) for file in sorted(folder.rglob("results_*.json"))]
    benches = sorted({d.parent for kind in ("model_answer", "model_judgment") for d in folder.rglob(kind) if d.is_dir()})
    runs += [run for bench in benches if (run := _read_fastchat_folder(bench)) is not None]
    return runs


def _read_file(file: Path) -> ImportedRun:
    if file.suffix == ".json":
        return _read_lm_eval(file)
    if file.suffix == ".jsonl":
        if file.name.startswith("samples_"):
            raise BenchError(f"{file} is an lm-eval samples file", "import the results_<date>.json beside it")
        rows = read_jsonl(file, "FastChat", _FASTCHAT_FIX)
        first = rows[0][1] if rows else {}
        if {"model_id", "choices"} <= set(first):
            return _fastchat_run(file, file.parent.parent / "question.jsonl", [file], [])
        if {"model", "score", "turn"} <= set(first):
            return _fastchat_run(file, file.parent.parent / "question.jsonl", [], [file])
        raise BenchError(f"{file} is neither a FastChat answer file nor a single-grading judgment file",
                         _FASTCHAT_FIX)
    raise BenchError(f"{file} is neither lm-eval results (.json) nor a FastChat file (.jsonl)",
                     _LM_EVAL_FIX + "; or " + _FASTCHAT_FIX)


# --- lm-eval -----------------------------------------------------------------------------------------


def _load_json(file: Path) -> Any:
    try:
        return json.loads(read_text(file, "lm-eval results file"))
    except json.JSONDecodeError as e:
        raise BenchError(f"{file} is not valid JSON (line {e.lineno}: {e.msg})", _LM_EVAL_FIX) from None


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a mapping, else an empty one (a field a file may lack or hold in another shape)."""
    return value if isinstance(value, dict) else {}


def _model_id(name: str, recorded: Any) -> str:
    return recorded if isinstance(recorded, str) and recorded else "ext-" + stable_hash(name)


def _read_lm_eval(file: Path) -> ImportedRun:
    """One lm-eval results file (and the samples files of its date) as a run with one member."""
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.utils import get_file_datetime, get_file_task_name

    doc = _load_json(file)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise BenchError(f"{file} is not an lm-eval results file (no `results` mapping)", _LM_EVAL_FIX)
    config, origin = _mapping(doc.get("config")), _mapping(doc.get(_FUSEBENCH_KEY))
    name = doc.get("model_name") or GeneralConfigTracker._get_model_name(config.get("model_args")) or file.parent.name
    name = str(name)
    member = Member({"id": _model_id(name, origin.get("model_id")), "name": name, "kind": "imported", "ref": name,
                     "details": {"imported_from": str(file.resolve()), "format": "lm-eval"}}, name)
    files = {str(file): _sha256(file)}
    samples: dict[str, Path] = {}
    if file.stem.startswith("results_"):
        date = get_file_datetime(file.name).removesuffix(".json")
        for sample_file in sorted(file.parent.glob(f"samples_*_{date}.jsonl")):
            samples[get_file_task_name(sample_file.name)] = sample_file
            files[str(sample_file)] = _sha256(sample_file)
    group_of = {sub: group for group, subs in _mapping(doc.get("group_subtasks")).items() for sub in subs or []}
    configs = _mapping(doc.get("configs"))
    suite_args: dict[str, Any] = {}
    for task, entry in doc["results"].items():
        if not isinstance(entry, dict):
            raise BenchError(f"{file}: results[{task!r}] is not a mapping", _LM_EVAL_FIX)
        place = _place(task, configs.get(task), group_of, doc)
        scores = [s for s in (_score(place, task, key, entry, doc) for key in entry) if s is not None]
        if not scores:
            continue
        rows = _samples(samples[task], place, task) if task in samples else []
        member.add(place.suite, place.version, scores, rows)
        if place.suite_args is not None:
            suite_args[place.suite] = place.suite_args
    if not member.evals:
        raise BenchError(f"{file} holds no scores (no numeric `metric,filter` entry in its results)", _LM_EVAL_FIX)
    versions = _mapping(origin.get("versions")) or {
        k: v for k, v in (("lm_eval", doc.get("lm_eval_version")), ("transformers", doc.get("transformers_version")))
        if v}
    return ImportedRun("lm-eval", file, files, [member], versions, doc.get("git_hash"), suite_args)


@dataclass(frozen=True)
class _Place:
    """Where an lm-eval task's scores go: suite, task, version; ``filter``: the one filter whose metrics map (None: all,
    named ``metric,filter`` unless the filter is ``none``); ``exact``: metric names without a filter;
    ``suite_args``: the FuseBench run's arguments of the suite (a FuseBench-written file)."""

    suite: str
    task: str
    version: str
    filter: str | None = None
    exact: bool = False
    suite_args: dict[str, Any] | None = None
    counts: dict[str, Any] = field(default_factory=dict)  # metric -> its count of examples, where the file says


def _place(task: str, config: Any, group_of: dict[str, str], doc: dict[str, Any]) -> _Place:
    from harness.registry import suites

    version = str(_mapping(doc.get("versions")).get(task, "")) or "lm-eval"
    metadata = _mapping(_mapping(config).get("metadata"))
    ours = _mapping(metadata.get(_FUSEBENCH_KEY))
    if isinstance(ours.get("suite"), str) and isinstance(ours.get("task"), str):
        args = ours.get("suite_args")
        return _Place(ours["suite"], ours["task"], str(metadata.get("version", version)), "none", True,
                      args if isinstance(args, dict) else None, _mapping(ours.get("n")))
    bbh = _BBH_TASK.match(task)
    if bbh:
        return _Place(BBH_SUITE, bbh.group(2), BBH_LM_EVAL_VERSION, _BBH_GROUPS[f"bbh_{bbh.group(1)}"], True)
    if task in _BBH_GROUPS:
        return _Place(BBH_SUITE, "weighted", BBH_LM_EVAL_VERSION, _BBH_GROUPS[task], True)
    group = group_of.get(task)
    suite = group or task
    short = task.removeprefix(f"{group}_") if group and task != group else task
    if suites().find(suite) is not None:
        suite = FOREIGN_PREFIX + suite
    return _Place(suite, short, version)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _score(place: _Place, task: str, key: str, entry: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any] | None:
    """The score of the results key ``key`` (``metric,filter``), or None for keys that are not a metric's value."""
    metric, comma, filter_name = key.partition(",")
    value = _number(entry[key])
    if not comma or metric.endswith("_stderr") or value is None:
        return None
    if place.filter is not None and filter_name != place.filter:
        return None
    name = metric if place.exact or filter_name == "none" else key
    higher = _mapping(_mapping(doc.get("higher_is_better")).get(task))
    n = place.counts[metric] if metric in place.counts else _mapping(_mapping(doc.get("n-samples")).get(task)).get(
        "effective")
    return {"task": place.task, "metric": name, "value": value,
            "stderr": _number(entry.get(f"{metric}_stderr,{filter_name}")),
            "n": n if isinstance(n, int) else entry.get("sample_len") if isinstance(entry.get("sample_len"), int) else None,
            "higher_is_better": bool(higher.get(metric, True))}


def _samples(file: Path, place: _Place, task: str) -> list[dict[str, Any]]:
    """The lines of a samples file as FuseBench samples (of the mapped filter; else of the first filter seen)."""
    out, seen_filter = [], place.filter
    for number, row in read_jsonl(file, "lm-eval samples", _LM_EVAL_FIX):
        row_filter = str(row.get("filter", "none"))
        seen_filter = seen_filter or row_filter
        if row_filter != seen_filter:
            continue
        if not isinstance(row.get("doc_id"), int):
            raise BenchError(f"{file}:{number}: doc_id must be an integer", _LM_EVAL_FIX)
        first = _mapping(_mapping(row.get("arguments")).get("gen_args_0"))
        resps, filtered = row.get("resps"), row.get("filtered_resps")
        output = resps[0][0] if isinstance(resps, list) and resps and isinstance(resps[0], list) and resps[0] \
            and isinstance(resps[0][0], str) else json.dumps(resps)
        extracted = filtered[0] if isinstance(filtered, list) and filtered and isinstance(filtered[0], str) else None
        metrics = {m: float(row[m]) for m in row.get("metrics") or [] if _number(row.get(m)) is not None}
        out.append({"task": place.task, "doc_id": row["doc_id"], "prompt": str(first.get("arg_0", "")),
                    "output": output, "extracted": extracted, "target": str(row.get("target", "")),
                    "metrics": metrics})
    return out


# --- FastChat ------------------------------------------------------------------------------------------


def _read_fastchat_folder(bench: Path) -> ImportedRun | None:
    answers = sorted((bench / "model_answer").glob("*.jsonl"))
    judgments = sorted((bench / "model_judgment").glob("*_single.jsonl"))
    if not answers and not judgments:
        return None
    return _fastchat_run(bench, bench / "question.jsonl", answers, judgments)


def _fastchat_run(source: Path, questions: Path, answers: list[Path], judgments: list[Path]) -> ImportedRun:
    """FastChat's files as one run: a member per model, scored by the suite that reads FastChat's form."""
    from harness.registry import suites

    suite = next((cls for cls in (suites().find(n) for n in suites().names()) if cls and cls.from_fastchat), None)
    if suite is None or suite.from_fastchat is None:
        raise BenchError("no installed suite reads FastChat's MT-Bench files", "install FuseBench's mtbench suite")
    files = {str(f): _sha256(f) for f in [*answers, *judgments, *([questions] if questions.is_file() else [])]}

    def rows(paths: list[Path], what: str) -> list[tuple[str, dict[str, Any]]]:
        return [(f"{p}:{n}", row) for p in paths for n, row in read_jsonl(p, what, _FASTCHAT_FIX)]

    results = suite.from_fastchat(rows([questions], "question") if questions.is_file() else None,
                                  rows(answers, "FastChat answer"), rows(judgments, "FastChat judgment"))
    members = []
    for model, result in results.items():
        member = Member({"id": _model_id(model, None), "name": model, "kind": "imported", "ref": model,
                         "details": {"imported_from": str(source.resolve()), "format": "fastchat"}}, model)
        member.add(suite.name, suite.version, [_plain(s) for s in result.scores], [_plain(s) for s in result.samples])
        members.append(member)
    if not members:
        raise BenchError(f"{source} holds no FastChat answers or judgments", _FASTCHAT_FIX)
    return ImportedRun("fastchat", source, files, members)


def _plain(record: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(record)

"""`bench export RUN --out DIR`: a run's fused model, or its results in the files other tools read.

``--format hf`` (the default): the run's fused model as a Hugging Face folder — the artifact's weights, config,
tokenizer and ``fusebench.json`` (the files of its top folder; a FuseChat artifact's pairwise targets stay in the
cache) — with a model card, ``README.md`` (:mod:`harness.model_card`), that holds the run's scores. A runtime fuser
(ensemble, Cool-Fusion) has no weights: that is a one-line error. Uploading is the user's
``huggingface-cli upload NAME DIR``.

``--format lm-eval``: per member of the run, the files ``lm_eval --output_path DIR --log_samples`` writes, in its
layout: ``DIR/<model name, sanitised as lm-eval does>/results_<date>.json`` (``results``, ``versions``, ``n-shot``,
``higher_is_better``, ``n-samples``, ``configs``, ``config``, ``model_name`` ...) and a ``samples_<task>_<date>.jsonl``
per task with samples. A FuseBench score of suite S, task T becomes lm-eval task ``S_T`` (``/`` in T as ``_``), its
metric M the key ``M,none`` (``M_stderr,none`` beside it, ``N/A`` without one); ``configs[task].metadata.fusebench``
names the suite and task (and each metric's count of examples: lm-eval's ``n-samples`` has one per task), so that
`bench import` reads the file back exactly. ``n-shot`` is null: FuseBench does not
record the number of shots of its suites. A sample's prompt is lm-eval's ``arguments.gen_args_0.arg_0``, its raw
output ``resps``, the extracted answer ``filtered_resps``, its metrics the top-level keys named in ``metrics``.

``--format fastchat``: the run's MT-Bench samples as FastChat's ``question.jsonl``, ``model_answer/<model>.jsonl`` and,
when judged, ``model_judgment/<judge>_single.jsonl`` (the suite's ``to_fastchat``: :mod:`evals.mtbench`), the layout
of FastChat's ``data/mt_bench/`` folder, so that FastChat's ``show_result.py`` reads it.

Every format writes into ``DIR`` as a whole (a scratch folder renamed into place), which must be new or empty.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import model_card
from harness.atomic import atomic_dir
from harness.errors import BenchError
from harness.store import Store

FORMATS = ("hf", "lm-eval", "fastchat")
#: The key under which a FuseBench-written lm-eval file names FuseBench's suite and task (in ``configs[task]
#: .metadata``) and the run and model (at the top level).
FUSEBENCH_KEY = "fusebench"


@dataclass(frozen=True)
class Exported:
    """What `bench export` wrote: the folder, its files (relative paths) and one line saying what they hold."""

    out: Path
    files: list[str]
    summary: str


def export(store: Store, run_ref: str, out: Path, fmt: str = "hf") -> Exported:
    """Export run ``run_ref`` (an id, or the newest ok run of that name) into the new or empty folder ``out``."""
    writers: dict[str, Callable[[Store, dict[str, Any], Path], str]] = {
        "hf": _write_model, "lm-eval": _write_lm_eval, "fastchat": _write_fastchat}
    if fmt not in writers:
        raise BenchError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    run = store.find_run(run_ref)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"--out {out} is not an empty folder", "give a new or empty folder")
    with atomic_dir(out) as scratch:
        summary = writers[fmt](store, run, scratch)
        files = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.is_file())
    return Exported(out, files, summary)


# --- hf: the fused model with its card ----------------------------------------------------------------


def _write_model(store: Store, run: dict[str, Any], out: Path) -> str:
    fused = [m for m in store.run_members(run["id"]) if m["role"] == "fused"]
    if not fused:
        raise BenchError(f"run {run['id']} has no fused model (it is a `bench {run['kind']}` run)",
                         "give a `bench run` run of a fuser that makes weights; --format lm-eval or fastchat export "
                         "any run's scores")
    member = fused[0]
    if member["model_kind"] == "runtime":
        raise BenchError(f"the fused model of run {run['id']} ({member['model']}) is a runtime model of fuser "
                         f"{run['fuser']}: it has no weights to export",
                         "export a run of a fuser that makes weights (merge, fusellm, fusechat, profuser, fusechat3), or its "
                         "scores with --format lm-eval")
    folder = Path(member["model_path"] or "")
    record = folder / "fusebench.json"
    if not record.is_file():
        raise BenchError(f"the fused model of run {run['id']} is no longer at {folder} (the artifact cache was "
                         "cleared)", f"build it again: {run['command']}")
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name != model_card.CARD_FILE:
            shutil.copy2(file, out / file.name)
    card = json.loads(record.read_text())
    title = run.get("name") or member["model"]
    (out / model_card.CARD_FILE).write_text(
        model_card.render(card, title=title, scores=model_card.scores_markdown(store, run["id"])), encoding="utf-8")
    return f"the fused model {member['model']} of run {run['id']} with its model card"


# --- lm-eval's results and samples files ------------------------------------------------------------


def lm_eval_task(suite: str, task: str) -> str:
    """The lm-eval task name of a FuseBench suite's task: ``bbh-mini`` / ``hyperbaton`` -> ``bbh-mini_hyperbaton``."""
    return f"{suite}_{task}".replace("/", "_")


def _date_id(timestamp: str | None) -> str:
    """A run's start as lm-eval dates its files (``2026-12-06T14-35-38``)."""
    when = dt.datetime.fromisoformat(timestamp) if timestamp else dt.datetime.now(dt.timezone.utc)
    return when.replace(tzinfo=None).isoformat().replace(":", "-")


def _metric_value(value: Any) -> Any:
    return "N/A" if value is None else value


def _write_lm_eval(store: Store, run: dict[str, Any], out: Path) -> str:
    from lm_eval.utils import hash_string, sanitize_model_name

    config = json.loads(run.get("config") or "{}")
    versions = json.loads(run.get("versions") or "{}")
    date_id = _date_id(run.get("started_at"))
    stamp = dt.datetime.fromisoformat(run["started_at"]).timestamp() if run.get("started_at") else None
    scores = store.score_rows(run["id"])
    samples = store.run_samples(run["id"])
    members = [m for m in store.run_members(run["id"]) if any(s["model_id"] == m["model_id"] for s in scores)]
    if not members:
        raise BenchError(f"run {run['id']} recorded no scores", "export a run that finished with scores")
    for member in members:
        mine = [s for s in scores if s["model_id"] == member["model_id"]]
        folder = out / sanitize_model_name(member["model"])
        folder.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        configs: dict[str, dict[str, Any]] = {}
        task_versions: dict[str, str] = {}
        higher: dict[str, dict[str, bool]] = {}
        counts: dict[str, dict[str, int]] = {}
        for s in mine:
            name = lm_eval_task(s["suite"], s["task"])
            entry = results.setdefault(name, {"alias": name})
            entry[f"{s['metric']},none"] = s["value"]
            entry[f"{s['metric']}_stderr,none"] = _metric_value(s["stderr"])
            higher.setdefault(name, {})[s["metric"]] = bool(s["higher_is_better"])
            task_versions[name] = s["suite_version"]
            if s["n"] is not None:
                counts[name] = {"original": int(s["n"]), "effective": int(s["n"])}
            ours = configs.setdefault(name, {"task": name, "tag": [s["suite"]], "metadata": {
                "version": s["suite_version"], FUSEBENCH_KEY: {
                    "suite": s["suite"], "task": s["task"], "n": {},
                    "suite_args": (config.get("suite_args") or {}).get(s["suite"], {})}}})
            ours["metadata"][FUSEBENCH_KEY]["n"][s["metric"]] = s["n"]  # lm-eval has one count per task, not metric
        task_hashes = {}
        by_task: dict[str, list[dict[str, Any]]] = {}
        for row in (r for r in samples if r["model_id"] == member["model_id"]):
            by_task.setdefault(lm_eval_task(row["suite"], row["task"]), []).append(row)
        for name, rows in by_task.items():
            lines = [_lm_eval_sample(row, hash_string) for row in rows]
            task_hashes[name] = hash_string("".join(x["doc_hash"] + x["prompt_hash"] + x["target_hash"] for x in lines))
            with (folder / f"samples_{name}_{date_id}.jsonl").open("w", encoding="utf-8") as f:
                for line in lines:
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        document = {
            "results": results, "group_subtasks": {}, "configs": configs, "versions": task_versions,
            "n-shot": dict.fromkeys(results), "higher_is_better": higher, "n-samples": counts,
            "config": {"model": "fusebench", "model_args": f"pretrained={member['model_path'] or member['model']}",
                       "batch_size": config.get("batch_size"), "device": config.get("device"),
                       "limit": config.get("limit"), "random_seed": config.get("seed")},
            "git_hash": run.get("git_sha"), "date": stamp, "task_hashes": task_hashes,
            "transformers_version": versions.get("transformers"), "lm_eval_version": versions.get("lm_eval"),
            "model_source": "fusebench", "model_name": member["model"],
            "model_name_sanitized": sanitize_model_name(member["model"]),
            FUSEBENCH_KEY: {"run_id": run["id"], "run_name": run.get("name"), "run_kind": run["kind"],
                            "model_id": member["model_id"], "role": member["role"], "versions": versions},
        }
        (folder / f"results_{date_id}.json").write_text(json.dumps(document, indent=2, ensure_ascii=False),
                                                        encoding="utf-8")
    return f"lm-eval results of {len(members)} model(s) of run {run['id']}"


def _lm_eval_sample(row: dict[str, Any], hash_string: Callable[[str], str]) -> dict[str, Any]:
    """A FuseBench sample as a line of lm-eval's ``samples_<task>_<date>.jsonl``."""
    metrics = json.loads(row["metrics"] or "{}")
    prompt, target, output = row["prompt"] or "", row["target"] or "", row["output"] or ""
    doc = {"prompt": prompt, "target": target}
    return {"doc_id": row["doc_id"], "doc": doc, "target": target,
            "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": {}}},
            "resps": [[output]], "filtered_resps": [row["extracted"] if row["extracted"] is not None else output],
            "filter": "none", "metrics": list(metrics), **metrics,
            "doc_hash": hash_string(json.dumps(doc, indent=2, ensure_ascii=False)),
            "prompt_hash": hash_string(prompt), "target_hash": hash_string(target)}


# --- FastChat's MT-Bench files -------------------------------------------------------------------------


def _write_fastchat(store: Store, run: dict[str, Any], out: Path) -> str:
    from harness.registry import suites

    suite = next((cls for cls in (suites().find(name) for name in _run_suites(store, run["id"]))
                  if cls is not None and cls.to_fastchat is not None), None)
    if suite is None or suite.to_fastchat is None:
        raise BenchError(f"run {run['id']} has no samples of a suite with FastChat's form (mtbench)",
                         "export a run with --suite mtbench, or use --format lm-eval")
    config = json.loads(run.get("config") or "{}")
    args = (config.get("suite_args") or {}).get(suite.name, {})
    stamp = dt.datetime.fromisoformat(run["started_at"]).timestamp() if run.get("started_at") else 0.0
    files = suite.to_fastchat(args, store.run_samples(run["id"], suite.name), stamp)
    for relative, rows in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    answers = sum(1 for name in files if name.startswith("model_answer/"))
    judged = any(name.startswith("model_judgment/") for name in files)
    return (f"FastChat {suite.name} files of run {run['id']}: answers of {answers} model(s)"
            + (", with the judge's ratings" if judged else ", not judged"))


def _run_suites(store: Store, run_id: str) -> list[str]:
    return list(dict.fromkeys(row["suite"] for row in store.score_rows(run_id)))

"""Perplexity suite: bits per byte (and byte/word/token perplexity) on held-out text.

Each *task* is a set of documents: one of FuseBench's embedded held-out domains (``code``, ``docs``,
``math`` from :func:`harness.corpus.heldout_documents`) or a user text file / directory given in
``files``. Every document is scored with lm-eval's ``loglikelihood_rolling`` (rolling windows of the
model's context, every token predicted once), so any ``LM`` works: an HF model, a weight merge, or
a runtime ensemble.

The primary metric is **bits per byte** = −Σ log p(doc) / (ln 2 · Σ UTF-8 bytes), which does not
depend on the tokenizer and therefore compares models with different vocabularies (per-token
perplexity does not; it is reported only as an extra when the LM exposes its tokenizer). This is
the metric of FuseLLM's ensemble/merging comparison (arXiv 2401.10491, Table 7).

Documents from ``files``: a single file is split on blank lines into paragraphs, and consecutive
paragraphs are packed into documents of at most ``max_chars_per_doc`` characters (a longer paragraph
is cut into pieces of that size); with ``max_chars_per_doc=None`` the whole file is one document. A
directory contributes the ``*.txt`` files directly inside it, each packed the same way, in name
order. A file or directory becomes one task named after its stem. Embedded-domain documents are
already documents and are only truncated to ``max_chars_per_doc``.

Standard errors are not reported by lm-eval for these ratio metrics ("N/A"); FuseBench computes them
with the delta method for a ratio of sums over documents (see :func:`ratio_stderr`).

Run::

    bench eval --model zoo:llama-code --suite perplexity --set perplexity.files=[notes.txt] --set perplexity.domains=[]
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.api import EvalContext, EvalResult, Sample, Score, Suite
from harness.errors import BenchError, did_you_mean

if TYPE_CHECKING:
    from lm_eval.api.model import LM

_TASK_PREFIX = "fusebench_ppl_"
_LN2 = math.log(2)
_SAMPLE_TARGET_CHARS = 1000
# lm-eval's metric names with the aggregation each needs (given explicitly to silence its warnings).
_METRICS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
            "bits_per_byte": "bits_per_byte"}


class Perplexity(Suite):
    """Bits per byte, byte/word/token perplexity per domain or file, plus their average ("avg")."""

    name: ClassVar[str] = "perplexity"
    version: ClassVar[str] = "1"
    primary_metric: ClassVar[str | None] = "bits_per_byte"
    data_parallel: ClassVar[bool] = True  # lm-eval splits its documents across processes

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        domains: list[str] = Field(default_factory=lambda: ["code", "docs", "math"],
                                   description="Embedded held-out domains (harness.corpus.DOMAINS).")
        files: list[str] = Field(default_factory=list,
                                 description="Text files or directories of .txt files; each is one task.")
        max_docs: int | None = Field(32, ge=1, description="Documents per task (None = all).")
        max_chars_per_doc: int | None = Field(2000, ge=1, description="Characters per document (None = no cut).")

    def evaluate(self, lm: LM, cfg: BaseModel, ctx: EvalContext) -> EvalResult:
        corpora = collect_documents(cfg)
        data_dir = Path(ctx.workdir).resolve() / "perplexity"
        data_dir.mkdir(parents=True, exist_ok=True)
        task_names = {name: _TASK_PREFIX + re.sub(r"\W", "_", name) for name in corpora}
        if len(set(task_names.values())) < len(task_names):
            raise BenchError(f"perplexity task names collide after sanitising: {sorted(corpora)}",
                             "rename the files so their stems differ in letters or digits")
        task_dicts = [_task_dict(task_names[name], _write_jsonl(data_dir, task_names[name], docs))
                      for name, docs in corpora.items()]

        from harness.lmeval import run_tasks

        res = run_tasks(lm, task_dicts, limit=ctx.limit, log_samples=True, seed=ctx.seed)

        count_tokens = _token_counter(lm)
        scores: list[Score] = []
        samples: list[Sample] = []
        per_task_bpb: list[tuple[float, float | None, int]] = []
        for name in corpora:
            rows = sorted(res["samples"][task_names[name]], key=lambda r: r["doc_id"])
            docs = [_document_stats(r, count_tokens) for r in rows]
            task_scores = _scores(name, docs, res, task_names[name])
            scores += task_scores
            bpb = task_scores[0]
            per_task_bpb.append((bpb.value, bpb.stderr, len(docs)))
            samples += [_sample(name, r, d) for r, d in zip(rows, docs, strict=True)]
        scores.append(_average(per_task_bpb))
        return EvalResult(scores=scores, samples=samples)


# --- documents ----------------------------------------------------------------------------------


def collect_documents(cfg: Perplexity.Config) -> dict[str, list[str]]:
    """Task name -> its documents (at most ``max_docs``, none empty), embedded domains first."""
    corpora: dict[str, list[str]] = {}
    for domain in cfg.domains:
        docs = [d[: cfg.max_chars_per_doc] if cfg.max_chars_per_doc else d for d in _domain_documents(domain, cfg)]
        _add_task(corpora, domain, docs, f"domain {domain!r}")
    for spec in cfg.files:
        path = Path(spec).expanduser()
        if path.is_dir():
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.glob("*.txt"))]
            if not texts:
                raise BenchError(f"directory {spec} has no .txt files", "give a text file or a folder of .txt files")
        elif path.is_file():
            texts = [path.read_text(encoding="utf-8", errors="replace")]
        else:
            raise BenchError(f"perplexity file {spec} not found", "give existing text files or folders in files=[...]")
        docs = [doc for text in texts for doc in split_documents(text, cfg.max_chars_per_doc)]
        _add_task(corpora, path.resolve().stem, docs, f"file {spec}")
    if not corpora:
        raise BenchError("the perplexity suite has nothing to score", "give domains=[...] or files=[...]")
    return {name: docs[: cfg.max_docs] if cfg.max_docs else docs for name, docs in corpora.items()}


def split_documents(text: str, max_chars: int | None) -> list[str]:
    """Pack blank-line-separated paragraphs into documents of at most ``max_chars`` characters."""
    if max_chars is None:
        return [text.strip()] if text.strip() else []
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    docs: list[str] = []
    current = ""
    for para in paragraphs:
        pieces = [para[i : i + max_chars] for i in range(0, len(para), max_chars)]
        for piece in pieces:
            joined = f"{current}\n\n{piece}" if current else piece
            if len(joined) <= max_chars:
                current = joined
            else:
                docs.append(current)
                current = piece
    if current:
        docs.append(current)
    return docs


def _domain_documents(domain: str, cfg: Perplexity.Config) -> list[str]:
    try:
        from harness import corpus
    except ImportError as e:  # pragma: no cover - the module ships with FuseBench
        raise BenchError("the embedded held-out domains are not available (harness.corpus missing)",
                         "score your own text with files=[...] and domains=[]") from e
    if domain not in corpus.DOMAINS:
        raise BenchError(f"unknown perplexity domain {domain!r}{did_you_mean(domain, list(corpus.DOMAINS))}",
                         f"choose from {', '.join(corpus.DOMAINS)}")
    return list(corpus.heldout_documents(domain, cfg.max_docs))


def _add_task(corpora: dict[str, list[str]], name: str, docs: list[str], what: str) -> None:
    if name == "avg":
        raise BenchError(f"{what}: the task name 'avg' is reserved for the average", "rename the file")
    if name in corpora:
        raise BenchError(f"two perplexity tasks are named {name!r}", "rename the file or drop the duplicate")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise BenchError(f"{what} has no text to score", "give a non-empty text")
    corpora[name] = docs


def _write_jsonl(folder: Path, task: str, docs: list[str]) -> Path:
    """Rows ``{"text": doc}``; the name carries a content hash so the datasets cache never goes stale."""
    lines = "".join(json.dumps({"text": doc}) + "\n" for doc in docs)
    path = folder / f"{task}-{hashlib.sha256(lines.encode()).hexdigest()[:12]}.jsonl"
    path.write_text(lines, encoding="utf-8")
    return path


def _task_dict(task: str, data_file: Path) -> dict[str, Any]:
    """An lm-eval ``loglikelihood_rolling`` task over a local JSONL of ``{"text": ...}`` rows."""
    return {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m, "aggregation": agg, "higher_is_better": False} for m, agg in _METRICS.items()],
        "metadata": {"version": Perplexity.version},
    }


# --- per-document numbers and scores ------------------------------------------------------------


def _token_counter(lm: LM) -> Any:
    """Tokens each document is scored as, when the LM has one tokenizer (HFLM, token-level ensemble)."""
    if getattr(lm, "tokenizer", None) is None:
        return None
    encode = getattr(lm, "tok_encode", None)
    if encode is not None:
        return lambda text: len(encode(text))
    return lambda text: len(lm.tokenizer.encode(text, add_special_tokens=False))


def _document_stats(row: dict[str, Any], count_tokens: Any) -> dict[str, Any]:
    """Log-likelihood, bytes, words (and tokens) of one scored document, from lm-eval's sample."""
    loglik, n_bytes = row["bits_per_byte"]
    _, n_words = row["word_perplexity"]
    text = row["doc"]["text"]
    stats = {"text": text, "loglikelihood": float(loglik), "bytes": int(n_bytes), "words": int(n_words)}
    if count_tokens is not None:
        stats["tokens"] = count_tokens(text)
    return stats


def _scores(task: str, docs: list[dict[str, Any]], res: dict[str, Any], lm_eval_task: str) -> list[Score]:
    """bits/byte first (the primary), then byte, word and token perplexity, each with a stderr.

    Values are lm-eval's aggregates where it has them; the stderrs (and token perplexity) are ours.
    """
    from harness.lmeval import metric

    n = len(docs)
    nll = [-d["loglikelihood"] for d in docs]
    bpb, bpb_se = ratio(nll, [d["bytes"] * _LN2 for d in docs])
    bpb = _first(metric(res, lm_eval_task, "bits_per_byte"), bpb)
    byte_ppl = _first(metric(res, lm_eval_task, "byte_perplexity"), 2**bpb)
    scores = [
        Score(task, "bits_per_byte", bpb, higher_is_better=False, stderr=bpb_se, n=n),
        Score(task, "byte_perplexity", byte_ppl, higher_is_better=False,
              stderr=None if bpb_se is None else byte_ppl * _LN2 * bpb_se, n=n),
    ]
    for unit in ("words", "tokens"):
        if unit not in docs[0]:
            continue
        per_unit, se = ratio(nll, [d[unit] for d in docs])
        ppl = _safe_exp(per_unit)
        if unit == "words":
            ppl = _first(metric(res, lm_eval_task, "word_perplexity"), ppl)
        # d ppl = ppl * d(nats per unit): the delta method once more.
        scores.append(Score(task, f"{unit[:-1]}_perplexity", ppl, higher_is_better=False,
                            stderr=None if se is None else ppl * se, n=n))
    return scores


def _first(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


def ratio(x: list[float], y: list[float]) -> tuple[float, float | None]:
    """Σx/Σy and its standard error (:func:`ratio_stderr`)."""
    value = sum(x) / sum(y)
    return value, ratio_stderr(x, y)


def ratio_stderr(x: list[float], y: list[float]) -> float | None:
    """Delta-method standard error of the ratio estimator R = Σx/Σy over n documents.

    ``Var(R) ≈ Σ (x_i − R·y_i)² / (n (n−1) ȳ²)``: the usual linearisation of a ratio of means,
    treating documents as i.i.d. draws. Deterministic (no bootstrap), ``None`` for a single document.
    """
    n = len(x)
    if n < 2 or sum(y) == 0:
        return None
    r = sum(x) / sum(y)
    y_mean = sum(y) / n
    residual_ss = sum((xi - r * yi) ** 2 for xi, yi in zip(x, y, strict=True))
    return math.sqrt(residual_ss / (n * (n - 1))) / y_mean


def _average(per_task: list[tuple[float, float | None, int]]) -> Score:
    """Unweighted mean bits/byte over tasks; tasks are independent, so the variances add."""
    k = len(per_task)
    value = sum(v for v, _, _ in per_task) / k
    errors = [se for _, se, _ in per_task]
    se = None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / k  # type: ignore[operator]
    return Score("avg", "bits_per_byte", value, higher_is_better=False, stderr=se, n=sum(n for *_, n in per_task))


def _sample(task: str, row: dict[str, Any], doc: dict[str, Any]) -> Sample:
    metrics = {"loglikelihood": doc["loglikelihood"], "bytes": float(doc["bytes"]), "words": float(doc["words"]),
               "bits_per_byte": -doc["loglikelihood"] / (doc["bytes"] * _LN2)}
    if "tokens" in doc:
        metrics["tokens"] = float(doc["tokens"])
    return Sample(task=task, doc_id=int(row["doc_id"]), prompt="", output="",
                  target=doc["text"][:_SAMPLE_TARGET_CHARS], metrics=metrics)


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf

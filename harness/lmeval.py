"""Small shared helpers around lm-eval: run task configs on an ``LM``, read metrics as plain numbers.

Every suite built on lm-eval goes through :func:`run_tasks`::

    res = run_tasks(lm, [task_dict, ...], limit=ctx.limit, seed=ctx.seed)
    bpb = metric(res, "my_task", "bits_per_byte")        # a plain float, or None for "N/A"
    rows = res["samples"]["my_task"]                      # per-document records (log_samples=True)

Task dicts are lm-eval ``TaskConfig`` fields (``task``, ``dataset_path: json``, ``dataset_kwargs``,
``output_type`` …) with **absolute** data-file paths: lm-eval resolves relative ``data_files`` against
the current directory, not against anything of ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.jsonable import to_plain
from harness.logs import quiet

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager


def run_tasks(
    lm: LM,
    tasks: Sequence[dict[str, Any] | str],
    *,
    limit: int | float | None = None,
    log_samples: bool = True,
    seed: int = 0,
    include_path: str | Path | list[str | Path] | None = None,
    include_defaults: bool | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``lm`` on lm-eval tasks and return lm-eval's result dict with plain Python values.

    ``tasks`` are task dicts (YAML-free configs) or names of tasks found under ``include_path`` or
    among lm-eval's builtins. Indexing the builtin tasks costs ~8 s, so it only happens when a task
    is given by name (``include_defaults=None``) or when asked for. Extra ``kwargs`` go to
    ``lm_eval.simple_evaluate`` (``confirm_run_unsafe_code``, ``gen_kwargs``, ``num_fewshot`` …).
    The returned dict has ``results``, ``samples`` (when ``log_samples``), ``n-samples``,
    ``higher_is_better``, ``versions`` and ``configs``; numpy/torch scalars become ``float``/``int``,
    tuples become lists and anything else that JSON cannot hold becomes ``str``.
    """
    import lm_eval

    if include_defaults is None:
        include_defaults = any(isinstance(t, str) for t in tasks)
    manager = task_manager(include_path, include_defaults)
    ensure_context_length(lm)
    with quiet():
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            log_samples=log_samples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **kwargs,
        )
    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
            "n-samples", "samples")
    plain = None if res is None else to_plain({k: res[k] for k in keep if k in res})
    if getattr(lm, "world_size", 1) > 1:  # data parallel (harness.eval_worker): lm-eval gathered it on rank 0 only
        plain = _from_rank_zero(plain)
    return plain if plain is not None else {"results": {}, "samples": {}}


def _from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every process of a data-parallel evaluation, so that each one's suite code reads the
    same result (only rank 0's is written)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def metric(res: dict[str, Any], task: str, name: str, filter_name: str = "none") -> float | None:
    """One aggregate value from :func:`run_tasks`'s result (``None`` where lm-eval says "N/A")."""
    value = res["results"].get(task, {}).get(f"{name},{filter_name}")
    return float(value) if isinstance(value, (int, float)) else None


def stderr(res: dict[str, Any], task: str, name: str, filter_name: str = "none") -> float | None:
    """The standard error lm-eval reports for a metric (``None`` for "N/A")."""
    return metric(res, task, f"{name}_stderr", filter_name)


# --- the task manager ---------------------------------------------------------------------------


def task_manager(include_path: str | Path | list[str | Path] | None = None,
                 include_defaults: bool = True) -> TaskManager:
    """A cached ``TaskManager`` (building one that indexes the builtin tasks takes seconds)."""
    if isinstance(include_path, (list, tuple)):
        key: tuple[str, ...] | None = tuple(str(Path(p).resolve()) for p in include_path)
    else:
        key = (str(Path(include_path).resolve()),) if include_path is not None else None
    return _task_manager(key, include_defaults)


@lru_cache(maxsize=8)
def _task_manager(include_path: tuple[str, ...] | None, include_defaults: bool) -> TaskManager:
    from lm_eval.tasks import TaskManager

    with quiet():
        return TaskManager(include_path=list(include_path) if include_path else None,
                           include_defaults=include_defaults)


# --- the LM -------------------------------------------------------------------------------------


def ensure_context_length(lm: LM) -> None:
    """Give an ``HFLM`` the real context length where lm-eval cannot read it from the config.

    lm-eval looks only at ``n_positions``/``max_position_embeddings``/``n_ctx`` and otherwise uses
    2048, so an MPT (``max_seq_len``) with a shorter context fails in ``loglikelihood_rolling``
    (``The size of tensor a (517) must match the size of tensor b (512)``). Other LMs are untouched.
    """
    model = getattr(lm, "_model", None)
    if model is None or not hasattr(lm, "_max_length") or getattr(lm, "_max_length", None):
        return
    from harness.model import max_length

    known = max_length(model)
    if known < lm.max_length:
        lm._max_length = known


# --- plain values -------------------------------------------------------------------------------


def generate_greedy(lm: LM, prompts: Sequence[str], stop: Sequence[str], max_gen_toks: int, *,
                    docs: Sequence[dict[str, Any]] | None = None, doc_ids: Sequence[Any] | None = None,
                    task: str = "fusebench") -> list[str]:
    """Greedy continuations of ``prompts`` through ``lm.generate_until`` (batched by the LM), stripped.

    Generation stops at any string of ``stop`` (lm-eval also stops at EOS) or after ``max_gen_toks`` tokens.
    ``docs`` / ``doc_ids``: what each request records as its document and document id (default: the index).
    """
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="generate_until", doc=dict(docs[i]) if docs is not None else {"index": i},
                 arguments=(p, {"until": list(stop), "max_gen_toks": max_gen_toks, "do_sample": False}),
                 idx=0, metadata=(task, doc_ids[i] if doc_ids is not None else i, 1))
        for i, p in enumerate(prompts)
    ]
    outputs = lm.generate_until(requests) if requests else []
    return [str(o).strip() for o in outputs]

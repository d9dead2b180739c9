"""Benchmark FuseBench's inference path against plain transformers passes over the same tokens, in one run.

Run: ``.venv/bin/python benchmarks/bench_inference.py`` (a few minutes on 2 idle cores; ``--only perplexity`` or
``--only generation`` runs one part). The model is ``zoo:smollm2-135m`` (``bench zoo add smollm2-135m``), a 134.5M
parameter Llama with a 49,152-token vocabulary, in float32 on the CPU.

(a) **Perplexity scoring**: the perplexity suite's held-out documents (``--docs-per-domain`` of each domain, cut
    to ``--chars-per-doc`` characters), scored as the suite scores them: ``loglikelihood_rolling`` through the
    lm-eval ``LM`` that :func:`harness.model.as_lm` returns. The **raw pass** gets the same rolling windows, already
    tokenized, sorted longest first, right-padded in batches of ``--batch-size``, one ``model(ids)`` per batch under
    ``no_grad``, a ``log_softmax`` over the vocabulary and the log-probability of each target token gathered. Every
    way must give the same total log-likelihood (to 1e-5 relative). The defaults, 16 documents of 500 characters per
    domain, mix lengths as the suite's 96 documents of 2,000 characters do, in a tenth of the tokens.
(b) **Greedy generation**: MT-Bench's first-turn questions in the model's chat template, answered through
    :func:`harness.lmeval.generate_greedy` (the path of BBH, HumanEval, MT-Bench and ProFuser: the LM's
    ``generate_until``), stopping at the end-of-turn marker or after ``--max-new-tokens``. The **raw pass** is
    ``model.generate`` with its KV cache, greedy, on the same prompts in the same batches (longest first, as lm-eval
    orders them), left-padded, with the same token budget, stopping at EOS (here the end-of-turn marker). Every way
    must produce the same texts.

Three ways each, in rounds that rotate their order so that a change in the machine's load hits all of them alike:
the raw pass, lm-eval's stock ``HFLM`` (what FuseBench evaluated with at first) and FuseBench's LM
(:func:`harness.model.as_lm`). Printed per way: the median wall-clock seconds over rounds, the spread (min-max), the
ratio to the raw pass, and the same for the process's CPU seconds; and the load average at the start and end. On a
machine busy with other work, run with ``--threads 1``: two torch threads on two shared cores spin-wait on each
other (measured under load average 7: 8 × 16 greedy tokens 5 s on one thread, 31-36 s on two), and with one
thread the CPU seconds count the work done rather than the waiting, which makes them the steadier ratio there.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.lmeval import generate_greedy
from harness.logs import quiet
from harness.model import as_lm, load_hf, max_length, resolve

RAW = "raw pass (transformers)"
STOCK = "lm-eval HFLM (stock)"
FUSEBENCH = "FuseBench LM (as_lm)"


# ---------------------------------------------------------------------------------------------- ways


def stock_hflm(model: Any, tok: Any, batch_size: int) -> Any:
    """lm-eval's own ``HFLM`` over the same in-memory model, as :func:`harness.model.as_lm` built it before."""
    from lm_eval.models.huggingface import HFLM

    with quiet(logging.ERROR):
        return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length(model),
                    device=str(model.device))


def rolling_windows(lm: Any, documents: list[str]) -> list[tuple[list[int], int]]:
    """Every document's rolling windows as (tokens, how many of the last tokens are predicted), exactly as lm-eval's
    ``loglikelihood_rolling`` cuts them (context length 1, the prefix token first)."""
    from lm_eval import utils

    windows = []
    for text in documents:
        pairs = utils.get_rolling_token_windows(token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id,
                                                max_seq_len=lm.max_length, context_len=1)
        windows += [(context + continuation, len(continuation))
                    for context, continuation in map(utils.make_disjoint_window, pairs)]
    return windows


def raw_scoring(model: Any, windows: list[tuple[list[int], int]], batch_size: int) -> float:
    """Total log-likelihood of the windows' predicted tokens: windows sorted longest first, right-padded batches,
    one forward each, ``log_softmax`` over the vocabulary and the target tokens' entries gathered."""
    ordered = sorted(windows, key=lambda w: len(w[0]), reverse=True)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            width = len(batch[0][0]) - 1
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.zeros(len(batch), width, dtype=torch.long)
            scored = torch.zeros(len(batch), width, dtype=torch.bool)
            for row, (tokens, predicted) in enumerate(batch):
                n = len(tokens) - 1
                inputs[row, :n] = torch.tensor(tokens[:-1])
                targets[row, :n] = torch.tensor(tokens[1:])
                scored[row, n - predicted : n] = True
            log_probs = torch.log_softmax(model(inputs).logits, dim=-1)
            total += float(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[scored].sum())
    return total


def lm_scoring(lm: Any, documents: list[str]) -> float:
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0) for text in documents]
    return math.fsum(lm.loglikelihood_rolling(requests, disable_tqdm=True))


def raw_generation(model: Any, tok: Any, prompts: list[str], stop: list[str], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """``model.generate`` in lm-eval's batches (longest prompt first), left-padded, greedy, KV cache; the text of
    each continuation up to the first stop string, stripped (what ``generate_greedy`` returns)."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(tok.encode(prompts[i])), prompts[i]))
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        encoded = tok([prompts[i] for i in chosen], padding="longest", padding_side="left", return_tensors="pt")
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tok.pad_token_id)
        for i, row in zip(chosen, out[:, encoded["input_ids"].shape[1]:].tolist(), strict=True):
            text = tok.decode(row, skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            texts[i] = text.strip()
    return [texts[i] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------- inputs


def perplexity_documents(per_domain: int, chars: int) -> list[str]:
    from evals.perplexity import Perplexity, collect_documents

    corpora = collect_documents(Perplexity.Config(max_docs=per_domain, max_chars_per_doc=chars))
    return [doc for docs in corpora.values() for doc in docs]


def chat_prompts(tok: Any, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` MT-Bench questions' first turns in ``tok``'s chat template, and its end-of-turn markers."""
    from evals.mtbench import load_questions
    from harness.chat_data import chat_prompt, turn_stops

    questions = load_questions()[:n]
    return [chat_prompt(tok, [{"role": "user", "content": q.turns[0]}]) for q in questions], turn_stops([tok])


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Timings:
    """Wall-clock and CPU seconds of each way, one entry per round."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def interleaved(ways: dict[str, Callable[[], Any]], rounds: int) -> tuple[Timings, dict[str, Any]]:
    """Time each way once per round (the order rotates every round); each way's last result."""
    timings = Timings({name: [] for name in ways}, {name: [] for name in ways})
    results: dict[str, Any] = {}
    names = list(ways)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = ways[name]()
            timings.wall[name].append(time.perf_counter() - wall)
            timings.cpu[name].append(time.process_time() - cpu)
            print(f"  round {round_number + 1}: {name}: {timings.wall[name][-1]:.2f} s "
                  f"(CPU {timings.cpu[name][-1]:.2f} s)", flush=True)
    return timings, results


def report(timings: Timings, what: str) -> None:
    print(f"\n{'way':<28} {'wall s':>8} {'min-max':>15} {'vs raw':>7}   {'CPU s':>8} {'min-max':>15} {'vs raw':>7}")
    raw_wall, raw_cpu = statistics.median(timings.wall[RAW]), statistics.median(timings.cpu[RAW])
    for name in timings.wall:
        wall, cpu = timings.wall[name], timings.cpu[name]
        print(f"{name:<28} {statistics.median(wall):>8.2f} {min(wall):>7.2f}-{max(wall):<7.2f} "
              f"{statistics.median(wall) / raw_wall:>7.2f}   {statistics.median(cpu):>8.2f} "
              f"{min(cpu):>7.2f}-{max(cpu):<7.2f} {statistics.median(cpu) / raw_cpu:>7.2f}")
    for clock, seconds in (("wall", timings.wall), ("CPU", timings.cpu)):
        raw = statistics.median(seconds[RAW])
        print(f"ratio, {what} ({clock}): stock HFLM / raw {statistics.median(seconds[STOCK]) / raw:.2f}, "
              f"FuseBench / raw {statistics.median(seconds[FUSEBENCH]) / raw:.2f}")
    print()


def bench_perplexity(model: Any, tok: Any, args: argparse.Namespace) -> None:
    documents = perplexity_documents(args.docs_per_domain, args.chars_per_doc)
    stock, fusebench = stock_hflm(model, tok, args.batch_size), as_lm(model, tok, args.batch_size)
    windows = rolling_windows(stock, documents)
    n_tokens = sum(predicted for _, predicted in windows)
    print(f"(a) perplexity scoring: {len(documents)} documents, {len(windows)} windows, {n_tokens} scored tokens, "
          f"batch size {args.batch_size}")
    timings, totals = interleaved({
        RAW: lambda: raw_scoring(model, windows, args.batch_size),
        STOCK: lambda: lm_scoring(stock, documents),
        FUSEBENCH: lambda: lm_scoring(fusebench, documents),
    }, args.rounds)
    for name, total in totals.items():
        if not math.isclose(total, totals[RAW], rel_tol=1e-5):
            sys.exit(f"{name}: total log-likelihood {total!r} differs from the raw pass's {totals[RAW]!r}; "
                     "the timings would mean nothing")
    print(f"  total log-likelihood {totals[RAW]:.4f} from every way (to 1e-5 relative)")
    report(timings, "perplexity scoring")


def bench_generation(model: Any, tok: Any, args: argparse.Namespace) -> None:
    prompts, stop = chat_prompts(tok, args.prompts)
    stock, fusebench = stock_hflm(model, tok, args.batch_size), as_lm(model, tok, args.batch_size)
    print(f"(b) greedy generation: {len(prompts)} MT-Bench prompts "
          f"({min(map(len, map(tok.encode, prompts)))}-{max(map(len, map(tok.encode, prompts)))} tokens), "
          f"at most {args.max_new_tokens} new tokens, stop {stop}, batch size {args.batch_size}")
    timings, texts = interleaved({
        RAW: lambda: raw_generation(model, tok, prompts, stop, args.max_new_tokens, args.batch_size),
        STOCK: lambda: generate_greedy(stock, prompts, stop, args.max_new_tokens),
        FUSEBENCH: lambda: generate_greedy(fusebench, prompts, stop, args.max_new_tokens),
    }, args.rounds)
    for name, outputs in texts.items():
        differ = [i for i, (a, b) in enumerate(zip(outputs, texts[RAW], strict=True)) if a != b]
        if differ:
            sys.exit(f"{name}: prompt {differ[0]} gave {outputs[differ[0]]!r}, the raw pass "
                     f"{texts[RAW][differ[0]]!r}; the timings would mean nothing")
    words = sum(len(t.split()) for t in texts[RAW])
    print(f"  the same {len(prompts)} texts from every way ({words} words in all)")
    report(timings, "greedy generation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:smollm2-135m", help="model reference (default: %(default)s)")
    parser.add_argument("--only", choices=["perplexity", "generation"], help="run one part")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per part (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="FuseBench's default (default: %(default)s)")
    parser.add_argument("--docs-per-domain", type=int, default=16, help="(a) documents per held-out domain")
    parser.add_argument("--chars-per-doc", type=int, default=500, help="(a) characters per document")
    parser.add_argument("--prompts", type=int, default=8, help="(b) MT-Bench questions")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="(b) token budget per answer")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core); on a machine "
                        "busy with other work, 1 avoids threads spin-waiting on each other and steadies the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_hf(resolve(args.model))
    load_before = os.getloadavg()
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{model.dtype}, {model.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"{args.rounds} round(s)\n")
    if args.only in (None, "perplexity"):
        bench_perplexity(model, tok, args)
    if args.only in (None, "generation"):
        bench_generation(model, tok, args)
    load_after = os.getloadavg()
    print(f"load average (1 min) at start {load_before[0]:.2f}, at end {load_after[0]:.2f}: figures taken under "
          "other load are slower for every way, and noisier")


if __name__ == "__main__":
    main()

"""Cool-Fusion: KV-cached vs uncached decoding speed on the same prompts (the texts must be identical).

Uses the default zoo when ``$BENCH_HOME`` has it built (e.g. ``BENCH_HOME=/tmp/fresh-home``), else builds
and uses the micro zoo in a temporary home. Tokens/s counts the generated text re-tokenised by the first
member. ``--math N`` also reports exact match on N held-out math problems for Cool-Fusion and each source
decoding greedily alone (prompt "Q: ...\\nA:", the last number of the answer is compared).

    BENCH_HOME=/tmp/fresh-home .venv/bin/python benchmarks/bench_cool_fusion.py --math 30
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import torch

SOURCES = ["gpt2-code", "neox-docs", "mpt-math"]


def _home() -> str:
    home = os.environ.get("BENCH_HOME")
    if home and all((Path(home) / "zoo" / n / "config.json").is_file() for n in SOURCES):
        return "default zoo"
    from harness import zoo

    os.environ["BENCH_HOME"] = tempfile.mkdtemp(prefix="cf-bench-")
    zoo.build(preset="micro", progress=False)
    return "micro zoo"


def _last_number(text: str) -> str | None:
    found = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--math", type=int, default=0, help="also measure exact match on this many problems")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = _home()

    from fusers.cool_fusion import CoolFusionLM
    from harness.corpus import math_problems
    from harness.model import as_lm, load_hf, resolve

    members = [as_lm(*load_hf(resolve(f"zoo:{n}"))) for n in SOURCES]
    problems = math_problems(max(args.prompts, args.math), seed=0)
    prompts = [f"Q: {q}\nA:" for q, _ in problems[: args.prompts]]
    until = ["\nQ:", "\n\n"]

    texts, rates = {}, {}
    for use_cache in (True, False):
        lm = CoolFusionLM(members, use_cache=use_cache, max_gen_toks=args.max_gen_toks)
        start = time.perf_counter()
        texts[use_cache] = [lm.generate(p, until=until) for p in prompts]
        seconds = time.perf_counter() - start
        n_tokens = sum(len(members[0].tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[use_cache])
        rates[use_cache] = n_tokens / seconds
        print(f"{where}: use_cache={use_cache}: {n_tokens} tokens in {seconds:.2f}s = {rates[use_cache]:.1f} tok/s, "
              f"stats {lm.stats}")
    assert texts[True] == texts[False], "cached and uncached decoding disagree"
    print(f"identical text on {len(prompts)} prompts; cached/uncached speed ratio {rates[True] / rates[False]:.2f}x")

    if args.math:
        answers = [a for _, a in problems[: args.math]]
        questions = [f"Q: {q}\nA:" for q, _ in problems[: args.math]]
        fused = CoolFusionLM(members, max_gen_toks=args.max_gen_toks)
        outputs = {"cool-fusion": [fused.generate(q, until=until) for q in questions]}
        for name, member in zip(SOURCES, members, strict=True):
            alone = CoolFusionLM([member], max_gen_toks=args.max_gen_toks)  # one member = its own greedy decoding
            outputs[name] = [alone.generate(q, until=until) for q in questions]
        print(f"\nexact match on {args.math} held-out math problems ({where}):")
        for name, outs in outputs.items():
            em = sum(_last_number(o) == a for o, a in zip(outs, answers, strict=True)) / len(answers)
            print(f"  {name:12s} {em:.3f}")


if __name__ == "__main__":
    main()

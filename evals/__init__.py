"""Evaluation suites. One file per suite; register it here with one line (name -> "module:Class")."""

BUILTIN: dict[str, str] = {
    "perplexity": "evals.perplexity:Perplexity",
    "bbh": "evals.bbh:BBH",
    "bbh-mini": "evals.bbh:BBHMini",
    "humaneval": "evals.humaneval:HumanEval",
    "humaneval-mini": "evals.humaneval:HumanEvalMini",
    "mtbench": "evals.mtbench:MTBench",
}

#: The headline metric of each suite (what the leaderboard shows unless asked for all metrics).
PRIMARY_METRIC: dict[str, str] = {
    "perplexity": "bits_per_byte",
    "bbh": "exact_match",
    "bbh-mini": "exact_match",
    "humaneval": "pass@1",
    "humaneval-mini": "pass@1",
    "mtbench": "score",
}

#: Tasks the leaderboard shows by default (every task otherwise); `--per-task` shows all.
SUMMARY_TASKS: dict[str, list[str]] = {
    "bbh": ["macro", "weighted"],
    "bbh-mini": ["macro"],
    "mtbench": ["overall", "turn1", "turn2"],
}

"""Evaluation suites. One file per suite; register it here with one line (name -> "module:Class")."""

BUILTIN: dict[str, str] = {
    "perplexity": "evals.perplexity:Perplexity",
    "bbh": "evals.bbh:BBH",
    "bbh-mini": "evals.bbh:BBHMini",
    "humaneval": "evals.humaneval:HumanEval",
    "humaneval-mini": "evals.humaneval:HumanEvalMini",
    "mtbench": "evals.mtbench:MTBench",
}

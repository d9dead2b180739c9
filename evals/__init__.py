"""Evaluation suites. One file per suite; register it here with one line (name -> "module:Class")."""

BUILTIN: dict[str, str] = {
    "perplexity": "evals.perplexity:Perplexity",
}

#: The headline metric of each suite (what the leaderboard shows unless asked for all metrics).
PRIMARY_METRIC: dict[str, str] = {
    "perplexity": "bits_per_byte",
}

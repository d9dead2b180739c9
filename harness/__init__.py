"""FuseBench: fuse LLMs, evaluate the fused models against their sources, keep every result in SQLite.

On the command line it is `bench` (:mod:`harness.cli`); in Python, :mod:`harness.bench` has the same commands as
functions that return typed results holding pandas frames::

    from harness import bench

    result = bench.evaluate(["zoo:llama-base"], suites=["perplexity"], limit=4)
    result.scores[["model", "task", "metric", "value"]]
    bench.leaderboard().table

Importing the package is cheap: torch and the other heavy libraries are imported by the functions that need them.
"""

from harness import bench

__all__ = ["bench"]

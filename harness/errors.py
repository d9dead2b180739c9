"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations


class BenchError(Exception):
    """A problem with the user's input. The CLI prints ``error: <problem> (fix: <hint>)`` and exits 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(self.problem.split())
        return f"{text} (fix: {' '.join(self.fix.split())})" if self.fix else text


def did_you_mean(word: str, choices: list[str]) -> str:
    """A ' did you mean X?' suffix when a close match exists, else ''."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" did you mean {close[0]!r}?" if close else ""

"""User-facing errors: one line naming the problem and the fix, exit code 2; and the readers of files a user
gives, which turn whatever is wrong with one into such an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    """A '; did you mean X?' suffix when a close match exists, else ''."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_text(path: str | Path, what: str) -> str:
    """The text of a UTF-8 file the user gave (``what``: "config file", "predictions file" ...); a BenchError
    naming the file, and the line of the first bad byte, when it cannot be read or is not UTF-8."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{what} {path} not found", "check the path") from None
    except IsADirectoryError:
        raise BenchError(f"{what} {path} is a folder", "give a file") from None
    except OSError as e:
        raise BenchError(f"cannot read {what} {path}: {e.strerror or e}", "check the path and its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BenchError(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line})",
                         "save it as UTF-8") from None


def read_jsonl(path: Path, what: str, fix: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file the user gave (``what``: "question",
    "judge prompt" ...); a BenchError naming the file, or the line, and ``fix`` otherwise."""
    if not path.is_file():
        raise BenchError(f"{what} file {path} not found", fix)
    rows = []
    for number, line in enumerate(read_text(path, f"{what} file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}:{number}: not valid JSON ({e.msg})", fix) from None
        if not isinstance(row, dict):
            raise BenchError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}", fix)
        rows.append((number, row))
    return rows

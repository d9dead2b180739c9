"""Writing text from the results DB into Markdown (`bench report --format markdown`, `bench leaderboard
--format markdown`) so that it stays text.

Run names, model names, task labels and command lines are whatever users and predictions files put in the
DB. Pasted into a PR or rendered by any CommonMark renderer, they must not become HTML (``<img onerror=...>``),
links, emphasis, extra table cells or an escape from a code span.
"""

from __future__ import annotations

import html
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Markdown punctuation that can start markup in running text or a table cell (CommonMark lets a backslash
# escape any of them). `<`, `>` and `&` become HTML entities instead, which every renderer shows as text.
_METACHARS = re.compile(r"([\\`*_\[\]|#~$])")


def _one_line(text: str) -> str:
    """A line break in DB text would end a table row or start a new block (an HTML block can follow it)."""
    return _LINE_BREAK.sub(" ", text)


def escape(value: object) -> str:
    """``value`` as literal text in a Markdown paragraph, heading or table cell."""
    text = html.escape(_one_line(str(value)), quote=False)
    return _METACHARS.sub(r"\\\1", text)


def code(value: object) -> str:
    """``value`` as an inline code span: fenced by one backtick more than its longest run of backticks, so no
    backtick inside can close it (HTML in a code span is shown as text)."""
    text = _one_line(str(value))
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    # a span that starts or ends with a backtick needs a space there; CommonMark strips one from each end
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"

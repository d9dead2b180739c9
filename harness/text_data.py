"""Your own training data, ``--set data=PATH``: rows of text (FuseLLM, ProFuser) or of conversations (FuseChat,
ProFuser; :func:`harness.chat_data.load_conversations` reads them from the same formats).

PATH is one of

* a text file (``.txt``, ``.md``, ``.py`` ..., any other suffix): one row, ``{"text": its content}``;
* a JSONL file (``.jsonl``): one JSON object per line;
* a parquet file (``.parquet``): its rows;
* a directory saved by ``datasets`` (``save_to_disk``; its ``train`` split if it holds several): its rows;
* any other directory: every file above inside it, in sorted path order.

A text row has a string ``text`` field. Rows are streamed: reading stops once the run has what it uses
(``max_chars`` characters of text), so a large dataset costs what the run uses. A bad file is a one-line
:class:`~harness.errors.BenchError` naming the file and line (or row).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import BenchError, read_text

_FIX = "give text files, JSONL with a string 'text' field, parquet with a 'text' column, or a datasets folder"


def load_documents(path: str | Path, max_chars: int) -> list[str]:
    """Documents from ``path`` until ``max_chars`` characters are collected (the last one cut to fit)."""
    out: list[str] = []
    total = 0
    for doc in iter_documents(path):
        if not doc.strip():
            continue
        if total + len(doc) > max_chars:
            doc = doc[: max_chars - total]
        out.append(doc)
        total += len(doc)
        if total >= max_chars:
            break
    if not out:
        raise BenchError(f"no text found in {path}", _FIX)
    return out


def iter_documents(path: str | Path) -> Iterator[str]:
    """The ``text`` of every row of ``path``."""
    for where, row in iter_records(path):
        text = row.get("text")
        if not isinstance(text, str):
            raise BenchError(f"{where} has no string 'text' field (fields: {', '.join(map(str, row)) or 'none'})", _FIX)
        yield text


def iter_records(path: str | Path, fix: str = _FIX) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of ``path`` (see the module docstring), ``where`` naming its file and line
    (``data.jsonl:3``) or row (``data.parquet row 3``) for error messages; ``fix`` ends a bad file's error."""
    root = Path(path).expanduser()
    if not root.exists():
        raise BenchError(f"training data {root} does not exist", "check the path given to --set data=")
    if root.is_dir():
        if any((root / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            yield from _hf_dataset(root, fix)
            return
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BenchError(f"training data folder {root} has no files", fix)
        for file in files:
            yield from _file(file, fix)
        return
    yield from _file(root, fix)


def _file(path: Path, fix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path, fix)
    elif path.suffix == ".parquet":
        yield from _parquet(path, fix)
    else:
        yield str(path), {"text": read_text(path, "training data file")}


def _jsonl(path: Path, fix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Streamed, line by line (``read_text`` would read the whole file); a bad byte or line is one error."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchError(f"{path}:{number} is not valid JSON ({e.msg})", fix) from None
                if not isinstance(row, dict):
                    raise BenchError(f"{path}:{number} is not a JSON object", fix)
                yield f"{path}:{number}", row
    except UnicodeDecodeError as e:
        raise BenchError(f"{path} is not UTF-8 (byte {e.start})", "convert it to UTF-8") from None
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}", "check the path and its permissions") from None


def _parquet(path: Path, fix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchError("reading parquet needs pyarrow", "pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise BenchError(f"{path} is not a readable parquet file ({type(e).__name__})", fix) from None
    number = 0
    for batch in table.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", row


def _hf_dataset(path: Path, fix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several kinds for a folder it cannot read
        raise BenchError(f"{path} is not a readable datasets folder ({type(e).__name__}: {e})", fix) from None
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    for number, row in enumerate(data, start=1):
        yield f"{path} row {number}", row

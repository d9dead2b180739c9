"""Your own training text for the text fusers (FuseLLM): ``--set data=PATH``.

PATH is one of

* a text file (``.txt``, ``.md``, ``.py`` ..., any other suffix): one document;
* a JSONL file (``.jsonl``): one JSON object per line with a string ``text`` field;
* a parquet file (``.parquet``): its ``text`` column;
* a directory saved by ``datasets`` (``save_to_disk``; its ``train`` split if it holds several): the ``text``
  column;
* any other directory: every file above inside it, in sorted path order.

Documents are streamed: reading stops once ``max_chars`` characters are collected, so a large dataset costs
what the run uses. A bad file is a one-line :class:`~harness.errors.BenchError` naming the file (and line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from harness.errors import BenchError

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
    root = Path(path).expanduser()
    if not root.exists():
        raise BenchError(f"training data {root} does not exist", "check the path given to --set data=")
    if root.is_dir():
        if any((root / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            yield from _hf_dataset(root)
            return
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BenchError(f"training data folder {root} has no files", _FIX)
        for file in files:
            yield from _file(file)
        return
    yield from _file(root)


def _file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
    elif path.suffix == ".parquet":
        yield from _parquet(path)
    else:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BenchError(f"{path} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from None


def _jsonl(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchError(f"{path}:{number} is not valid JSON ({e.msg})", _FIX) from None
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise BenchError(f"{path}:{number} has no string 'text' field", _FIX)
                yield text
    except UnicodeDecodeError as e:
        raise BenchError(f"{path} is not UTF-8 (byte {e.start})", "convert it to UTF-8") from None


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchError("reading parquet needs pyarrow", "pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise BenchError(f"{path} is not a readable parquet file ({type(e).__name__})", _FIX) from None
    if "text" not in table.schema_arrow.names:
        raise BenchError(f"{path} has no 'text' column (columns: {', '.join(table.schema_arrow.names)})", _FIX)
    for batch in table.iter_batches(columns=["text"], batch_size=256):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


def _hf_dataset(path: Path) -> Iterator[str]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several kinds for a folder it cannot read
        raise BenchError(f"{path} is not a readable datasets folder ({type(e).__name__}: {e})", _FIX) from None
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    if "text" not in data.column_names:
        raise BenchError(f"{path} has no 'text' column (columns: {', '.join(data.column_names)})", _FIX)
    for row in data.select_columns(["text"]):
        if isinstance(row["text"], str):
            yield row["text"]

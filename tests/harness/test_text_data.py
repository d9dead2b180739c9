"""Own training text (--set data=PATH): every format, streaming, one-line errors, and FuseLLM on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import BenchError
from harness.text_data import load_documents

DOCS = ["alpha beta gamma " * 5, "delta epsilon " * 7, "zeta eta theta " * 4]


def _write_all_formats(root: Path) -> dict[str, Path]:
    import datasets
    import pandas as pd

    paths = {}
    paths["txt"] = root / "one.txt"
    paths["txt"].write_text(DOCS[0])
    paths["jsonl"] = root / "docs.jsonl"
    paths["jsonl"].write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    paths["parquet"] = root / "docs.parquet"
    pd.DataFrame({"text": DOCS, "n": [1, 2, 3]}).to_parquet(paths["parquet"])
    paths["hf"] = root / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(paths["hf"]))
    folder = root / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text(DOCS[0])
    (folder / "b.jsonl").write_text(json.dumps({"text": DOCS[1]}) + "\n")
    paths["folder"] = folder
    return paths


def test_every_format_gives_its_documents(tmp_path: Path) -> None:
    paths = _write_all_formats(tmp_path)
    assert load_documents(paths["txt"], 10_000) == [DOCS[0]]
    for kind in ("jsonl", "parquet", "hf"):
        assert load_documents(paths[kind], 10_000) == DOCS, kind
    assert load_documents(paths["folder"], 10_000) == DOCS[:2]


def test_reading_stops_at_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "x" * 100}) + "\n" + json.dumps({"text": "y" * 100}) + "\nnot json\n")
    docs = load_documents(path, 150)  # the broken third line is never read
    assert docs == ["x" * 100, "y" * 50]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "ok"}\n{"text": 3}\n', r"bad.jsonl:2 has no string 'text' field"),
    ('{"text": "ok"}\n{oops\n', r"bad.jsonl:2 is not valid JSON"),
    (b"\xff\xfe text", "is not UTF-8"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BenchError, match=message) as err:
        load_documents(path, 10_000)
    assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="does not exist"):
        load_documents(tmp_path / "missing", 10)


def test_fusellm_trains_on_your_text(private_home: Path, tmp_path: Path, capsys) -> None:
    import sqlite_utils

    from tests.conftest import bench

    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n" * 8}) + "\n" for i in range(40)))
    sets = ["--set", "fuser.steps=2", "--set", "fuser.batch_size=2", "--set", "fuser.seq_len=48",
            "--set", "fuser.corpus_chars=3000", "--set", "fuser.warmup_steps=1", "--set", "fuser.top_k=4"]
    args = ["--sources", "zoo:llama-code,zoo:llama-docs", "--target", "zoo:llama-base", "--suite", "perplexity",
            "--set", "perplexity.max_docs=1", "--set", "perplexity.max_chars_per_doc=200"]
    db = tmp_path / "b.db"
    assert bench("run", "--fuser", "fusellm", *args, *sets, "--set", f"data={data}", "--db", str(db)) == 0, \
        capsys.readouterr().err[-2000:]
    details = json.loads(next(sqlite_utils.Database(db).query(
        "select m.details from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'"))["details"])
    assert details["corpus"]["documents"] >= 1
    # editing the file in place is a new fusion, not a cache hit
    data.write_text(json.dumps({"text": "completely different text\n" * 30}) + "\n")
    assert bench("run", "--fuser", "fusellm", *args, *sets, "--set", f"data={data}", "--db", str(db)) == 0
    fused = list(sqlite_utils.Database(db).query("select distinct m.id from run_models rm join models m "
                                                 "on m.id = rm.model_id where rm.role = 'fused'"))
    assert len(fused) == 2
    assert bench("run", "--fuser", "fusellm", *args, *sets, "--set", f"data={tmp_path / 'nope.jsonl'}",
                 "--db", str(db)) == 2

"""harness.atomic: a final path holds either nothing, the old content or the whole new content; never scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.atomic import atomic_dir, atomic_file


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "deep" / "member"
    with atomic_dir(final) as scratch:
        assert scratch.parent == final.parent and scratch.name.startswith(".tmp-member-") and not final.exists()
        (scratch / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with atomic_dir(final) as scratch:
        (scratch / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in final.parent.iterdir()] == ["member"]


def test_a_failed_folder_leaves_the_old_one_and_no_scratch(tmp_path: Path) -> None:
    final = tmp_path / "member"
    with atomic_dir(final) as scratch:
        (scratch / "a.txt").write_text("one")
    with pytest.raises(KeyboardInterrupt), atomic_dir(final) as scratch:
        (scratch / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["member"] and (final / "a.txt").read_text() == "one"


def test_a_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "cache" / "entry.json"
    with atomic_file(final) as partial:
        partial.write_text("{}")
        assert partial.name == final.name and partial.parent.parent == final.parent and not final.exists()
    assert final.read_text() == "{}"
    with pytest.raises(ValueError), atomic_file(final) as partial:
        partial.write_text('{"half"')
        raise ValueError("stopped")
    assert final.read_text() == "{}" and [p.name for p in final.parent.iterdir()] == ["entry.json"]


def test_keep_existing_leaves_a_folder_another_writer_finished_first(tmp_path: Path) -> None:
    final = tmp_path / "shard-00000"
    with atomic_dir(final, keep_existing=True) as scratch:
        (scratch / "mine.npy").write_text("mine")
        (final / "theirs.npy").parent.mkdir()
        (final / "theirs.npy").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs.npy"] and [p.name for p in tmp_path.iterdir()] == [final.name]
    with atomic_dir(tmp_path / "shard-00001", keep_existing=True) as scratch:
        (scratch / "mine.npy").write_text("mine")
    assert (tmp_path / "shard-00001" / "mine.npy").read_text() == "mine"

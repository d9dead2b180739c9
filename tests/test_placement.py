"""--dtype / --device / --batch-size: how models are loaded, what keys and records carry, what regress compares."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils

from harness.errors import BenchError
from harness.model import Placement, current_placement, placement
from tests.conftest import bench

PPL = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=200"]


def test_placement_resolution_and_validation() -> None:
    assert current_placement() == Placement("auto", "auto")
    cpu = Placement("auto", "cpu")
    assert (cpu.load_dtype(), cpu.kind, cpu.key) == ("float32", "cpu", "float32@cpu")
    assert Placement("bfloat16", "cpu").key == "bfloat16@cpu"
    with placement("float16", "cpu") as p:
        assert current_placement() is p
    assert current_placement() == Placement()
    for bad in ({"dtype": "fp8"}, {"device": "tpu"}, {"device": "cuda:x"}):
        with pytest.raises(BenchError):
            Placement(**bad)


def test_dtype_is_used_recorded_and_keyed(zoo_home: Path, tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(db), "--name", "fp32") == 0
    assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(db), "--name", "bf16",
                 "--dtype", "bfloat16", "--batch-size", "auto") == 0
    rows = list(sqlite_utils.Database(db).query(
        "select r.name, s.dtype, s.backend, s.eval_key, s.value from scores s join runs r on r.id = s.run_id "
        "where s.metric = 'bits_per_byte' and s.task = 'avg' order by r.started_at"))
    assert [(r["name"], r["dtype"], r["backend"]) for r in rows] == [("fp32", "float32", "hf-cpu"),
                                                                   ("bf16", "bfloat16", "hf-cpu")]
    assert rows[0]["eval_key"] != rows[1]["eval_key"]  # never one cache entry for both
    assert rows[0]["value"] != rows[1]["value"]  # bf16 really ran
    # bench regress never compares scores computed in different precisions
    assert bench("regress", "--baseline", "fp32", "--candidate", "bf16", "--db", str(db)) == 2


def test_bad_placement_flags_are_one_line_errors(zoo_home: Path, tmp_path: Path, capsys) -> None:
    import torch

    cases = [(["--dtype", "fp8"], "dtype"), (["--batch-size", "0"], "--batch-size"), (["--device", "tpu"], "device")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for flags, message in cases:
        capsys.readouterr()
        assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(tmp_path / "b.db"), *flags) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and message in err[-1], (flags, err[-1])


def test_a_bare_set_key_that_is_both_a_run_field_and_a_fuser_field_is_refused(zoo_home: Path, tmp_path: Path,
                                                                               capsys) -> None:
    code = bench("run", "--fuser", "fusellm", "--set", "batch_size=2", "--db", str(tmp_path / "b.db"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "ambiguous" in err and "fuser.batch_size" in err and "--batch-size" in err


def test_two_local_checkpoints_with_one_folder_name_get_distinct_names(zoo_home: Path, tmp_path: Path) -> None:
    import shutil

    from harness import zoo

    for parent, member in (("run-a", "llama-code"), ("run-b", "llama-docs")):
        shutil.copytree(zoo.resolve(member), tmp_path / parent / "hf")
    db = tmp_path / "b.db"
    assert bench("eval", "--model", str(tmp_path / "run-a" / "hf"), "--model", str(tmp_path / "run-b" / "hf"),
                 *PPL, "--db", str(db)) == 0
    names = sorted(r["name"] for r in sqlite_utils.Database(db).query("select name from models"))
    assert names == ["run-a/hf", "run-b/hf"]


def test_runtime_fusers_refuse_members_that_cannot_fit(private_home: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from harness import model, zoo
    from harness.model import ModelRef

    path = zoo.resolve("llama-code")
    card = json.loads((path / "zoo.json").read_text())
    assert model.parameter_count(ModelRef("zoo:llama-code", "zoo", path)) == card["params"]
    monkeypatch.setattr(model, "available_memory", lambda where: 1 << 10)  # 1 KiB free (the micro members need ~0.6 MB)
    for fuser in ("cool-fusion", "ensemble"):
        capsys.readouterr()
        code = bench("run", "--fuser", fuser, "--sources", "zoo:llama-code,zoo:llama-docs", *PPL,
                     "--db", str(tmp_path / "b.db"))
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "members on cpu need about" in err and "--dtype bfloat16" in err, err


# --- per-model precision and device from the YAML ---------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_yaml_model_entries_carry_their_own_dtype(tmp_path: Path) -> None:
    from harness.config import build_run_config

    cfg = build_run_config(config_file=_write(tmp_path / "r.yaml", """
fuser: ensemble
sources:
  - zoo:llama-code
  - {path: zoo:llama-docs, dtype: bfloat16, device: cpu}
target: {path: zoo:llama-base, dtype: float16}
"""))
    assert cfg.sources == ["zoo:llama-code", "zoo:llama-docs"] and cfg.target == "zoo:llama-base"
    assert {k: v.model_dump() for k, v in cfg.models.items()} == {
        "zoo:llama-docs": {"dtype": "bfloat16", "device": "cpu", "backend": None, "base_url": None, "tokenizer": None},
        "zoo:llama-base": {"dtype": "float16", "device": None, "backend": None, "base_url": None, "tokenizer": None}}
    plain = build_run_config(fuser="ensemble", sources=["zoo:llama-code", "zoo:llama-docs"])
    assert "models" not in plain.canonical_json()  # runs without per-model entries keep their hashes
    assert "models" in cfg.canonical_json()


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("fuser: ensemble\nsources: [{dtype: bfloat16}]\n", "has no 'path'"),
    ("fuser: ensemble\nsources: [{path: zoo:llama-code, dtype: fp8}]\n", "models.zoo:llama-code.dtype"),
    ("fuser: ensemble\nsources: [{path: zoo:llama-code, precision: bf16}]\n", "precision"),
    ("fuser: ensemble\nsources: [zoo:llama-code]\nmodels: {zoo:llama-dcos: {dtype: bfloat16}}\n",
     "'zoo:llama-dcos' is neither a source nor the target"),
])
def test_bad_model_entries_are_one_line_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    from harness.config import build_run_config

    with pytest.raises(BenchError) as err:
        build_run_config(config_file=_write(tmp_path / "r.yaml", yaml_text))
    assert message in str(err.value), str(err.value)


def test_each_model_runs_and_is_recorded_in_its_own_dtype(zoo_home: Path, tmp_path: Path) -> None:
    """An ensemble whose second member is bf16: that member's own scores say bfloat16, the other's float32, and
    the ensemble's key differs from the all-float32 ensemble's (its member ran in another precision)."""
    db = tmp_path / "b.db"
    config = _write(tmp_path / "r.yaml", """
fuser: ensemble
sources:
  - zoo:llama-code
  - {path: zoo:llama-docs, dtype: bfloat16}
""")
    assert bench("run", "--config", config, *PPL, "--db", str(db), "--name", "mixed") == 0
    assert bench("run", "--fuser", "ensemble", "--sources", "zoo:llama-code,zoo:llama-docs", *PPL, "--db", str(db),
                 "--name", "fp32") == 0
    rows = list(sqlite_utils.Database(db).query(
        "select r.name as run, m.name as model, s.dtype, s.eval_key, s.value from scores s join runs r on r.id = s.run_id "
        "join models m on m.id = s.model_id where s.metric = 'bits_per_byte' and s.task = 'avg'"))
    got = {(r["run"], r["model"] if r["model"].startswith("zoo:") else "ensemble"): r for r in rows}
    assert got[("mixed", "zoo:llama-docs")]["dtype"] == "bfloat16"
    assert got[("mixed", "zoo:llama-code")]["dtype"] == "float32"
    assert got[("fp32", "zoo:llama-docs")]["dtype"] == "float32"
    assert got[("mixed", "zoo:llama-docs")]["value"] != got[("fp32", "zoo:llama-docs")]["value"]
    assert got[("mixed", "zoo:llama-code")]["eval_key"] == got[("fp32", "zoo:llama-code")]["eval_key"]  # reused
    assert got[("mixed", "ensemble")]["eval_key"] != got[("fp32", "ensemble")]["eval_key"]

"""--control: the data-only control of each training fuser (same target, data, steps and seed; λ = 1), evaluated
beside the fused model with role ``control``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]
TINY = {
    "fusellm": {"steps": 3, "batch_size": 2, "seq_len": 48, "corpus_chars": 4_000, "top_k": 4, "warmup_steps": 1},
    "fusechat": {"steps": 3, "batch_size": 2, "seq_len": 96, "conversations": 24, "top_k": 4, "warmup_steps": 1},
    "profuser": {"inference_prompts": 12, "training_conversations": 24, "inference_steps": 2, "training_steps": 2,
                 "batch_size": 2, "seq_len": 96, "top_k": 4, "warmup_steps": 1, "max_new_tokens": 12},
}


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def _members(db: Path) -> dict[str, dict]:
    rows = sqlite_utils.Database(db).query("select rm.role, m.name, m.details from run_models rm "
                                           "join models m on m.id = rm.model_id order by rm.position")
    return {r["role"]: {"name": r["name"], "details": json.loads(r["details"] or "{}")} for r in rows}


@pytest.mark.parametrize("fuser", ["fusellm", "fusechat", "profuser"])
def test_control_trains_the_same_target_without_the_fusion_term(private_home: Path, tmp_path: Path, fuser: str,
                                                                reward_model: Path, capsys) -> None:
    db = tmp_path / "b.db"
    sets = [x for key, value in TINY[fuser].items() for x in ("--set", f"fuser.{key}={value}")]
    extra = ["--sources", "zoo:gpt2-code,zoo:neox-docs,zoo:mpt-math"]
    if fuser == "profuser":  # a random reward model tells the answers apart: inference mode has data
        extra += ["--set", f'rewards=["reward_model:{reward_model}"]']
    code = bench("run", "--fuser", fuser, *extra, *sets, "--control", *SUITE, "--db", str(db))
    assert code == 0, capsys.readouterr().err[-2000:]
    members = _members(db)
    fused, control = members["fused"], members["control"]
    assert control["name"] == f"{fused['name']} control"
    if fuser == "fusechat":  # one pairwise target trained (they would all be the same model), no merge
        assert control["details"]["merge"]["method"] == "none" and len(control["details"]["stages"]) == 1
        (control_curves,) = (s["loss_curves"] for s in control["details"]["stages"].values())
        fused_curves = next(iter(fused["details"]["stages"].values()))["loss_curves"]
    else:
        control_curves, fused_curves = control["details"]["loss_curves"], fused["details"]["loss_curves"]
    assert control_curves["total"] == control_curves["clm"] != fused_curves["total"]  # λ = 1: no fusion term
    assert len(control_curves["total"]) == len(fused_curves["total"])  # the same number of steps
    curves = control_curves
    if fuser == "profuser":
        assert set(curves["inference_mode"]) == {0.0}  # ground truth only
    scored = {r["role"] for r in sqlite_utils.Database(db).query(
        "select rm.role from scores s join run_models rm on rm.model_id = s.model_id and rm.run_id = s.run_id")}
    assert {"fused", "control"} <= scored


def test_control_is_refused_for_fusers_without_a_fusion_term(zoo_home: Path, tmp_path: Path, capsys) -> None:
    code = bench("run", "--fuser", "merge", "--control", *SUITE, "--db", str(tmp_path / "b.db"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no data-only control" in err and "drop --control" in err

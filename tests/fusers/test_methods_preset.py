"""`make methods`: the fusion families side by side, one budget, the same sources, target, seeds and suites.

The preset is the files of ``configs/methods/`` run in turn (``Makefile``'s ``methods`` target). These tests check
that the files keep the comparison fair (what the README's table claims), and run the whole preset, every file
through `bench run --config`, then the comparisons the Makefile prints, on the micro zoo at small budgets.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.config import build_run_config
from tests.conftest import bench

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "methods").glob("*.yaml"))
#: Each fuser's optimizer steps per trained model, as its config names them.
STEP_FIELDS = {"fusellm": ("steps",), "fusechat": ("steps",), "fusechat3": ("sft_steps", "dpo_steps")}
#: Small budgets per fuser for the micro zoo (each fuser's own test settings, smaller still).
MICRO = {"fusellm": {"steps": 2, "batch_size": 2, "seq_len": 48, "corpus_chars": 3_000, "top_k": 4, "warmup_steps": 1},
         "fusechat": {"steps": 2, "batch_size": 2, "seq_len": 96, "conversations": 16, "top_k": 4, "warmup_steps": 1},
         "fusechat3": {"prompts": 8, "samples_per_prompt": 3, "max_new_tokens": 8, "sft_steps": 1, "dpo_steps": 2,
                       "batch_size": 2, "seq_len": 96, "warmup_steps": 1, "margin_min": 0.0001, "sft_fraction": 0.5}}
SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def test_every_method_has_one_budget_and_the_same_sources_target_seeds_and_suites() -> None:
    specs = {path.stem: build_run_config(config_file=str(path)) for path in CONFIGS}
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^METHODS := (.+)$", makefile, re.MULTILINE)
    assert listed and sorted(listed.group(1).split()) == sorted(specs), "the Makefile runs every file, and only those"
    assert {s.fuser for s in specs.values()} == set(STEP_FIELDS)

    def shared(spec):
        return spec.sources, spec.target, spec.seeds, spec.suites, spec.control

    assert len({repr(shared(s)) for s in specs.values()}) == 1
    assert specs["fusellm"].seeds == [0, 1, 2] and specs["fusellm"].control
    budgets = {stem: (sum(getattr(s.fuser_config, f) for f in STEP_FIELDS[s.fuser]), s.fuser_config.batch_size,
                      s.fuser_config.seq_len) for stem, s in specs.items()}
    assert set(budgets.values()) == {(150, 8, 256)}, budgets
    assert {stem: s.name for stem, s in specs.items()} == {stem: f"methods-{stem}" for stem in specs}
    losses = {stem: s.fuser_config.distill_loss for stem, s in specs.items() if s.fuser == "fusellm"}
    assert losses == {"fusellm": "soft_ce", "uld": "uld", "dskd": "dskd"}
    preferences = {stem: s.fuser_config.preference for stem, s in specs.items() if s.fuser == "fusechat3"}
    assert preferences == {"fusechat3": "dpo", "fusechat3-wrpo": "wrpo"}


def test_the_preset_runs_on_the_micro_zoo_and_compares_each_method_with_its_control(private_home: Path, tmp_path: Path,
                                                                                      reward_model: Path, capsys) -> None:
    """Every file of the preset with two seeds and its control at micro budgets, then the Makefile's comparisons:
    each method against its control over the seeds, and FuseLLM against each other method. FuseChat-3.0's answers
    are scored by a tiny random reward model (the micro models cannot do arithmetic, so math_steps would tie)."""
    db = str(tmp_path / "methods.db")
    for path in CONFIGS:
        fuser = build_run_config(config_file=str(path)).fuser
        sets = [x for key, value in MICRO[fuser].items() for x in ("--set", f"fuser.{key}={value}")]
        if fuser == "fusechat3":
            sets += ["--set", f'fuser.rewards=["reward_model:{reward_model}"]']
        code = bench("run", "--config", str(path), "--seeds", "0,1", *sets, *SUITE, "--db", db)
        assert code == 0, (path.stem, capsys.readouterr().err[-3000:])
    capsys.readouterr()
    assert bench("leaderboard", "--suite", "perplexity", "--db", db) == 0
    board = capsys.readouterr().out
    for path in CONFIGS:
        assert f"methods-{path.stem} (2 seeds)" in board
    for path in CONFIGS:
        assert bench("compare", f"control@methods-{path.stem}", f"fused@methods-{path.stem}", "--suite", "perplexity",
                     "--db", db) == 0, path.stem
        out = capsys.readouterr().out
        assert "avg" in out and "2 seeds: each row is the mean over seeds" in out, out
    assert bench("compare", "fused@methods-fusellm", "fused@methods-fusechat3", "--suite", "perplexity",
                 "--db", db) == 0
    # FuseLLM, ULD and DSKD share one control: plain continued training of one budget and seed is one model
    import sqlite_utils

    paths = {r["name"]: r["path"] for r in sqlite_utils.Database(db).query(
        "select r.name, m.path from runs r join run_models rm on rm.run_id = r.id join models m on m.id = rm.model_id "
        "where rm.role = 'control' and r.name like 'methods-%@seed0'")}
    assert paths["methods-fusellm@seed0"] == paths["methods-uld@seed0"] == paths["methods-dskd@seed0"]
    assert paths["methods-fusechat3@seed0"] == paths["methods-fusechat3-wrpo@seed0"]  # SFT only, for DPO and WRPO
    assert len(set(paths.values())) == 3  # and FuseChat's control is its own

"""`bench regress` with torch-free fake plugins, and the comparison rule on hand-made scores.

The fake fuser averages its sources' qualities (0.2 and 0.8) plus ``bonus``; FakeSuite reports
``acc`` = quality (stderr 0.01) and ``loss`` = 1 - quality (lower is better, no stderr). So a bonus of
-0.25 is a known regression of both metrics of the fused model, and nothing else changes. (Not -0.3:
a fused quality of 0.2 would be byte-identical to source a, and the runner evaluates one model once.)
"""

from __future__ import annotations

import json

import pytest

from harness.regress import ScoreRow, compare, why_not_comparable
from tests.conftest import bench


@pytest.fixture
def fake_run(fake_plugins_registered):
    """`bench run` of the fake fuser on the two fake sources; returns (env, run) where run(...) -> run id."""
    import sqlite_utils

    env = fake_plugins_registered

    def run(*extra: str, name: str = "nightly") -> str:
        code = bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                     "--db", env["db"], "--name", name, *extra)
        assert code == 0
        db = sqlite_utils.Database(env["db"])
        return next(db.query("select id from runs order by rowid desc limit 1"))["id"]

    return env, run


def test_same_config_twice_is_unchanged(fake_run, capsys):
    env, run = fake_run
    first, second = run(), run()
    capsys.readouterr()
    assert bench("regress", "--baseline", first, "--candidate", second, "--db", env["db"]) == 0
    out = capsys.readouterr().out
    assert "0 regression(s), 0 improvement(s), 6 unchanged, 0 not comparable" in out
    assert "REGRESSION" not in out


def test_degraded_fuser_exits_1_and_names_the_metrics(fake_run, capsys):
    env, run = fake_run
    good = run()
    run("--set", "bonus=-0.25")  # the newest run named "nightly": fused quality 0.5 -> 0.25
    capsys.readouterr()
    assert bench("regress", "--baseline", good, "--candidate", "nightly", "--db", env["db"]) == 1
    out = capsys.readouterr().out
    assert "2 regression(s), 0 improvement(s), 4 unchanged" in out
    summary = out.splitlines()[-1]
    assert summary.startswith("REGRESSION in: ")
    assert "nightly: fused fakesuite/t acc (-0.2500)" in summary and "nightly: fused fakesuite/t loss (-0.2500)" in summary
    assert "source" not in summary  # the sources did not change


def test_improvement_is_reported_but_passes(fake_run, capsys):
    env, run = fake_run
    base = run()
    better = run("--set", "bonus=0.2")
    capsys.readouterr()
    assert bench("regress", "--baseline", base, "--candidate", better, "--db", env["db"]) == 0
    assert "0 regression(s), 2 improvement(s)" in capsys.readouterr().out


def test_baseline_file_round_trip(fake_run, capsys, tmp_path):
    env, run = fake_run
    base = run()
    file = tmp_path / "baselines" / "fake.json"
    assert bench("regress", "--save-baseline", base, str(file), "--db", env["db"]) == 0
    data = json.loads(file.read_text())
    assert data["format"] == "fusebench-baseline/1" and len(data["runs"]) == 1
    fused_acc = next(s for s in data["runs"][0]["scores"] if s["role"] == "fused" and s["metric"] == "acc")
    assert fused_acc["value"] == pytest.approx(0.5) and fused_acc["stderr"] == pytest.approx(0.01)
    assert fused_acc["model"] == "nightly" and fused_acc["suite_version"] == "1" and fused_acc["n"] == 3
    assert fused_acc["eval_config"] == {"suite_args": {}, "limit": None, "seed": 0}
    assert fused_acc["higher_is_better"] is True and len(fused_acc["data_fingerprint"]) == 16

    run()
    assert bench("regress", "--baseline", str(file), "--candidate", "nightly", "--db", env["db"]) == 0
    run("--set", "bonus=-0.25")
    assert bench("regress", "--baseline", str(file), "--candidate", "nightly", "--db", env["db"]) == 1


def test_runs_pair_by_name_when_a_side_has_several(fake_run, capsys, tmp_path):
    env, run = fake_run
    run(name="alpha")
    run("--set", "bonus=0.1", name="beta")
    file = tmp_path / "two.json"
    assert bench("regress", "--save-baseline", "alpha,beta", str(file), "--db", env["db"]) == 0
    run("--set", "bonus=-0.25", name="alpha")  # alpha regresses ...
    run("--set", "bonus=0.1", name="beta")  # ... beta does not
    capsys.readouterr()
    assert bench("regress", "--baseline", str(file), "--candidate", "beta", "--candidate", "alpha",
                 "--db", env["db"]) == 1
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "alpha: fused" in summary and "beta" not in summary
    # a baseline run without a candidate of its name is named, not silently dropped
    assert bench("regress", "--baseline", str(file), "--candidate", "beta", "--candidate", "beta",
                 "--db", env["db"]) == 0
    assert "baseline run 'alpha' has no candidate run of that name" in capsys.readouterr().out


def test_different_limit_or_suite_args_are_not_comparable(fake_run, capsys):
    env, run = fake_run
    base = run()
    limited = run("--limit", "2")
    capsys.readouterr()
    assert bench("regress", "--baseline", base, "--candidate", limited, "--db", env["db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing comparable") and "limit None vs 2" in err and len(err.splitlines()) == 1
    fewer = run("--set", "fakesuite.items=2")
    assert bench("regress", "--baseline", base, "--candidate", fewer, "--db", env["db"]) == 2
    assert "suite arguments differ: items=(default) vs 2" in capsys.readouterr().err


def test_changed_examples_or_suite_version_are_reported_not_compared(fake_run, capsys, tmp_path):
    """A baseline whose data fingerprint (one model) and suite version (another) differ: those scores are
    listed as not comparable with the reason; the rest is still compared."""
    env, run = fake_run
    base = run()
    file = tmp_path / "b.json"
    assert bench("regress", "--save-baseline", base, str(file), "--db", env["db"]) == 0
    data = json.loads(file.read_text())
    for s in data["runs"][0]["scores"]:
        if s["role"] == "fused":
            s["data_fingerprint"] = "0" * 16
        elif s["model"].endswith("src_a"):
            s["suite_version"] = "0"
    file.write_text(json.dumps(data))
    run("--set", "bonus=-0.25")  # would be a regression of the fused model, if it were comparable
    capsys.readouterr()
    assert bench("regress", "--baseline", str(file), "--candidate", "nightly", "--db", env["db"]) == 0
    out = capsys.readouterr().out
    assert "fused fakesuite: 2 score(s): evaluated on different examples (data fingerprint 0000000000000000 vs" in out
    assert "fakesuite: 2 score(s): suite version 0 vs 1" in out
    assert "0 regression(s), 0 improvement(s), 2 unchanged, 4 not comparable" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "no-such-run", "--candidate", "nightly"], "unknown run 'no-such-run'"),
        (["--baseline", "missing.json", "--candidate", "nightly"], "baseline file missing.json not found"),
        (["--baseline", "nightly"], "needs --baseline REF and --candidate REF"),
        (["--baseline", "nightly", "--candidate", "nightly", "--sigmas", "-1"], "must be >= 0"),
        (["--baseline", "nightly", "--candidate", "nightly", "--suite", "other"], "nothing comparable"),
        (["--save-baseline", "nightly", "out.txt"], "must end in .json"),
    ],
)
def test_bad_input_exits_2_with_one_line(fake_run, capsys, monkeypatch, args, message):
    env, run = fake_run
    run()
    monkeypatch.chdir(env["tmp"])
    capsys.readouterr()
    assert bench("regress", *args, "--db", env["db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_a_json_file_that_is_not_a_baseline(fake_run, capsys, tmp_path):
    env, run = fake_run
    run()
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": []}))
    assert bench("regress", "--baseline", str(bad), "--candidate", "nightly", "--db", env["db"]) == 2
    assert "is not a FuseBench baseline file" in capsys.readouterr().err


def test_run_name_means_the_newest_ok_run(fake_run, capsys):
    env, run = fake_run
    ok = run()
    with pytest.raises(RuntimeError, match="fuser exploded"):
        bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
              "--db", env["db"], "--name", "nightly", "--set", "fail=true")
    capsys.readouterr()
    assert bench("regress", "--baseline", ok, "--candidate", "nightly", "--db", env["db"]) == 0
    assert f"nightly ({ok}" in capsys.readouterr().out  # the failed newer run is not used
    import sqlite_utils

    failed = next(sqlite_utils.Database(env["db"]).query("select id from runs where status = 'error'"))["id"]
    assert bench("regress", "--baseline", ok, "--candidate", failed, "--db", env["db"]) == 2
    assert "has status error" in capsys.readouterr().err


# --- the decision rule on hand-made scores ------------------------------------------------------


def row(value: float, stderr: float | None = 0.01, *, metric: str = "acc", hib: bool = True, suite: str = "s",
        n: int = 100, version: str = "1", args: dict | None = None, data: str | None = "d1") -> ScoreRow:
    return ScoreRow(run="r", role="fused", model="m", suite=suite, suite_version=version, task="t", metric=metric,
                    value=value, stderr=stderr, n=n, higher_is_better=hib,
                    eval_config={"suite_args": args or {}, "limit": None, "seed": 0}, data_fingerprint=data)


def status(base: list[ScoreRow], cand: list[ScoreRow], **kw) -> dict[str, str]:
    from harness.regress import RunScores

    report = compare([RunScores("r", {}, base)], [RunScores("r", {}, cand)], **kw)
    return {c.key[3]: c.status for c in report.comparisons}


@pytest.mark.parametrize(
    ("drop", "sigmas", "tolerance", "expected"),
    [
        (0.025, 2.0, 0.001, "unchanged"),    # 0.025 < 2 * sqrt(2) * 0.01 = 0.0283: within noise
        (0.030, 2.0, 0.001, "regression"),   # beyond noise and tolerance
        (0.025, 1.0, 0.001, "regression"),   # 0.025 > 1 * 0.0141
        (0.025, 1.0, 0.030, "unchanged"),    # beyond noise but within the absolute tolerance
        (-0.030, 2.0, 0.001, "improvement"),
    ],
)
def test_drop_must_exceed_both_noise_and_tolerance(drop, sigmas, tolerance, expected):
    assert status([row(0.5)], [row(0.5 - drop)], sigmas=sigmas, tolerance=tolerance) == {"acc": expected}


def test_lower_is_better_metrics_regress_upwards():
    assert status([row(1.0, metric="bpb", hib=False)], [row(1.1, metric="bpb", hib=False)]) == {"bpb": "regression"}
    assert status([row(1.0, metric="bpb", hib=False)], [row(0.9, metric="bpb", hib=False)]) == {"bpb": "improvement"}


def test_without_stderr_only_the_tolerance_protects():
    assert status([row(0.5, None)], [row(0.4995, None)]) == {"acc": "unchanged"}  # 5e-4 < 1e-3
    assert status([row(0.5, None)], [row(0.498, None)]) == {"acc": "regression"}


def test_mtbench_judge_spread_widens_the_noise():
    """score 7.0 -> 6.5 with stderr 0.1 (n=4) is a regression on its own; a judge that scatters by 1.0 per
    answer adds 1/4 to each side's variance, and the same drop is then within noise."""
    base = [row(7.0, 0.1, metric="score", suite="mtbench", n=4)]
    cand = [row(6.5, 0.1, metric="score", suite="mtbench", n=4)]
    assert status(base, cand)["score"] == "regression"
    judge = lambda: row(1.0, None, metric="judge_std", hib=False, suite="mtbench", n=4)  # noqa: E731
    assert status(base + [judge()], cand + [judge()])["score"] == "unchanged"


def test_why_not_comparable_names_the_difference():
    assert why_not_comparable(row(1), row(1)) == ""
    assert why_not_comparable(row(1), row(1, version="2")) == "suite version 1 vs 2"
    assert why_not_comparable(row(1, args={"mode": "cot"}), row(1, args={"mode": "direct"})) == \
        "suite arguments differ: mode='cot' vs 'direct'"
    assert why_not_comparable(row(1, data="aaa"), row(1, data="bbb")).startswith("evaluated on different examples")
    assert why_not_comparable(row(1, data=None), row(1, data="bbb")) == ""  # no samples stored: args decide


def test_a_source_identical_to_an_earlier_fused_model_keeps_its_source_name(fake_run, capsys):
    """bonus=-0.3 makes the fused model byte-identical to source a, so the models table first knows that
    content as the fused model "degenerate". In a later run it is a source again and must be called src_a."""
    from harness.store import Store

    env, run = fake_run
    run("--set", "bonus=-0.3", name="degenerate")
    later = run(name="nightly")
    store = Store(env["db"])
    names = [m["model"] for m in store.run_members(later)]
    assert sorted(names) == ["nightly", "src_a", "src_b"]
    stored = {r["name"] for r in store.db["models"].rows}
    assert "src_a" not in stored  # the table itself still has the first name: the run's member has its own


def test_runs_on_different_embedded_corpora_are_not_comparable():
    """Same names, other zoo models and held-out text: every score is refused, with the reason."""
    from harness.regress import RunScores

    old = {"versions": {"fusebench-corpus": "sympy==1.14.0/v2/aaaa"}}
    new = {"versions": {"fusebench-corpus": "sympy==1.14.0/v3/bbbb"}}
    report = compare([RunScores("r", old, [row(0.5)])], [RunScores("r", old, [row(0.4)])])
    assert [c.status for c in report.comparisons] == ["regression"]
    with pytest.raises(Exception, match="embedded corpus sympy==1.14.0/v2/aaaa vs sympy==1.14.0/v3/bbbb"):
        compare([RunScores("r", old, [row(0.5)])], [RunScores("r", new, [row(0.5)])])
    # a baseline from before corpora were recorded is not silently compared either
    with pytest.raises(Exception, match=r"embedded corpus \(not recorded\) vs sympy"):
        compare([RunScores("r", {}, [row(0.5)])], [RunScores("r", new, [row(0.5)])])

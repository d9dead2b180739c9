"""Skill inheritance (`bench skills`, the report's section) on hand-made fusion runs whose verdicts are known.

Each DB is written with the store's own API, as `bench run` writes it: a fusion run with a fused model, its
target and sources in their roles, their scores and per-example samples; no model is trained."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from harness.inheritance import classify, skill_inheritance
from harness.registry import PRIMARY_METRIC
from harness.store import Store
from tests.conftest import bench
from tests.test_report import by_id, parse

CONFIG = {"suite_args": {}, "limit": None, "seed": 0}
RESAMPLES = 1000
N = 40  # items per task: enough for intervals that tell 0% from 100% (and 50% from either)

#: A name with HTML and rich markup in it: both must stay text.
HOSTILE_SOURCE = "math<img src=x onerror=alert(1)>[bold red]x[/]"

#: bbh-mini exact match per item, per task and model; the verdict each task must get.
BBH_MINI = {
    # the code expert solves it, the fused model as well as it does
    "dyck_languages": ({"code": [1] * N, HOSTILE_SOURCE: [0] * N, "pivot": [0] * N, "fused": [1] * N}, "inherited"),
    # the math expert solves every item, the fused model none (as badly as the worst source)
    "object_counting": ({"code": [0] * N, HOSTILE_SOURCE: [1] * N, "pivot": [0] * N, "fused": [0] * N}, "lost"),
    # half for the code expert, none for the others, every item for the fused model
    "boolean_expressions": ({"code": [1, 0] * (N // 2), HOSTILE_SOURCE: [0] * N, "pivot": [0] * N,
                             "fused": [1] * N}, "gained"),
    # every source alike: nothing to inherit, whatever the fused model does
    "navigate": ({"code": [1, 1, 0, 0] * (N // 4), HOSTILE_SOURCE: [1, 1, 0, 0] * (N // 4),
                  "pivot": [1, 1, 0, 0] * (N // 4), "fused": [0] * N}, "no skill"),
    # the code expert solves all, the fused model half, the others none
    "word_sorting": ({"code": [1] * N, HOSTILE_SOURCE: [0] * N, "pivot": [0] * N, "fused": [1, 0] * (N // 2)},
                     "partly"),
}
ROLES = {"fused": "fused", "pivot": "target", "code": "source", HOSTILE_SOURCE: "source"}


def fusion_run(store: Store, name: str, suites: dict[str, dict[str, list[dict[str, Any]]]],
               roles: dict[str, str] = ROLES, kind: str = "run") -> str:
    """One ok run: ``suites[suite][model]`` = the model's samples; each model in its role of ``roles``."""
    run_id = store.start_run(kind=kind, name=name, command="test", provenance={}, config=CONFIG)
    for position, (model, role) in enumerate(roles.items()):
        store.add_model({"id": f"id-{position}-{name}", "name": model, "kind": "fused" if role == "fused" else "source"},
                        run_id, role, position)
        for suite, by_model in suites.items():
            samples = by_model[model]
            metric = PRIMARY_METRIC[suite]
            scores = [{"task": t, "metric": metric, "value": 0.5, "higher_is_better": suite != "perplexity"}
                      for t in sorted({s["task"] for s in samples})]
            store.add_eval(run_id, f"id-{position}-{name}", suite, "3", f"key-{model}-{suite}", scores, samples)
    store.finish_run(run_id, "ok")
    return run_id


def bbh_mini_samples(tasks: dict[str, tuple[dict[str, list[int]], str]]) -> dict[str, list[dict[str, Any]]]:
    models = next(iter(tasks.values()))[0]
    return {model: [{"task": task, "doc_id": i, "prompt": f"{task} item {i}", "target": "yes",
                     "metrics": {"exact_match": float(c)}}
                    for task, (values, _) in tasks.items() for i, c in enumerate(values[model])]
            for model in models}


@pytest.fixture
def skills_db(tmp_path) -> tuple[str, Store, str]:
    path = str(tmp_path / "bench.db")
    store = Store(path)
    run_id = fusion_run(store, "demo-fusechat", {"bbh-mini": bbh_mini_samples(BBH_MINI)})
    return path, store, run_id


def test_the_rule_on_intervals():
    spread = (0.2, 0.6)  # the best source is better than the worst
    assert classify((0.1, 0.3), (0.5, 0.9), spread) == "gained"
    assert classify((-0.1, 0.1), (0.2, 0.6), spread) == "inherited"
    assert classify((-0.6, -0.2), (0.1, 0.3), spread) == "partly"
    assert classify((-0.9, -0.5), (-0.1, 0.1), spread) == "lost"
    assert classify((-0.9, -0.5), (-0.3, -0.1), spread) == "lost"  # worse than the worst source too
    assert classify((0.1, 0.3), (0.5, 0.9), (-0.1, 0.4)) == "no skill"  # decided first
    assert classify((0.0, 0.0), (0.0, 0.0), None) == "no skill"  # a single source
    assert classify((0.0, 0.2), (0.3, 0.5), spread) == "inherited"  # an interval touching 0 includes it


def test_verdicts_of_a_fusion_run(skills_db):
    _, store, run_id = skills_db
    result = skill_inheritance(store, "demo-fusechat", resamples=RESAMPLES)
    assert result.run["id"] == run_id and result.fused.model == "fused"
    assert [s.model for s in result.sources] == ["pivot", "code", HOSTILE_SOURCE]  # the target counts as a source
    rows = {r.task: r for r in result.rows}
    assert set(rows) == set(BBH_MINI)  # tasks only: no macro or weighted aggregate
    assert {t: r.verdict for t, r in rows.items()} == {t: verdict for t, (_, verdict) in BBH_MINI.items()}
    lost = rows["object_counting"]
    assert (lost.best_source, lost.best_score, lost.fused_score) == (HOSTILE_SOURCE, 1.0, 0.0)
    assert lost.versus_best.estimate == -1.0 and lost.versus_best.high < 0 and lost.n == N
    gained = rows["boolean_expressions"]
    assert gained.best_source == "code" and gained.versus_best.estimate == pytest.approx(0.5)
    assert gained.versus_best.low > 0
    partly = rows["word_sorting"]
    assert partly.worst_source == "pivot" and partly.versus_worst.low > 0 and partly.versus_best.high < 0
    inherited = rows["dyck_languages"]
    assert inherited.versus_best.estimate == 0 and inherited.versus_best.low <= 0 <= inherited.versus_best.high
    assert inherited.source_spread is not None and inherited.source_spread.low > 0
    no_skill = rows["navigate"]
    assert no_skill.best_source == "pivot"  # a tie: the first source in the run's order
    assert no_skill.source_spread is not None and no_skill.source_spread.estimate == 0


def test_lower_is_better_perplexity_keeps_its_direction(tmp_path):
    """Bits per byte: the docs expert has the lowest on docs; a fused model with higher bits is worse, not
    better. With the direction ignored, "lost" would read "gained"."""
    store = Store(tmp_path / "bench.db")

    def documents(bits_per_byte: dict[str, float]) -> list[dict[str, Any]]:
        return [{"task": domain, "doc_id": i, "prompt": "", "target": f"{domain} text {i}",
                 "metrics": {"loglikelihood": -value * (100 + i) * math.log(2) * (1 + 0.05 * (i % 3)),
                             "bytes": 100 + i}}
                for domain, value in bits_per_byte.items() for i in range(30)]

    samples = {"docs": documents({"docs": 1.0, "code": 3.0}), "code": documents({"docs": 3.0, "code": 1.0}),
               "fused": documents({"docs": 3.0, "code": 1.0})}
    fusion_run(store, "ppl", {"perplexity": samples}, roles={"fused": "fused", "docs": "source", "code": "source"})
    rows = {r.task: r for r in skill_inheritance(store, "ppl", resamples=RESAMPLES).rows}
    assert rows["docs"].best_source == "docs" and rows["docs"].best_score < rows["docs"].fused_score
    assert rows["docs"].verdict == "lost" and rows["docs"].versus_best.estimate > 0  # fused − best, in bits
    assert rows["code"].best_source == "code" and rows["code"].verdict == "inherited"
    assert not rows["docs"].higher_is_better


def test_humaneval_mini_pairs_problems_over_their_samples(tmp_path, monkeypatch):
    """A suite with per-problem samples and a pass metric, like humaneval (humaneval-mini)."""
    store = Store(tmp_path / "bench.db")

    def problems(passed: list[list[int]]) -> list[dict[str, Any]]:
        return [{"task": "humaneval-mini", "doc_id": p * 1000 + j, "prompt": f"def f{p}():", "target": f"f{p}",
                 "metrics": {"passed": float(x), "sample": j}} for p, runs in enumerate(passed) for j, x in enumerate(runs)]

    samples = {"code": problems([[1, 1]] * 30), "docs": problems([[0, 0]] * 30), "fused": problems([[1, 0]] * 30)}
    fusion_run(store, "he", {"humaneval-mini": samples}, roles={"fused": "fused", "code": "source", "docs": "source"})
    (row,) = skill_inheritance(store, "he", resamples=RESAMPLES).rows
    assert (row.task, row.n, row.best_source, row.fused_score) == ("humaneval-mini", 30, "code", 0.5)
    assert row.verdict == "partly"


def test_unjudged_mtbench_is_left_out_with_a_note(tmp_path):
    store = Store(tmp_path / "bench.db")
    bbh = bbh_mini_samples({"dyck_languages": BBH_MINI["dyck_languages"]})
    unjudged = {m: [{"task": "turn1", "doc_id": q, "prompt": f"q{q}", "target": "", "metrics": {"judge_failures": 0.0}}
                    for q in range(5)] for m in ROLES}
    fusion_run(store, "chat", {"bbh-mini": bbh, "mtbench": unjudged})
    result = skill_inheritance(store, "chat", resamples=RESAMPLES)
    assert [(r.suite, r.verdict) for r in result.rows] == [("bbh-mini", "inherited")]
    assert result.notes == ["mtbench: fused was never judged (left out)"]


def test_report_has_a_skill_inheritance_section(skills_db, tmp_path):
    path, _, run_id = skills_db
    assert bench("report", "--db", path, "--out", str(tmp_path / "r")) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    root = parse(page)
    section = by_id(root, "skills")
    assert next(section.iter("h2")).all_text() == "Skill inheritance"
    table = by_id(section, f"skills-{run_id}")
    rows = [[td.all_text().strip() for td in tr.iter("td")] for tr in next(table.iter("tbody")).iter("tr")]
    assert {r[1]: r[3] for r in rows} == {t: verdict for t, (_, verdict) in BBH_MINI.items()}
    lost = next(r for r in rows if r[1] == "object_counting")
    assert lost[4:10] == [HOSTILE_SOURCE, "1.0000", "0.0000", "-1.0000", "[-1.0000, -1.0000]", str(N)]
    badges = [n for n in table.iter("span") if "verdict" in n.classes()]
    assert {tuple(sorted(b.classes())) for b in badges} >= {("lost", "verdict"), ("no-skill", "verdict")}
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page  # DB text stays text
    assert '<a href="#skills">Skill inheritance</a>' in page


def test_report_without_fusion_runs_has_no_section(tmp_path):
    store = Store(tmp_path / "bench.db")
    fusion_run(store, "ev", {"bbh-mini": bbh_mini_samples(BBH_MINI)},
               roles={"code": "model", HOSTILE_SOURCE: "model"}, kind="eval")
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "r")) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="skills"' not in page and "Skill inheritance" not in page


def test_markdown_report_lists_the_verdicts(skills_db, tmp_path):
    path, _, _ = skills_db
    assert bench("report", "--db", path, "--out", str(tmp_path / "r"), "--format", "markdown") == 0
    text = (tmp_path / "r" / "report.md").read_text()
    section = text.split("## Skill inheritance", 1)[1].split("\n## ", 1)[0]
    lines = {line.split(" | ")[1].replace("\\", ""): line for line in section.splitlines()
             if line.startswith("| bbh-mini")}
    assert {t: line.split(" | ")[3] for t, line in lines.items()} == {t: f"**{v}**" for t, (_, v) in BBH_MINI.items()}
    assert "<img" not in section


def test_skills_command_prints_the_table(skills_db, capsys):
    path, _, run_id = skills_db
    capsys.readouterr()
    assert bench("skills", "demo-fusechat", "--db", path, "--resamples", str(RESAMPLES)) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert {c[1]: c[3] for c in cells} == {t: verdict for t, (_, verdict) in BBH_MINI.items()}
    lost = next(c for c in cells if c[1] == "object_counting")
    assert lost[4:10] == [HOSTILE_SOURCE, "1.0000", "0.0000", "-1.0000", "[-1.0000, -1.0000]", str(N)]
    assert f"Skill inheritance: fused (fused) in run {run_id} 'demo-fusechat'" in out
    assert "no skill = best − worst source includes 0" in out


def test_skills_command_json(skills_db, capsys):
    path, _, _ = skills_db
    capsys.readouterr()
    assert bench("skills", "demo-fusechat", "--db", path, "--format", "json", "--resamples", str(RESAMPLES)) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in result["rows"]}
    assert {t: r["verdict"] for t, r in rows.items()} == {t: v for t, (_, v) in BBH_MINI.items()}
    assert rows["object_counting"]["difference"] == -1.0 and rows["object_counting"]["ci_high"] < 0
    assert result["model"] == "fused" and result["sources"] == ["pivot", "code", HOSTILE_SOURCE]


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "error: unknown run 'nope' in {db} (fix: give a fusion run's id or name from `bench runs`)"),
    (["ev"], "error: run {ev} has no fused model (a `bench eval` run) (fix: give a run made by "
             "`bench run --fuser ...` (see `bench runs`))"),
    (["demo-fusechat", "--model", "ghost"], "error: run {run} has no model 'ghost' (fix: give one of its models: "
                                             "fused, pivot, code, " + HOSTILE_SOURCE + ")"),
    (["demo-fusechat", "--suite", "bbh"], "error: fused (fused) in run {run} 'demo-fusechat' has no samples of suite "
                                          "bbh (fix: give one of its suites: bbh-mini)"),
    (["demo-fusechat", "--format", "csv"], "error: unknown --format 'csv' (fix: use table or json)"),
])
def test_skills_command_refuses_bad_input_in_one_line(skills_db, capsys, args, message):
    path, store, run_id = skills_db
    eval_id = fusion_run(store, "ev", {"bbh-mini": bbh_mini_samples(BBH_MINI)},
                         roles={"code": "model", HOSTILE_SOURCE: "model"}, kind="eval")
    capsys.readouterr()
    assert bench("skills", *args, "--db", path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == message.format(db=path, ev=eval_id, run=run_id) + "\n"


def test_another_member_can_be_judged(skills_db):
    """``--model``: a member other than the fused model (here a source against the other sources)."""
    _, store, _ = skills_db
    result = skill_inheritance(store, "demo-fusechat", model="code", resamples=RESAMPLES)
    assert [s.model for s in result.sources] == ["pivot", HOSTILE_SOURCE]
    assert {r.task: r.verdict for r in result.rows}["object_counting"] == "lost"

"""The report as Markdown: tables only (the plots are in the HTML page), to paste into a PR, an issue or a paper draft.

Every string from the DB goes through :mod:`harness.markdown` (text or code span), so none of it can become markup.
"""

from __future__ import annotations

import json

from harness import markdown as md
from harness.report.data import (
    SKILL_RULE,
    SUITE_NOTES,
    TASK_TITLES,
    Report,
    Score,
    comparison_sentence,
    duration,
    fmt,
    loads,
    signed,
)


def render(report: Report) -> str:
    lb = report.leaderboard
    out = ["# FuseBench report", "",
           f"{len(report.views)} run(s) from {md.code(report.db)}, generated {report.generated}. "
           "Best per column in **bold**; ↑ higher is better, ↓ lower is better; "
           "*gain* = fused model minus the best of its run's target and sources, positive = better.", "",
           "## Leaderboard", ""]
    header = ["group", "model", "role"] + [f"{md.escape(c.label)} {'↑' if c.higher_is_better else '↓'}"
                                           for c in lb.columns]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in lb.rows:
        cells = []
        for c in lb.columns:
            cell = lb.board.cell(r, c)
            text = fmt(cell.value if cell else None)
            cells.append(f"**{text}**" if cell is not None and cell.value == lb.best.get(c.label) else text)
        out.append("| " + " | ".join([md.escape(r.group), md.escape(r.model), md.escape(r.role), *cells]) + " |")
        gains = lb.gains.get(r.key)
        if gains:
            shown = [signed(gains[c.label].value) if c.label in gains else "" for c in lb.columns]
            out.append("| " + " | ".join(["", "*gain over best source*", "", *shown]) + " |")
    if report.comparisons:
        out += ["", "## Fused models, paired per example", "",
                "Gain = the fused model's advantage (positive = better) with its 95% paired-bootstrap interval and "
                "sign-flip p-value (`bench compare`).", ""]
        out += [f"- {md.escape(c.run_label)}: {md.escape(comparison_sentence(c))}" for c in report.comparisons]
    if report.skills:
        out += ["", "## Skill inheritance", "", f"{SKILL_RULE} (`bench skills RUN`).", ""]
        for v, result in report.skills:
            out += [f"### {md.escape(v.label)}: {md.escape(result.fused.model)}", "",
                    "| suite | task | metric | verdict | best source | best | fused | fused − best | 95% CI | n |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for r in result.rows:
                out.append(f"| {md.escape(r.suite)} | {md.escape(r.task)} | {md.escape(r.metric)} "
                           f"{'↑' if r.higher_is_better else '↓'} | **{r.verdict}** | {md.escape(r.best_source)} | "
                           f"{fmt(r.best_score)} | {fmt(r.fused_score)} | {signed(r.versus_best.estimate)} | "
                           f"[{signed(r.versus_best.low)}, {signed(r.versus_best.high)}] | {r.n} |")
            out += [f"- {md.escape(n)}" for n in result.notes]
    for section in report.suites:
        suite, metric = section.suite, section.metric
        out += ["", f"## {md.escape(suite)}: {md.escape(metric)} per {TASK_TITLES.get(suite, 'task')}", "",
                SUITE_NOTES.get(suite, ""), ""]
        out += [line for note in section.caveats for line in (f"**Note:** {md.escape(note)}", "")]
        out += ["| model | role | " + " | ".join(md.escape(t) for t in section.tasks) + " |",
                "|" + "---|" * (len(section.tasks) + 2)]
        for e in section.entries:
            values = [_with_stderr(section.score(e, t)) for t in section.tasks]
            out.append(f"| {md.escape(e.label)} | {md.escape(e.role)} | " + " | ".join(values) + " |")
    out += ["", "## Provenance", ""]
    for v in report.views:
        row, versions = v.row, loads(v.row.get("versions"))
        dirty = " (dirty)" if row.get("git_dirty") else ""
        versions.setdefault("python", loads(row.get("host")).get("python"))
        pkgs = ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "transformers", "lm-eval") if versions.get(k))
        out += [f"### {md.escape(v.label)}", "",
                f"- run {md.code(v.id)}, {md.escape(row.get('kind'))}"
                + (f", fuser {md.code(row['fuser'])}" if row.get("fuser") else ""),
                f"- command: {md.code(row.get('command') or '-')}",
                f"- git: {md.code(row.get('git_sha') or '-')}{dirty}; {md.escape(pkgs or 'versions not recorded')}",
                f"- started {md.escape(row.get('started_at'))}, took {duration(row)}", "",
                # JSON cannot close the fence: every line of json.dumps(indent=1) starts with a space and a quote,
                # a bracket or a brace, and newlines inside strings are written as \n
                "```json", json.dumps(v.config, indent=1, sort_keys=True), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _with_stderr(score: Score | None) -> str:
    if score is None or score.value is None:
        return "-"
    return f"{score.value:.4f} ± {score.stderr:.4f}" if score.stderr is not None else f"{score.value:.4f}"

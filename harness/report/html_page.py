"""The report as one self-contained HTML page: ``templates/report.html.j2`` with inline CSS (``templates/report.css``)
and inline SVG plots (``templates/charts.svg.j2``, laid out by :mod:`harness.report.charts`).

The templates are autoescaped, so text from the DB (run names, configs, errors) stays text. The page needs nothing
but a browser: no plotting library, no JavaScript, and a Content-Security-Policy forbids every network load and
script, so it renders the same offline, from a CI artifact or an e-mail attachment.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import jinja2

from harness.judge import usage_line
from harness.report import charts
from harness.report.data import (
    SKILL_RULE,
    SUITE_NOTES,
    Curve,
    Report,
    RunView,
    SuiteSection,
    comparison_sentence,
    duration,
    fmt,
    loads,
    signed,
)


def render(report: Report, curves: list[Curve]) -> str:
    """The page of ``report``, with the training ``curves``."""
    suites = []
    for section in report.suites:
        palette = charts.colors([en.model_id for en in section.entries])
        suites.append(SuiteBlock(section, palette, charts.suite_charts(section, palette)))
    columns = report.leaderboard.columns
    column_suites = [(s, sum(c.suite == s for c in columns)) for s in dict.fromkeys(c.suite for c in columns)]
    nav = [("leaderboard", "Leaderboard"), *([("skills", "Skill inheritance")] if report.skills else []),
           *((f"suite-{slug(s.section.suite)}", s.section.suite) for s in suites),
           ("training", "Training curves"), ("provenance", "Provenance")]
    return _environment().get_template("report.html.j2").render(
        report=report, nav=nav, column_suites=column_suites, suites=suites, training=charts.training_charts(curves),
        provenance=[provenance(v) for v in report.views], skill_rule=SKILL_RULE, suite_notes=SUITE_NOTES,
        models=len({r.model_id for r in report.leaderboard.rows}))


@dataclass
class SuiteBlock:
    section: SuiteSection
    palette: dict[str, str]  # model_id -> its colour in the charts and the table
    charts: list[charts.Chart]


@dataclass
class Provenance:
    """What the page says of where a run's numbers came from."""

    view: RunView
    wall: str
    sha: str  # short, "(dirty)" when the working tree had uncommitted changes
    facts: list[tuple[str, str]]
    timings: list[tuple[str, float, int]]  # stage, seconds, bar width in px
    versions: list[tuple[str, str]]
    host: list[tuple[str, str]]
    config: str  # JSON

    @property
    def row(self) -> dict[str, Any]:
        return self.view.row


def provenance(v: RunView) -> Provenance:
    r = v.row
    facts = [("command", r.get("command")), ("kind", r.get("kind")), ("fuser", r.get("fuser")),
             ("sources", ", ".join(json.loads(r.get("sources") or "[]") or [])), ("target", r.get("target")),
             ("models", ", ".join(f"{m.name} ({m.role})" for m in v.members)),
             ("git", f"{r.get('git_sha') or '-'}{' (dirty: uncommitted changes)' if r.get('git_dirty') else ''}"),
             ("run hash", r.get("run_hash")), ("started", r.get("started_at")), ("finished", r.get("finished_at")),
             ("status", r.get("status")), ("judge", usage_line(v.judge_usage, v.config.get("judge_price")))]
    timings = loads(r.get("timings"))
    total = max(timings.values(), default=0.0) or 1.0
    return Provenance(
        v, duration(r), (r.get("git_sha") or "-")[:10] + (" (dirty)" if r.get("git_dirty") else ""),
        [(k, str(val)) for k, val in facts if val not in (None, "")],
        [(stage, secs, max(1, round(220 * secs / total))) for stage, secs in timings.items()
         if isinstance(secs, (int, float))],
        _pairs(loads(r.get("versions"))), _pairs(loads(r.get("host"))), json.dumps(v.config, indent=1, sort_keys=True))


def _pairs(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), str(x)) for k, x in sorted(d.items())]


def slug(text: str) -> str:
    """An anchor id: letters and digits, everything else a dash."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, signed=signed, slug=slug, spec=format, trunc=charts.trunc,
                       arrow=lambda higher_is_better: "↑" if higher_is_better else "↓")
    env.globals["comparison_sentence"] = comparison_sentence
    return env

"""`bench report`: a static report of runs, as one self-contained HTML page or as Markdown.

What it shows, for the selected runs (``--run``, default: the newest ``ok`` run of each run name, or
of each config for unnamed runs):

* the leaderboard (:func:`harness.leaderboard.board` over those runs): one row per model of each run, fused models
  first in their run's group and followed by their target and sources; each suite's primary metric on its summary
  tasks; the best value per column marked; for fused models the gain over the best of the run's other models
  (target and sources), signed so that positive is better;
* skill inheritance: per fusion run, per task, whether the fused model kept its best source's skill (gained,
  inherited, partly, lost, or no skill), with the paired 95% interval of fused − best source
  (:mod:`harness.inheritance`, `bench skills`);
* per suite: a bar chart of the headline number, per-task numbers (BBH tasks, MT-Bench categories
  and turns, perplexity domains) as a table and a grouped bar chart, and every metric in a folded table; above
  them, one highlighted line per caveat of the runs' scores on that suite (MT-Bench rated by a local judge:
  :func:`harness.registry.run_caveats`);
* training curves: the ``train_log`` table (run_id, model_id, step, name, value), and the loss curves recorded in
  zoo members' cards (``zoo.json``) when their folders exist here;
* provenance of each run: command, config, git sha, package versions, host and per-stage timings.

Reads only SQLite (through :class:`harness.store.Store`) and JSON, no torch, so it is quick: well under a second for
a few runs. The package: :mod:`~harness.report.data` gathers what the report shows, :mod:`~harness.report.charts`
lays out the plots, :mod:`~harness.report.html_page` and :mod:`~harness.report.markdown_page` render it (the page from
the Jinja2 templates in ``templates/``).
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import BenchError
from harness.report import data, html_page, markdown_page
from harness.store import Store


def write(store: Store, out: Path, *, runs: list[str] | None = None, suites: list[str] | None = None,
          fmt: str = "html") -> Path:
    """Build the report for the selected runs and write ``out/report.html`` (or ``report.md``)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file", "give a folder; the report is written into it")
    views = data.load_runs(store, data.select_runs(store, runs), suites)
    if not any(v.scores for v in views):
        raise BenchError("the selected runs have no scores", "pick runs that evaluated a suite (see `bench runs`)")
    out.mkdir(parents=True, exist_ok=True)
    report = data.gather(store, views, suites)
    if fmt == "markdown":
        path = out / "report.md"
        path.write_text(markdown_page.render(report))
    else:
        path = out / "report.html"
        path.write_text(html_page.render(report, data.training_curves(store, views)))
    return path

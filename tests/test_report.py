"""`bench report`: the page's content on torch-free fake runs, and the page in a real headless browser.

The browser test renders a report of real runs on the micro zoo (fused merge and ensemble with their
sources, a bbh-mini eval) in Debian's Chromium: the DOM must hold the leaderboard and the SVG plots, the
console must stay silent, and the screenshot is written to a printed path for a person to look at. Set
``FUSEBENCH_REPORT_DB=/path/bench.db`` to report on an existing DB instead, and
``FUSEBENCH_SCREENSHOT=/path/shot.png`` to choose where the screenshot goes.

Chromium comes from ``apt-get install -y chromium``; the session fixture installs it when it is missing
and the tests run as root, and skips (saying why) where it cannot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

# --- a small DOM reader (the standard library's parser; the page has no scripts to run) ----------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def iter(self, tag: str | None = None):
        for child in self.children:
            if tag is None or child.tag == tag:
                yield child
            yield from child.iter(tag)

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


_VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "source", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.text += data


def parse(html_text: str) -> Node:
    b = _Builder()
    b.feed(html_text)
    return b.root


def by_id(root: Node, ident: str) -> Node:
    return next(n for n in root.iter() if n.attrs.get("id") == ident)


def leaderboard_rows(root: Node) -> list[list[str]]:
    table = by_id(root, "leaderboard-table")
    body = next(table.iter("tbody"))
    return [[td.all_text().strip() for td in tr.iter("td")] for tr in body.iter("tr")]


def external_references(root: Node) -> list[str]:
    """Anything a browser would fetch: src/href/xlink:href/CSS url() that is not an in-page anchor or data:."""
    found = []
    for n in root.iter():
        for attr in ("src", "href", "xlink:href", "action", "poster"):
            value = n.attrs.get(attr)
            if value is not None and not value.startswith(("#", "data:")):
                found.append(f"<{n.tag} {attr}={value}>")
        if n.tag == "style":
            found += re.findall(r"url\([^)]*\)|@import[^;]*", n.all_text())
    return found


# --- torch-free fake runs -----------------------------------------------------------------------


@pytest.fixture
def fake_db(monkeypatch, tmp_path):
    """A DB with a fake fusion run (sources of quality 0.2 and 0.8, fused 0.85) and a fake eval run."""
    from harness import runner
    from tests.harness import fake_plugins

    with fake_plugins.registered():
        monkeypatch.setattr(runner, "_load", lambda ev, batch_size: fake_plugins.load(ev))
        a = fake_plugins.make_model(tmp_path / "src_a", 0.2)
        b = fake_plugins.make_model(tmp_path / "src_b", 0.8)
        db = tmp_path / "bench.db"
        assert bench("run", "--fuser", "fake", "--sources", f"{a},{b}", "--suite", "fakesuite", "--set", "bonus=0.35",
                     "--name", "<b>fz</b>&<script>alert(1)</script>", "--db", str(db)) == 0
        assert bench("eval", "--model", str(a), "--suite", "fakesuite", "--name", "solo", "--db", str(db)) == 0
        yield {"db": db, "a": a, "b": b, "out": tmp_path / "report"}


def test_leaderboard_marks_best_and_gain_over_best_source(fake_db, capsys):
    assert bench("report", "--db", str(fake_db["db"]), "--out", str(fake_db["out"])) == 0
    assert "wrote " in capsys.readouterr().out
    root = parse((fake_db["out"] / "report.html").read_text())
    rows = leaderboard_rows(root)
    # group, model, role, fakesuite/t (acc, the first metric: FakeSuite has no registered primary)
    fused, src_a, src_b, solo = rows
    assert fused[2] == "fused" and [src_a[2], src_b[2]] == ["source", "source"] and solo[2] == "model"
    assert fused[3].startswith("0.8500") and "★" in fused[3]
    assert "▲ +0.0500" in fused[3]  # 0.85 - best source 0.80, in the better direction
    assert src_b[3] == "0.8000" and "★" not in src_b[3]
    assert solo[0] == "solo" and solo[3] == "0.2000"
    # the fused row is grouped with its sources: same group label, fused first
    assert fused[0] == src_a[0] == src_b[0] == "<b>fz</b>&<script>alert(1)</script>"


def test_page_is_self_contained_and_escapes_db_text(fake_db):
    assert bench("report", "--db", str(fake_db["db"]), "--out", str(fake_db["out"])) == 0
    text = (fake_db["out"] / "report.html").read_text()
    root = parse(text)
    assert not list(root.iter("script")) and "<script>alert" not in text and "&lt;script&gt;alert(1)" in text
    assert external_references(root) == []
    csp = next(n for n in root.iter("meta") if n.attrs.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp.attrs["content"]
    svgs = [n for n in root.iter("svg") if "plot" in n.classes()]
    assert len(svgs) == 1  # one task: just the headline bar chart
    bars = [r for r in svgs[0].iter("rect") if r.children]  # bars carry a <title> tooltip
    assert sorted(r.all_text().split(": ")[-1].split(" ±")[0] for r in bars) == ["0.2000", "0.8000", "0.8500"]
    assert "None recorded" in by_id(root, "training").all_text()


def test_training_curves_from_a_train_log_table(fake_db):
    db = sqlite_utils.Database(fake_db["db"])
    run = next(db.query("select run_id, model_id from run_models where role = 'fused'"))
    db["train_log"].insert_all([{"run_id": run["run_id"], "model_id": run["model_id"], "step": s, "name": "loss",
                                 "value": 3.0 / s} for s in range(1, 21)])
    assert bench("report", "--db", str(fake_db["db"]), "--out", str(fake_db["out"])) == 0
    root = parse((fake_db["out"] / "report.html").read_text())
    section = by_id(root, "training")
    (chart,) = [n for n in section.iter("svg")]
    (line,) = list(chart.iter("polyline"))
    assert len(line.attrs["points"].split()) == 20 and "train_log" in chart.all_text()


def test_an_empty_train_log_says_none_recorded(fake_db):
    assert "train_log" in sqlite_utils.Database(fake_db["db"]).table_names()  # created by migration m002
    assert bench("report", "--db", str(fake_db["db"]), "--out", str(fake_db["out"])) == 0
    assert "None recorded" in by_id(parse((fake_db["out"] / "report.html").read_text()), "training").all_text()


def test_markdown_report(fake_db):
    assert bench("report", "--db", str(fake_db["db"]), "--out", str(fake_db["out"]), "--format", "markdown") == 0
    text = (fake_db["out"] / "report.md").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| group | model | role |"))
    assert header.endswith("| fakesuite/t/acc ↑ |")  # the leaderboard shows the (first) primary metric only
    fused = next(line for line in lines if "| fused |" in line)
    assert "**0.8500**" in fused  # best in bold
    # names cannot inject markup into a PR page (inside the ```json config block they are inert text)
    outside_code = text.split("```")[::2]
    assert "&lt;script&gt;" in fused and not any("<script>" in part for part in outside_code)
    gain = lines[lines.index(fused) + 1]
    assert gain.startswith("|  | *gain over best source* |") and "+0.0500" in gain
    assert "## Provenance" in text and '"bonus": 0.35' in text


def test_selection_newest_per_name_explicit_runs_and_suites(fake_db, capsys):
    db, out = str(fake_db["db"]), str(fake_db["out"])
    assert bench("eval", "--model", str(fake_db["b"]), "--suite", "fakesuite", "--name", "solo", "--db", db) == 0
    assert bench("report", "--db", db, "--out", out) == 0
    rows = leaderboard_rows(parse((fake_db["out"] / "report.html").read_text()))
    assert [r[1].endswith("src_b") for r in rows if r[0] == "solo"] == [True]  # only the newest "solo" run
    first = sqlite_utils.Database(db).execute("select id from runs where name = 'solo' order by rowid").fetchone()[0]
    assert bench("report", "--db", db, "--out", out, "--run", first) == 0
    rows = leaderboard_rows(parse((fake_db["out"] / "report.html").read_text()))
    assert len(rows) == 1 and rows[0][1].endswith("src_a")
    capsys.readouterr()
    assert bench("report", "--db", db, "--out", out, "--suite", "bbh") == 2
    assert "no scores for suite(s) bbh" in capsys.readouterr().err
    assert bench("report", "--db", db, "--out", out, "--run", "nope") == 2
    assert bench("report", "--db", db, "--out", out, "--format", "pdf") == 2
    assert bench("report", "--db", str(fake_db["out"] / "empty.db"), "--out", out) == 2
    assert "no finished (ok) runs" in capsys.readouterr().err


def test_nice_ticks_cover_the_range():
    from harness.report.charts import nice_ticks

    assert nice_ticks(0, 1.8592) == [0, 0.5, 1, 1.5, 2]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1]
    ticks = nice_ticks(2.6, 7.1)
    assert ticks[0] <= 2.6 and ticks[-1] >= 7.1 and len(ticks) <= 8


# --- the page in a real browser -----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; installed with apt-get when missing and we are root, else the test is skipped."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "run `apt-get update && apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(cmd)}` timed out; install chromium by hand")
        log.append(done.stdout[-800:] + done.stderr[-800:])
    if not Path(CHROMIUM).exists():
        pytest.skip("could not install chromium with apt-get: " + " ".join(log[-1].split())[-300:])
    return CHROMIUM


def headless(binary: str, url: str, *args: str, workdir: Path) -> subprocess.CompletedProcess:
    """One headless Chromium call with a fresh profile, no network (every host resolves to nothing) and
    the page's console written to stderr."""
    profile = tempfile.mkdtemp(prefix="profile-", dir=workdir)
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--enable-logging=stderr", "--v=0", *args, url]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def console_lines(stderr: str) -> list[str]:
    """The page's console messages (errors, warnings, logs, CSP violations) as Chromium logs them."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def real_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real runs on the micro zoo: merge and ensemble with their sources, and a bbh-mini eval.
    ``FUSEBENCH_REPORT_DB`` points at an existing DB instead (and then no zoo is built)."""
    given = os.environ.get("FUSEBENCH_REPORT_DB")
    if given:
        return Path(given)
    zoo_home = request.getfixturevalue("zoo_home")
    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to(zoo_home / "zoo")
    monkeypatch.setenv("BENCH_HOME", str(home))
    db = tmp_path / "real.db"
    fast = ("--set", "perplexity.max_docs=6", "--set", "perplexity.max_chars_per_doc=600", "--db", str(db))
    assert bench("run", "--fuser", "merge", "--name", "merge-micro", *fast) == 0
    assert bench("run", "--fuser", "ensemble", "--name", "ensemble-micro", *fast) == 0
    assert bench("eval", "--model", "zoo:llama-base", "--suite", "bbh-mini", "--limit", "2", "--db", str(db)) == 0
    return db


def test_report_renders_in_headless_chromium(chromium, real_db, tmp_path, capsys):
    out = tmp_path / "report"
    assert bench("report", "--db", str(real_db), "--out", str(out)) == 0
    page = out / "report.html"
    url = page.resolve().as_uri()

    # 1. the DOM after the browser loaded the page: the leaderboard and the plots are there
    dom = headless(chromium, url, "--dump-dom", workdir=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = parse(dom.stdout)
    rows = leaderboard_rows(root)
    db = sqlite_utils.Database(real_db)
    fused_names = {r["name"] for r in db.query(
        "select distinct m.name from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'")}
    assert fused_names and fused_names <= {r[1] for r in rows if r[2] == "fused"}
    assert any("▲" in c or "▼" in c for r in rows if r[2] == "fused" for c in r[3:])  # gains shown
    plots = [n for n in root.iter("svg") if "plot" in n.classes()]
    titles = [next(p.iter("text")).all_text() for p in plots]
    assert any(t.startswith("perplexity · avg") for t in titles)  # bar chart per suite
    assert any("per domain" in t for t in titles)  # per-domain bits/byte
    assert any(t.startswith("bbh-mini") for t in titles)
    assert any(t.startswith("loss") for t in titles)  # the zoo members' training curves
    assert sum(1 for p in plots for _ in p.iter("rect")) > 20
    assert external_references(root) == []

    # 2. the console stays silent; shown to work by a page with a script error and a CSP-blocked script
    assert console_lines(dom.stderr) == []
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</main>", "<script>undefinedFunction()</script></main>"))
    blocked = console_lines(headless(chromium, broken.resolve().as_uri(), "--dump-dom", workdir=tmp_path).stderr)
    assert blocked and "Content Security Policy" in " ".join(blocked)
    plain = tmp_path / "plain.html"
    plain.write_text("<!doctype html><p>x</p><script>undefinedFunction()</script>")
    failed = console_lines(headless(chromium, plain.resolve().as_uri(), "--dump-dom", workdir=tmp_path).stderr)
    assert any("Uncaught ReferenceError" in line for line in failed)

    # 3. the screenshot, for a person to look at
    shot = Path(os.environ.get("FUSEBENCH_SCREENSHOT") or tmp_path / "report.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    taken = headless(chromium, url, f"--screenshot={shot}", "--window-size=1400,2000", workdir=tmp_path)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    assert console_lines(taken.stderr) == []
    assert png_size(shot) == (1400, 2000)
    assert shot.stat().st_size > 60_000  # a blank or unstyled page compresses to a few kB
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}\nreport page: {page}\n{json.dumps({'rows': len(rows), 'plots': len(plots)})}")


def test_mtbench_categories_and_turns_are_broken_down(tmp_path):
    """An eval run with MT-Bench-shaped scores (written through the store, as the suite writes them): the
    leaderboard shows overall and the turns, the suite section every category and a chart over categories."""
    from harness.store import Store

    store = Store(tmp_path / "mt.db")
    run = store.start_run(kind="eval", name="mt", command="bench eval", provenance={}, config={"suites": ["mtbench"]})
    store.add_model({"id": "m-1", "name": "chatty", "kind": "source"}, run, "model", 0)
    tasks = {"overall": 6.0, "turn1": 6.5, "turn2": 5.5, "category/writing": 7.0, "category/math": 4.0}
    scores = [{"task": t, "metric": "score", "value": v, "stderr": 0.5, "n": 4} for t, v in tasks.items()]
    scores += [{"task": t, "metric": "judge_std", "value": 0.3, "n": 4, "higher_is_better": False} for t in tasks]
    store.add_eval(run, "m-1", "mtbench", "1", "k1", scores, [])
    store.finish_run(run, "ok")
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "r")) == 0
    root = parse((tmp_path / "r" / "report.html").read_text())
    head = [th.all_text().split()[0] for th in next(by_id(root, "leaderboard-table").iter("thead")).iter("th")]
    assert head == ["group", "model", "role", "mtbench", "overall", "turn1", "turn2"]
    section = by_id(root, "suite-mtbench")
    columns = [th.all_text() for th in next(n for n in section.iter("table") if "breakdown" in n.classes()).iter("th")]
    assert columns == ["model", "role", "overall", "turn1", "turn2", "category/math", "category/writing"]
    (chart,) = [p for p in section.iter("svg") if next(p.iter("text")).all_text() == "mtbench · score per task"]
    labels = [t.all_text() for t in chart.iter("text")]
    assert "math" in labels and "writing" in labels and "turn1" not in labels


# --- Markdown output: DB text stays text ---------------------------------------------------------

HOSTILE = {
    "run": "r`<img src=x onerror=alert(1)>` | *b* _i_ [l](javascript:alert(1)) # h\n<script>alert(1)</script>",
    "model": "m|<svg onload=alert(2)>`",
    "task": "<svg onload=alert(3)>|t `x`\n<img src=y onerror=alert(4)>",
    "command": "bench run --name ``x`` <img src=x onerror=alert(5)>",
    "fuser": "fake`<img src=x onerror=alert(6)>",
    "git_sha": "<script>alert(7)</script>|",
}


@pytest.fixture
def hostile_db(fake_db):
    """The fake runs with every DB string the Markdown writers print replaced by markup that tries to get out."""
    db = sqlite_utils.Database(fake_db["db"])
    with db.conn:
        db.execute("update runs set name = ?, command = ?, fuser = ?, git_sha = ? where fuser is not null",
                   [HOSTILE["run"], HOSTILE["command"], HOSTILE["fuser"], HOSTILE["git_sha"]])
        db.execute("update models set name = ? || rowid", [HOSTILE["model"]])
        db.execute("update run_models set display_name = (select name from models where id = model_id)")
        db.execute("update scores set task = ?", [HOSTILE["task"]])
    return fake_db


def render_commonmark(text: str) -> Node:
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)
    live = re.findall(r"<(?:svg|img|script|a)\b[^>]*>", rendered, flags=re.IGNORECASE)
    assert not live, f"live markup from DB text: {live}"
    assert "<em>b</em>" not in rendered and "<h1>h" not in rendered
    return parse(rendered)


def assert_tables_intact(root: Node) -> int:
    tables = list(root.iter("table"))
    for table in tables:
        (head,) = [len(list(tr.iter("th"))) for tr in table.iter("tr") if list(tr.iter("th"))]
        assert [len(list(tr.iter("td"))) for tr in table.iter("tr") if not list(tr.iter("th"))] == \
            [head] * (len([tr for tr in table.iter("tr")]) - 1)
    return len(tables)


def test_markdown_report_keeps_hostile_db_text_as_text(hostile_db):
    assert bench("report", "--db", str(hostile_db["db"]), "--out", str(hostile_db["out"]), "--format", "markdown") == 0
    root = render_commonmark((hostile_db["out"] / "report.md").read_text())
    assert assert_tables_intact(root) == 2  # the leaderboard and the suite's per-task table
    text = root.all_text()
    one_line = {k: " ".join(v.split("\n")) for k, v in HOSTILE.items()}
    for key in ("run", "model", "task"):  # shown, literally, in headings and cells
        assert one_line[key] in text, key
    codes = [c.all_text() for c in root.iter("code")]
    for key in ("command", "fuser", "git_sha"):  # shown, literally, in code spans
        assert one_line[key] in codes, key
    head = [th.all_text() for th in next(root.iter("table")).iter("th")]
    assert head[:3] == ["group", "model", "role"] and one_line["task"] in head[3]


def test_markdown_leaderboard_keeps_hostile_db_text_as_text(hostile_db, capsys):
    capsys.readouterr()
    assert bench("leaderboard", "--db", str(hostile_db["db"]), "--format", "markdown", "--per-task") == 0
    root = render_commonmark(capsys.readouterr().out)
    assert assert_tables_intact(root) == 1
    cells = [td.all_text() for td in root.iter("td")]
    assert " ".join(HOSTILE["model"].split("\n")) + "1" in cells

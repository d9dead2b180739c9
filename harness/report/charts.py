"""The report's plots: where every bar, tick, whisker and line goes (no plotting library, no scripts).

Each chart is laid out here as numbers and strings; ``templates/charts.svg.j2`` writes it as inline SVG (autoescaped,
so names from the DB stay text). Three kinds: horizontal bars (a suite's headline number per model), grouped vertical
bars (per task or domain), and lines (training curves). Whiskers are ± the half-width of the value's 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import stats
from harness.report.data import Curve, Score, SuiteSection

#: Okabe-Ito (colour-blind safe), then a few extra distinguishable colours.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#999999", "#882255", "#44AA99", "#117733")
ERROR_BARS = "bars: value; whiskers: ±1 standard error"
LEGEND_COLUMN_PX = 170


@dataclass
class Tick:
    at: float  # x (or y) of the tick in the plot
    label: str


@dataclass
class LegendItem:
    x: int
    y: int
    name: str
    color: str


@dataclass
class Chart:
    """What every chart has: a frame with a title and an optional caption."""

    title: str
    width: float
    height: float
    caption: str | None = None


@dataclass
class HBar:
    label: str
    value: float
    err: float | None
    color: str
    strong: bool  # the fused model: bold label, opaque bar
    top: int  # of its row
    x: float
    width: float
    text_x: float  # of the value written after the bar (and its whisker)
    whisker: str | None  # SVG path


@dataclass(kw_only=True)
class HBarChart(Chart):
    """A bar per model, left to right from the zero line (or the axis' left end), its value written after it."""

    kind = "hbar"
    left: int
    top: int
    row_h: int
    bottom: int
    axis_x: float  # the zero line (or the axis' left end)
    axis_label: str
    label_x: float
    ticks: list[Tick]
    bars: list[HBar]


@dataclass
class Bar:
    name: str
    value: float
    err: float | None
    color: str
    x: float
    y: float
    width: float
    height: float
    whisker: str | None


@dataclass
class Category:
    name: str
    label: str  # the name cut to fit under its group
    x: float
    bars: list[Bar]


@dataclass(kw_only=True)
class GroupedBarChart(Chart):
    """A group of upright bars per category (task, domain), a bar per model; a colour legend below."""

    kind = "bars"
    left: int
    right: float
    baseline_y: float
    label_y: int
    axis_y: float  # the middle of the y axis, where its label goes
    axis_label: str
    ticks: list[Tick]
    categories: list[Category]
    legend: list[LegendItem]


@dataclass
class Line:
    name: str
    color: str
    points: list[tuple[float, float]]

    @property
    def path(self) -> str:
        return " ".join(f"{px:.1f},{py:.1f}" for px, py in self.points)

    @property
    def marked(self) -> bool:
        """Whether each point gets a marker (not on long curves)."""
        return len(self.points) <= 60


@dataclass(kw_only=True)
class LineChart(Chart):
    """A line per series over the steps, in a framed plot; a colour legend below."""

    kind = "lines"
    left: int
    top: int
    plot_w: int
    plot_h: int
    x_label: str
    y_label: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    lines: list[Line]
    legend: list[LegendItem]


# --- the charts of a report ---------------------------------------------------------------------


def colors(keys: list[str]) -> dict[str, str]:
    """A palette colour per distinct key, in order."""
    out: dict[str, str] = {}
    for k in keys:
        out.setdefault(k, PALETTE[len(out) % len(PALETTE)])
    return out


def suite_charts(section: SuiteSection, palette: dict[str, str]) -> list[Chart]:
    """A suite's headline number per model, and its per-task (per-domain) numbers when it has several tasks."""
    metric = section.metric
    direction = "higher is better" if section.higher_is_better else "lower is better"
    charts: list[Chart] = []
    head = section.headline
    if head is not None:
        scored = [(en, section.score(en, head)) for en in section.entries]
        bars = [(en.label, s.value, _err(s), palette[en.model_id], en.role == "fused") for en, s in scored if s is not None]
        charts.append(hbar_chart(f"{section.suite} · {head} · {metric}", bars, f"{metric} ({direction})"))
    details = section.details
    if len(details) >= 2:
        series = [(en.label, [_value(section.score(en, t)) for t in details], [_err(section.score(en, t)) for t in details],
                   palette[en.model_id]) for en in section.entries]
        what = "per domain" if section.suite == "perplexity" else "per task"
        charts.append(grouped_bar_chart(f"{section.suite} · {metric} {what}",
                                        [t.removeprefix("category/") for t in details], series, f"{metric} ({direction})"))
    return charts


def training_charts(curves: list[Curve]) -> list[Chart]:
    """One line chart per logged quantity and origin (train_log table, zoo cards)."""
    by_kind: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        by_kind.setdefault((c.origin, c.name), []).append(c)
    charts: list[Chart] = []
    for (origin, name), group in by_kind.items():
        palette = colors([c.label for c in group])
        charts.append(line_chart(f"{name} · {origin}", [(c.label, c.steps, c.values, palette[c.label]) for c in group],
                                 "step", name))
    return charts


def _value(score: Score | None) -> float | None:
    return None if score is None else score.value


def _err(score: Score | None) -> float | None:
    """The error bar: the half-width of the value's 95% interval (as the leaderboard's ±), None without a stderr."""
    if score is None or score.stderr is None or score.value is None:
        return None
    return stats.Estimate(score.value, score.stderr).half_width(stats.DEFAULT_LEVEL)


# --- layouts ------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:  # one value (all scores 0, say): an axis from 0 that shows it
        lo, hi = (0.0, 1.0) if lo == 0 else (min(0.0, lo * 1.1), max(0.0, hi * 1.1))
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-15)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    t = start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks if len(ticks) >= 2 else [start, start + step]


def _tick_label(t: float) -> str:
    return f"{t:.4g}"


def trunc(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def hbar_chart(title: str, bars: list[tuple[str, float | None, float | None, str, bool]], axis_label: str) -> HBarChart:
    """Horizontal bars (label, value, error, colour, emphasised) with whiskers."""
    shown = [(label, value, err, color, strong) for label, value, err, color, strong in bars
             if value is not None and math.isfinite(value)]
    left, top, row_h, width = 190, 34, 26, 640
    plot_w = width - left - 80  # 80 px on the right for the value labels
    bottom = top + row_h * max(1, len(shown))
    ends = [b[1] + (b[2] or 0) for b in shown] + [b[1] for b in shown]
    ticks = nice_ticks(min([0.0, *ends]), max([0.0, *ends]))
    lo, hi = ticks[0], ticks[-1]
    x = lambda v: left + (v - lo) / (hi - lo) * plot_w  # noqa: E731
    laid = []
    for i, (label, value, err, color, strong) in enumerate(shown):
        y = top + i * row_h
        x0, x1 = x(max(lo, 0.0)), x(value)
        whisker = None
        if err:
            a, b = x(value - err), x(value + err)
            ym = y + row_h / 2
            whisker = f"M{a:.1f},{ym:.1f}H{b:.1f}M{a:.1f},{ym - 4:.1f}V{ym + 4:.1f}M{b:.1f},{ym - 4:.1f}V{ym + 4:.1f}"
        text_x = max(x1, x((value + err) if err else value)) + 6
        laid.append(HBar(label, value, err, color, strong, y, min(x0, x1), abs(x1 - x0), text_x, whisker))
    return HBarChart(title, width, bottom + 44, ERROR_BARS, left=left, top=top, row_h=row_h, bottom=bottom,
                     axis_x=x(max(lo, 0.0)),
                     axis_label=axis_label, label_x=left + plot_w / 2,
                     ticks=[Tick(x(t), _tick_label(t)) for t in ticks], bars=laid)


def grouped_bar_chart(title: str, categories: list[str],
                      series: list[tuple[str, list[float | None], list[float | None], str]],
                      axis_label: str) -> GroupedBarChart:
    """Vertical bars, one group per category, one bar per series, with whiskers; legend below."""
    k = max(1, len(series))
    bar_w = max(6.0, min(22.0, 150.0 / k))
    group_w = bar_w * k + 18
    left, top, plot_h = 62, 36, 210
    plot_w = max(420.0, group_w * len(categories))
    legend_cols = max(1, min(3, int((plot_w - 10) // LEGEND_COLUMN_PX)))
    height = top + plot_h + 48 + 18 * math.ceil(len(series) / legend_cols) + 8
    values = [v + (err or 0) for _, vals, errs, _ in series for v, err in zip(vals, errs, strict=True) if v is not None]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]) if values else 1.0)
    lo, hi = ticks[0], ticks[-1]
    y = lambda v: top + plot_h - (v - lo) / (hi - lo) * plot_h  # noqa: E731
    slot = plot_w / max(1, len(categories))
    laid = []
    for ci, cat in enumerate(categories):
        gx = left + ci * slot + (slot - bar_w * k) / 2
        bars = []
        for si, (name, vals, errs, color) in enumerate(series):
            v, err = vals[ci], errs[ci]
            if v is None or not math.isfinite(v):
                continue
            bx = gx + si * bar_w
            y0, y1 = y(max(lo, 0.0)), y(v)
            whisker = None
            if err:
                cx = bx + (bar_w - 2) / 2
                whisker = (f"M{cx:.1f},{y(v - err):.1f}V{y(v + err):.1f}M{cx - 3:.1f},{y(v + err):.1f}"
                           f"H{cx + 3:.1f}M{cx - 3:.1f},{y(v - err):.1f}H{cx + 3:.1f}")
            bars.append(Bar(name, v, err, color, bx, min(y0, y1), bar_w - 2, abs(y0 - y1), whisker))
        laid.append(Category(cat, trunc(cat, max(6, int(slot / 7))), left + ci * slot + slot / 2, bars))
    return GroupedBarChart(title, left + plot_w + 20, height, ERROR_BARS, left=left, right=left + plot_w,
                           baseline_y=y(max(lo, 0.0)), label_y=top + plot_h + 16, axis_y=top + plot_h / 2,
                           axis_label=axis_label, ticks=[Tick(y(t), _tick_label(t)) for t in ticks], categories=laid,
                           legend=_legend([(name, color) for name, _, _, color in series], left, top + plot_h + 34,
                                          legend_cols))


def line_chart(title: str, series: list[tuple[str, list[float], list[float], str]], x_label: str,
               y_label: str) -> LineChart:
    """Lines with point markers; legend below."""
    left, top, plot_w, plot_h = 62, 36, 520, 220
    height = top + plot_h + 50 + 18 * math.ceil(len(series) / 3) + 8
    xs = [v for _, s, _, _ in series for v in s]
    ys = [v for _, _, s, _ in series for v in s if v is not None and math.isfinite(v)]
    xt = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    yt = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    x = lambda v: left + (v - xt[0]) / (xt[-1] - xt[0]) * plot_w  # noqa: E731
    y = lambda v: top + plot_h - (v - yt[0]) / (yt[-1] - yt[0]) * plot_h  # noqa: E731
    lines = [Line(name, color, [(x(a), y(b)) for a, b in zip(sx, sy, strict=True) if b is not None and math.isfinite(b)])
             for name, sx, sy, color in series]
    return LineChart(title, left + plot_w + 24, height, left=left, top=top, plot_w=plot_w, plot_h=plot_h,
                     x_label=x_label, y_label=y_label, x_ticks=[Tick(x(t), _tick_label(t)) for t in xt],
                     y_ticks=[Tick(y(t), _tick_label(t)) for t in yt], lines=[line for line in lines if line.points],
                     legend=_legend([(name, color) for name, _, _, color in series], left, top + plot_h + 48))


def _legend(items: list[tuple[str, str]], x0: int, y0: int, cols: int = 3) -> list[LegendItem]:
    """Colour keys in ``cols`` columns (the charts reserve one 18 px row per ``cols`` items)."""
    return [LegendItem(x0 + (i % cols) * LEGEND_COLUMN_PX, y0 + (i // cols) * 18, trunc(name, 22), color)
            for i, (name, color) in enumerate(items)]

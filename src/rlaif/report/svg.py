"""Inline SVG plots drawn by hand (no JavaScript, no libraries), so the report is one self-contained file.

Every plot is an `<svg class="plot">` with a title, axes with "nice" ticks and labels, a legend when it has
several series, and a `<title>` tooltip per data point (the browser shows it on hover, no script needed).
Line plots draw one `<polyline class="series">` per unbroken run of points. Callers pass only the steps
where a key was logged, so a sparse series (held-out loss every N steps) is one line through its points; a
logged non-finite value (None: a NaN the metrics logger cleaned; inf) breaks the line there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")  # Okabe-Ito
WIDTH, HEIGHT = 420, 260
PAD_L, PAD_R, PAD_T, PAD_B = 58, 14, 50, 40


@dataclass
class Series:
    """One line: x values and y values (None = missing), drawn in `color` (palette order when None)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str | None = None
    dashed: bool = False

    def finite(self) -> list[tuple[float, float]]:
        return [(x, y) for x, y in zip(self.xs, self.ys) if y is not None and math.isfinite(y)]


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 x 10^k, about `target` intervals.

    The first tick is <= lo and the last >= hi, so the axis runs from the first to the last tick.
    `integer`: steps of at least 1 (iteration numbers).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("nice_ticks needs finite bounds")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:  # a constant series: open a small window around it
        pad = abs(lo) * 0.1 if lo else 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.floor(lo / step + 1e-9) * step
    n = math.ceil((hi - start) / step - 1e-9)
    return [start + i * step for i in range(n + 1)]


def format_tick(v: float, ticks: Sequence[float]) -> str:
    """A tick label with as many decimals as the tick spacing needs (and no '-0')."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(v) or 1.0
    biggest = max(abs(t) for t in ticks)
    if biggest >= 1e5 or 0 < biggest < 1e-3:  # compact scientific for tiny or huge values: 2.5e-6, 1e+5
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:.3g}") if v else "0"
    else:
        decimals = 0
        while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
            decimals += 1
        text = f"{v:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text


def format_value(v: float) -> str:
    """A data value for tooltips and tables: 4 significant digits."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return f"{v:.4g}"


class _Frame:
    """Maps data coordinates to pixels inside the plot area."""

    def __init__(self, xt: list[float], yt: list[float], width: int, height: int):
        self.x0, self.x1, self.y0, self.y1 = xt[0], xt[-1], yt[0], yt[-1]
        self.left, self.right = PAD_L, width - PAD_R
        self.top, self.bottom = PAD_T, height - PAD_B

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _open(title: str, width: int, height: int, kind: str) -> list[str]:
    return [f'<svg class="plot {kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
            f"<title>{_e(title)}</title>",
            f'<text class="plot-title" x="{width / 2:.1f}" y="18" text-anchor="middle">{_e(title)}</text>']


def _axes(fr: _Frame, xt: list[float], yt: list[float], x_label: str, y_label: str, height: int,
          x_tick_text: Sequence[str] | None = None) -> list[str]:
    out = ['<g class="grid">']
    for y in yt:
        out.append(f'<line x1="{fr.left}" x2="{fr.right}" y1="{fr.py(y):.1f}" y2="{fr.py(y):.1f}"/>')
    out.append("</g>")
    out.append(f'<g class="axis"><line x1="{fr.left}" x2="{fr.right}" y1="{fr.bottom}" y2="{fr.bottom}"/>'
               f'<line x1="{fr.left}" x2="{fr.left}" y1="{fr.top}" y2="{fr.bottom}"/>')
    for y in yt:
        out.append(f'<line x1="{fr.left - 4}" x2="{fr.left}" y1="{fr.py(y):.1f}" y2="{fr.py(y):.1f}"/>'
                   f'<text class="tick" x="{fr.left - 6}" y="{fr.py(y) + 3.5:.1f}" text-anchor="end">'
                   f"{_e(format_tick(y, yt))}</text>")
    for i, x in enumerate(xt):
        label = x_tick_text[i] if x_tick_text is not None else format_tick(x, xt)
        out.append(f'<line x1="{fr.px(x):.1f}" x2="{fr.px(x):.1f}" y1="{fr.bottom}" y2="{fr.bottom + 4}"/>'
                   f'<text class="tick" x="{fr.px(x):.1f}" y="{fr.bottom + 15}" text-anchor="middle">'
                   f"{_e(label)}</text>")
    out.append("</g>")
    if x_label:
        out.append(f'<text class="axis-label" x="{(fr.left + fr.right) / 2:.1f}" y="{height - 6}" '
                   f'text-anchor="middle">{_e(x_label)}</text>')
    if y_label:
        cy = (fr.top + fr.bottom) / 2
        out.append(f'<text class="axis-label" x="13" y="{cy:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 13 {cy:.1f})">{_e(y_label)}</text>')
    return out


def _legend(items: list[tuple[str, str, bool]], width: int) -> list[str]:
    """A row of colour swatches under the title; wraps onto a second row when long."""
    out, x, y = ['<g class="legend">'], float(PAD_L), 34.0
    for label, color, dashed in items:
        w = 22 + 6.2 * len(label)
        if x + w > width - PAD_R and x > PAD_L:
            x, y = float(PAD_L), y + 12
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(f'<line x1="{x:.1f}" x2="{x + 16:.1f}" y1="{y - 3.5:.1f}" y2="{y - 3.5:.1f}" stroke="{color}" '
                   f'stroke-width="2.5"{dash}/><text x="{x + 20:.1f}" y="{y:.1f}">{_e(label)}</text>')
        x += w + 10
    out.append("</g>")
    return out


def line_plot(title: str, series: Sequence[Series], x_label: str = "step", y_label: str = "",
              y_range: tuple[float, float] | None = None, hline: tuple[float, str] | None = None,
              width: int = WIDTH, height: int = HEIGHT) -> str:
    """An SVG line plot of `series` ("" when no series has a finite point).

    y_range: fixed axis bounds (e.g. (0, 1) for rates), widened if the data leave them;
    hline: a dashed reference line (value, label), e.g. chance accuracy 0.5.
    """
    series = [s for s in series if s.finite()]
    if not series:
        return ""
    pts = [p for s in series for p in s.finite()]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_lo, y_hi = min(ys), max(ys)
    if y_range is not None:
        y_lo, y_hi = min(y_lo, y_range[0]), max(y_hi, y_range[1])
    if hline is not None:
        y_lo, y_hi = min(y_lo, hline[0]), max(y_hi, hline[0])
    integer_x = all(float(x).is_integer() for x in xs)
    xt = nice_ticks(min(xs), max(xs), 5, integer=integer_x)
    yt = nice_ticks(y_lo, y_hi, 4)
    fr = _Frame(xt, yt, width, height)
    out = _open(title, width, height, "line-plot")
    out += _axes(fr, xt, yt, x_label, y_label, height)
    if hline is not None:
        y = fr.py(hline[0])
        out.append(f'<line class="ref-line" x1="{fr.left}" x2="{fr.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="ref-label" x="{fr.right - 2}" y="{y - 3:.1f}" text-anchor="end">'
                   f"{_e(hline[1])}</text>")
    legend = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        legend.append((s.label, color, s.dashed))
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<g class="series-group" data-series="{_e(s.label)}">')
        for run in _runs(s):
            coords = " ".join(f"{fr.px(x):.1f},{fr.py(y):.1f}" for x, y in run)
            out.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2"{dash} '
                       f'stroke-linejoin="round" points="{coords}"/>')
        finite = s.finite()
        sparse = len(finite) <= 40
        if len(finite) <= 400:  # a hover tooltip per point; visible dots only when the points are few
            r, fill = (3.0, color) if sparse else (2.5, "transparent")
            for x, y in finite:
                out.append(f'<circle cx="{fr.px(x):.1f}" cy="{fr.py(y):.1f}" r="{r}" fill="{fill}">'
                           f"<title>{_e(s.label)} @ {_e(x_label)} {_e(format_value(x))}: "
                           f"{_e(format_value(y))}</title></circle>")
        out.append("</g>")
    if len(series) > 1 or hline is not None:
        out += _legend(legend, width)
    out.append("</svg>")
    return "\n".join(out)


def _runs(s: Series) -> list[list[tuple[float, float]]]:
    """Unbroken runs of finite points; a None or non-finite value breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(s.xs, s.ys):
        if y is None or not math.isfinite(y):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]


def bar_chart(title: str, categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float | None]]],
              y_label: str = "", y_range: tuple[float, float] | None = None,
              hlines: Sequence[tuple[float, str]] = (), width: int = WIDTH, height: int = HEIGHT,
              x_label: str = "") -> str:
    """Grouped vertical bars: one cluster per category, one bar per group (None = no bar). "" when empty."""
    values = [v for _, vals in groups for v in vals if v is not None and math.isfinite(v)]
    if not categories or not values:
        return ""
    y_lo, y_hi = min(0.0, min(values)), max(0.0, max(values))
    if y_range is not None:
        y_lo, y_hi = min(y_lo, y_range[0]), max(y_hi, y_range[1])
    for v, _ in hlines:
        y_lo, y_hi = min(y_lo, v), max(y_hi, v)
    yt = nice_ticks(y_lo, y_hi, 4)
    n = len(categories)
    xt = [-0.5 + i for i in range(n + 1)]  # cluster i spans [i - 0.5, i + 0.5]
    fr = _Frame(xt, yt, width, height)
    out = _open(title, width, height, "bar-chart")
    out += _axes(fr, [], yt, x_label, y_label, height)
    slot = (fr.px(0.5) - fr.px(-0.5)) * 0.8 / max(1, len(groups))
    for ci, cat in enumerate(categories):
        cx = fr.px(ci)
        out.append(f'<text class="tick" x="{cx:.1f}" y="{fr.bottom + 15}" text-anchor="middle">{_e(cat)}</text>')
        for gi, (label, vals) in enumerate(groups):
            v = vals[ci]
            if v is None or not math.isfinite(v):
                continue
            x = cx - slot * len(groups) / 2 + gi * slot
            y0, y1 = fr.py(0.0), fr.py(v)
            out.append(f'<rect class="bar" x="{x + 1:.1f}" y="{min(y0, y1):.1f}" width="{slot - 2:.1f}" '
                       f'height="{abs(y1 - y0):.1f}" fill="{PALETTE[gi % len(PALETTE)]}">'
                       f"<title>{_e(cat)} {_e(label)}: {_e(format_value(v))}</title></rect>")
    for v, label in hlines:
        y = fr.py(v)
        out.append(f'<line class="ref-line" x1="{fr.left}" x2="{fr.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="ref-label" x="{fr.right - 2}" y="{y - 3:.1f}" text-anchor="end">{_e(label)}</text>')
    if len(groups) > 1:
        out += _legend([(label, PALETTE[i % len(PALETTE)], False) for i, (label, _) in enumerate(groups)], width)
    out.append("</svg>")
    return "\n".join(out)


def histogram(title: str, values: Sequence[float], lo: float, hi: float, bins: int, x_label: str = "",
              width: int = WIDTH, height: int = HEIGHT) -> str:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the last bin includes hi). "" when empty."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    yt = nice_ticks(0, max(counts), 4, integer=True)
    fr = _Frame(edges, yt, width, height)
    xt = nice_ticks(lo, hi, 5)
    out = _open(title, width, height, "histogram")
    out += _axes(fr, [t for t in xt if lo <= t <= hi], yt, x_label, "count", height)
    for i, c in enumerate(counts):
        if c:
            x0, x1 = fr.px(edges[i]), fr.px(edges[i + 1])
            out.append(f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{fr.py(c):.1f}" width="{x1 - x0 - 1:.1f}" '
                       f'height="{fr.py(0) - fr.py(c):.1f}" fill="{PALETTE[0]}"><title>[{format_value(edges[i])}, '
                       f"{format_value(edges[i + 1])}): {c}</title></rect>")
    out.append("</svg>")
    return "\n".join(out)


def scatter_plot(title: str, xs: Sequence[float], ys: Sequence[float], x_label: str, y_label: str,
                 diagonal: bool = True, labels: Sequence[str] | None = None, width: int = WIDTH,
                 height: int = HEIGHT) -> str:
    """Points (x, y) with an optional y = x line (e.g. per-prompt reward, baseline vs policy). "" when empty."""
    pts = [(x, y, labels[i] if labels else "") for i, (x, y) in enumerate(zip(xs, ys))
           if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return ""
    lo = min(min(p[0] for p in pts), min(p[1] for p in pts))
    hi = max(max(p[0] for p in pts), max(p[1] for p in pts))
    t = nice_ticks(lo, hi, 4)
    fr = _Frame(t, t, width, height)
    out = _open(title, width, height, "scatter-plot")
    out += _axes(fr, t, t, x_label, y_label, height)
    if diagonal:
        out.append(f'<line class="ref-line" x1="{fr.px(t[0]):.1f}" y1="{fr.py(t[0]):.1f}" x2="{fr.px(t[-1]):.1f}" '
                   f'y2="{fr.py(t[-1]):.1f}"/><text class="ref-label" x="{fr.right - 2}" y="{fr.top + 10}" '
                   f'text-anchor="end">above the line: policy higher</text>')
    for x, y, label in pts:
        color = PALETTE[2] if y > x else PALETTE[1] if y < x else PALETTE[6]
        tip = f"{label}: " if label else ""
        out.append(f'<circle class="point" cx="{fr.px(x):.1f}" cy="{fr.py(y):.1f}" r="3.2" fill="{color}" '
                   f'fill-opacity="0.75"><title>{_e(tip)}{_e(format_value(x))} → {_e(format_value(y))}'
                   "</title></circle>")
    out.append("</svg>")
    return "\n".join(out)


def interval_bar(value: float, lo: float | None, hi: float | None, width: int = 360, height: int = 56) -> str:
    """A 0-100 % scale with a dashed 50 % line, the point estimate and its interval (win-rates)."""
    left, right, mid = 20.0, width - 24.0, 24.0

    def px(p: float) -> float:
        return left + max(0.0, min(1.0, p)) * (right - left)

    above = lo is not None and lo > 0.5
    below = hi is not None and hi < 0.5
    color = PALETTE[2] if above else PALETTE[1] if below else PALETTE[4]
    out = [f'<svg class="plot interval" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="win-rate with its interval">',
           "<title>win-rate with its 95 % interval; dashed: 50 % (no difference)</title>",
           f'<line class="axis-line" x1="{left}" x2="{right}" y1="{mid}" y2="{mid}"/>']
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line class="axis-line" x1="{px(p):.1f}" x2="{px(p):.1f}" y1="{mid + 8}" y2="{mid + 12}"/>'
                   f'<text class="tick" x="{px(p):.1f}" y="{mid + 24}" text-anchor="middle">{p * 100:.0f} %</text>')
    out.append(f'<line class="ref-line" x1="{px(0.5):.1f}" x2="{px(0.5):.1f}" y1="4" y2="{mid + 8}"/>')
    if lo is not None and hi is not None:
        out.append(f'<rect class="ci" x="{px(lo):.1f}" y="{mid - 6}" width="{max(1.0, px(hi) - px(lo)):.1f}" '
                   f'height="12" rx="3" fill="{color}" fill-opacity="0.3" stroke="{color}"/>')
    out.append(f'<circle class="point" cx="{px(value):.1f}" cy="{mid}" r="6" fill="{color}"/>')
    out.append("</svg>")
    return "\n".join(out)


__all__ = ["Series", "line_plot", "bar_chart", "histogram", "scatter_plot", "interval_bar", "nice_ticks",
           "format_tick", "format_value", "PALETTE"]

"""Charts as inline SVG, drawn on the server: nothing to download, no script, readable
without internet. Each function returns markup safe to put in a template; every text in
it is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

GOOD = "#2e9d49"
SCRAP = "#d64545"
AXIS = "#8a94a6"
PALETTE = ("#2f6fd6", "#2e9d49", "#e0a100", "#d64545", "#7b4fd6")


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    values: tuple[float, ...]     # stacked, bottom first
    title: str = ""


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    for step in (1, 2, 2.5, 5):
        mag = 10 ** (len(str(int(v))) - 1)
        top = step * mag
        if top >= v:
            return float(top)
    return float(10 ** len(str(int(v))))


def bar_chart(bars: Sequence[Bar], *, colors: Sequence[str] = (GOOD, SCRAP), width: int = 720,
              height: int = 200, label_every: int = 1, title: str = "") -> Markup:
    """Vertical stacked bars with a y axis from 0 to a round maximum."""
    left, bottom, top = 44, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = _nice_max(max((sum(b.values) for b in bars), default=0))
    n = max(1, len(bars))
    slot = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" '
             f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e3e7ee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" '
                     f'class="axis">{escape(_num(peak * frac))}</text>')
    for i, b in enumerate(bars):
        w = max(1.0, min(slot * 0.76, 36.0))
        x = left + i * slot + (slot - w) / 2
        y = top + plot_h
        for j, v in enumerate(b.values):
            h = plot_h * (v / peak) if peak else 0
            y -= h
            if h > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                             f'fill="{colors[j % len(colors)]}"><title>{escape(b.title or b.label)}'
                             f'</title></rect>')
        if i % max(1, label_every) == 0:
            parts.append(f'<text x="{x + w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                         f'class="axis">{escape(b.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *,
               width: int = 720, height: int = 220, percent: bool = True,
               label_every: int = 1, title: str = "") -> Markup:
    """Lines over shared x labels; values 0..1 shown as percent; None leaves a gap."""
    left, bottom, top, right = 44, 22, 10, 26
    plot_w, plot_h = width - left - right, height - bottom - top
    values = [v for _, vs in series for v in vs if v is not None]
    peak = 1.0 if percent else _nice_max(max(values, default=0))
    peak = max(peak, max(values, default=0))
    n = max(1, len(labels) - 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + plot_h * (1 - frac)
        text = f"{peak * frac * 100:.0f}%" if percent else _num(peak * frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e3e7ee"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" class="axis">{escape(text)}</text>')
    for i, label in enumerate(labels):
        if i % max(1, label_every) == 0:
            x = left + plot_w * (i / n if len(labels) > 1 else 0.5)
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" '
                         f'class="axis">{escape(label)}</text>')
    for k, (name, vs) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        path: list[str] = []
        pen = "M"
        for i, v in enumerate(vs):
            if v is None:
                pen = "M"
                continue
            x = left + plot_w * (i / n if len(labels) > 1 else 0.5)
            y = top + plot_h * (1 - v / peak)
            path.append(f"{pen}{x:.1f},{y:.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}">'
                         f'<title>{escape(name)} {escape(labels[i])}: '
                         f'{escape(f"{v * 100:.1f}%" if percent else _num(v))}</title></circle>')
            pen = "L"
        if path:
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" '
                         f'stroke-width="2"/>')
    parts.append("</svg>")
    legend = "".join(f'<span class="legend"><i style="background:{PALETTE[k % len(PALETTE)]}">'
                     f'</i>{escape(name)}</span>' for k, (name, _) in enumerate(series))
    return Markup(f'<div class="legends">{legend}</div>') + Markup("".join(parts))


def pareto(items: Sequence[tuple[str, float, str]], *, width: int = 720,
           row_h: int = 24, title: str = "") -> Markup:
    """Horizontal bars, largest first, each with its value text and the cumulative share
    (the Pareto reading: which few reasons make most of the loss)."""
    items = sorted(items, key=lambda it: -it[1])
    total = sum(v for _, v, _ in items) or 1.0
    peak = max((v for _, v, _ in items), default=1.0) or 1.0
    label_w, text_w = 170, 150
    bar_w = width - label_w - text_w
    height = row_h * max(1, len(items)) + 6
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">']
    cum = 0.0
    for i, (label, v, text) in enumerate(items):
        cum += v
        y = 3 + i * row_h
        w = bar_w * v / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + row_h * 0.65:.1f}" text-anchor="end" '
                     f'class="lbl">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" '
                     f'height="{row_h - 6}" fill="{PALETTE[3] if i == 0 else PALETTE[0]}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + row_h * 0.65:.1f}" '
                     f'class="lbl">{escape(text)} · {cum / total * 100:.0f}%</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"

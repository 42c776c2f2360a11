"""Hand-written inline SVG charts: lines, dots, vertical markers and shaded spans on nice axes.

No plotting library is needed and nothing is fetched: a chart is one ``<svg class="chart">``
element. A chart made with ``cursor=True`` carries a vertical line (``line.cursor``) and its
axis in ``data-*`` attributes, so the page's script can move the line to the frame shown.

API:
- ``Series(name, xs, ys, color, *, dashed=False, dots=False, legend=True, width=1.4, opacity=1.0)``
  — one line (or dots).
- ``Marker(x, color, label)`` — a vertical tick (a re-plan), its label as a tooltip.
- ``Span(x0, x1, color)`` — a shaded range of x (steps where the task was solved).
- ``line_chart(series, *, title, ...) -> str``.
- ``nice_ticks(lo, hi, count=5) -> list[float]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emcot.eval.viewer.html import esc

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Series:
    """One line of a chart; ``dots`` draws points instead; ``legend=False`` keeps it out of the legend;
    a wide, faint line stays visible under a thin one drawn on top of it."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    dashed: bool = False
    dots: bool = False
    legend: bool = True
    width: float = 1.4
    opacity: float = 1.0


@dataclass(frozen=True)
class Marker:
    """A vertical tick at ``x`` (e.g. a re-plan), explained by ``label`` on hover."""

    x: float
    color: str
    label: str


@dataclass(frozen=True)
class Span:
    """A shaded band from ``x0`` to ``x1``."""

    x0: float
    x1: float
    color: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10ⁿ)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda candidate: abs(math.log(candidate / raw)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, value = [], first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10) + 0.0)  # + 0.0 turns -0.0 into 0.0
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def _extent(values: list[float], pad: float) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        return lo - 1.0, hi + 1.0
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "",
    width: int = 380,
    height: int = 190,
    markers: Sequence[Marker] = (),
    spans: Sequence[Span] = (),
    x_range: tuple[float, float] | None = None,
    cursor: bool = False,
) -> str:
    """An SVG line chart of ``series`` with ``markers`` and ``spans``; ``x_range`` fixes the x axis."""
    left, right, top, bottom = 44, 10, 22, 30 if x_label else 20
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [float(x) for s in series for x in s.xs] + [m.x for m in markers]
    x_lo, x_hi = x_range if x_range is not None else _extent(xs, 0.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    y_lo, y_hi = _extent([float(y) for s in series for y in s.ys], 0.08)

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [f'<text x="{left}" y="14" font-weight="600">{esc(title)}</text>']
    for span in spans:
        x0, x1 = px(max(span.x0, x_lo)), px(min(span.x1, x_hi))
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.0):.1f}" height="{plot_h}" '
            f'fill="{span.color}" opacity="0.25"/>'
        )
    for tick in nice_ticks(y_lo, y_hi, 4):
        y = py(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for tick in nice_ticks(x_lo, x_hi, 6):
        x = px(tick)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 13}" text-anchor="middle">{_label(tick)}</text>')
    if x_label:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 3}" text-anchor="middle">{esc(x_label)}</text>'
        )
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>')
    for marker in markers:
        x = px(marker.x)
        parts.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" '
            f'stroke="{marker.color}" stroke-width="1.5" opacity="0.7"><title>{esc(marker.label)}</title></line>'
        )
    parts += [_line(line, px, py) for line in series]
    parts.append(_legend(series, left + plot_w))
    attributes = ""
    if cursor:
        attributes = f' data-left="{left}" data-width="{plot_w}" data-xmin="{x_lo}" data-xmax="{x_hi}"'
        parts.append(
            f'<line class="cursor" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" '
            'stroke="#111" stroke-width="1.5"/>'
        )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="{esc(title)}"{attributes}>' + "".join(parts) + "</svg>"
    )


def _line(line: Series, px: Callable[[float], float], py: Callable[[float], float]) -> str:
    points = [(px(float(x)), py(float(y))) for x, y in zip(line.xs, line.ys) if math.isfinite(float(y))]
    if line.dots:
        return "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{line.color}"/>' for x, y in points)
    if not points:
        return ""
    dash = ' stroke-dasharray="4 3"' if line.dashed else ""
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<polyline points="{path}" fill="none" stroke="{line.color}" stroke-width="{line.width}"'
        f' opacity="{line.opacity}"{dash}/>'
    )


def _legend(series: Sequence[Series], right_edge: float) -> str:
    names: dict[str, Series] = {}
    for line in series:
        if line.legend and line.name not in names:
            names[line.name] = line
    parts, x = [], right_edge
    for name, line in reversed(list(names.items())):
        x -= 7 * len(name) + 22
        dash = ' stroke-dasharray="4 3"' if line.dashed else ""
        parts.append(
            f'<line x1="{x:.0f}" x2="{x + 14:.0f}" y1="10" y2="10" stroke="{line.color}" stroke-width="2"{dash}/>'
            f'<text x="{x + 17:.0f}" y="14">{esc(name)}</text>'
        )
    return "".join(parts)

"""Line charts as inline SVG, drawn without a plotting library (for ``ddpmkit report``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["line_chart", "smooth", "nice_ticks"]

_W, _H = 640, 300  # the chart's size in SVG units
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 40  # margins for the axes' labels


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """An exponential moving average with its start-up bias removed (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart, at least ``min_step``) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), min_step)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis: powers of ten, or 1-2-5 steps when the range is under two decades."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mults = (1, 2, 5) if math.log10(hi / lo) < 2 else (1,)
    ticks = [m * 10.0**d for d in decades for m in mults if lo <= m * 10.0**d <= hi]
    return ticks or [lo, hi]


def _label(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def _bounds(points: list[tuple[float, float]], log_y: bool) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) around the points, widened where all share one value by half of it (so a constant
    learning rate of 1e-4 gets an axis of 5e-05 to 0.00015, not -1 to 1)."""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x0, x1 = _widen(x0, at_least=1)
    if y1 == y0:
        y0, y1 = (y0 / 2, y1 * 2) if log_y else _widen(y0)
    return x0, x1, y0, y1


def _widen(v: float, at_least: float = 0.0) -> tuple[float, float]:
    """An interval around the one value ``v``: half of |v| either side (at least ``at_least``; 1 around 0)."""
    half = max(abs(v) / 2, at_least) or 1.0
    return v - half, v + half


def _grid_lines(
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    log_y: bool,
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    x_min_step: float = 1.0,
) -> list[str]:
    """The ticks of both axes: a light grid line and a label each."""
    lines = []
    for t in _log_ticks(y0, y1) if log_y else nice_ticks(y0, y1):
        y = sy(t)
        lines.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>'
        )
    for t in nice_ticks(x0, x1, min_step=x_min_step):  # steps are whole numbers: no tick at step 3.5
        x = sx(t)
        lines.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_H - _BOTTOM}" stroke="#e4e4e4"/>'
            f'<text x="{x:.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{_label(t)}</text>'
        )
    return lines


def line_chart(
    xs: list[float],
    series: list[tuple[str, Sequence[float | None], str, float]],
    *,
    log_y: bool = False,
    x_label: str = "step",
    y_label: str = "",
    title: str = "",
    x_min_step: float = 1.0,  # the x ticks' least spacing: 1 for steps, 0 for a fractional x such as a width
) -> str:
    """An <svg> element: ``series`` is (name, ys, colour, stroke width); non-positive ys are dropped on a log axis."""
    points = [
        (x, y)
        for _, ys, _, _ in series
        for x, y in zip(xs, ys)
        if y is not None and math.isfinite(y) and (y > 0 or not log_y)
    ]
    if not points:
        return f'<p class="empty">no values to plot for {escape(title or y_label)}</p>'
    x0, x1, y0, y1 = _bounds(points, log_y)
    fy = math.log10 if log_y else float
    sx = lambda x: _LEFT + (x - x0) / (x1 - x0) * (_W - _LEFT - _RIGHT)  # noqa: E731
    sy = lambda y: _H - _BOTTOM - (fy(y) - fy(y0)) / (fy(y1) - fy(y0)) * (_H - _TOP - _BOTTOM)  # noqa: E731
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{_H - _TOP - _BOTTOM}" '
        'fill="#fff" stroke="#999"/>',
    ]
    parts += _grid_lines(x0, x1, y0, y1, log_y, sx, sy, x_min_step)
    parts.append(f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{_H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{(_TOP + _H - _BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(_TOP + _H - _BOTTOM) / 2})">{escape(y_label)}</text>'
    )
    for k, (name, ys, colour, width) in enumerate(series):
        shown = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in shown)
        parts.append(
            f'<polyline class="series" points="{pts}" fill="none" stroke="{colour}" '
            f'stroke-width="{width}"><title>{escape(name)}</title></polyline>'
        )
        if len(shown) == 1:  # a line through one point draws nothing: a marker does
            parts.append(
                f'<circle class="point" cx="{shown[0][0]:.1f}" cy="{shown[0][1]:.1f}" r="{2 + width}" '
                f'fill="{colour}"><title>{escape(name)}</title></circle>'
            )
        parts.append(
            f'<text x="{_W - _RIGHT - 8}" y="{_TOP + 16 + 16 * k}" text-anchor="end" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)

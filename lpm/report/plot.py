"""Draw `lpm.report.figures` specs as PNG and SVG.

matplotlib is imported inside the drawing functions and pyplot never: no GUI backend loads, PNGs
render with Agg, and the report command starts without paying for matplotlib until it draws.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lpm.report.figures import Bar, Figure, Heatmap, Panel, Point, Scatter, Windows, stacks
from lpm.report.study import fmt

# Okabe & Ito's colour-blind-safe palette; the two training phases share a hue, and hatching
# keeps all three apart in greyscale print.
PHASE_STYLE = {
    "autoencoder": ("#0072B2", "//", "training: autoencoder"),
    "diffusion": ("#56B4E9", "\\\\", "training: diffusion"),
    "synthesis": ("#D55E00", "", "synthesis"),
    "total": ("#009E73", "", "all phases"),
}
# A phase whose verdict is noisy: faded, with a dashed outline (the legend says so).
NOISY_STYLE = {"alpha": 0.45, "edgecolor": "black", "lw": 0.8, "ls": "--"}
PLAIN_STYLE = {"edgecolor": "white", "lw": 0.5}
GAP = 0.6  # space between groups, in bar widths
ROTATION = 45  # degrees, for tick labels too wide to stand side by side
ROTATED_CHARS = 34  # longest line of a rotated tick label
CHAR_IN = 0.065  # width of one tick-label character at 8 pt, inches
TITLE_CHAR_IN = 0.1  # the same for the 11 pt bold title
LEGEND_ENTRY_IN = 1.9
MAX_WIDTH_IN = 14.0
STAMP_COLOR = "#9E1B1B"  # the scale stamp: CPU-scale toys must not pass for the study's numbers
OUTLIER_COLOR = "#D55E00"
FRONTIER_COLOR = "#009E73"
POINT_COLOR = "0.25"
LABEL_PT = 7  # point labels of a trade-off panel
LABEL_CHAR_PT = 4.4  # width of one such label's character, points (a wide one: no overprint)
LABEL_LINE_PT = 9.0  # its line height, points
LABEL_GAP_PT = 5.0  # between a point and its label
RC = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "lpm",  # stable element ids: the same report gives the same SVG
    "hatch.linewidth": 0.8,
}


def _text_in(label: str) -> float:
    """Width of a tick label's longest line, inches."""
    return CHAR_IN * max(map(len, label.split("\n")))


def _cluster_size(bars: Sequence[Bar], bar: Bar) -> int:
    return sum(b.cluster == bar.cluster for b in bars) if bar.cluster >= 0 else 1


def _slot_in(panel: Panel) -> float:
    """Inches per bar: wide enough for the tick labels (a cluster's label spans its bars), the
    bars' or else the groups'."""
    need = [
        (_text_in(b.label) + 0.15) / _cluster_size(bars, b)
        for _, bars in panel.groups
        for b in bars
        if b.label
    ]
    if not need:
        need = [(_text_in(g) + 0.3) / len(bars) for g, bars in panel.groups]
    return max(0.45, *need)


def _panel_width(panel: Panel) -> float:
    slots = _positions(panel)[-1][0] + 1 if panel.groups else 1
    return 1.6 + slots * _slot_in(panel) + (0.9 if panel.secondary else 0)


def _group_labels(panel: Panel) -> list[str]:
    """Group labels above bars, wrapped to their group's width (neighbours must not overlap)."""
    slot = _slot_in(panel)
    return [
        textwrap.fill(group, max(8, int(len(bars) * slot / (CHAR_IN * 1.1))))
        for group, bars in panel.groups
    ]


def _positions(panel: Panel) -> list[tuple[float, Bar]]:
    """Each bar's x: one unit apart, clusters of a setting half a gap apart, groups a gap."""
    out, x = [], 0.0
    for _, bars in panel.groups:
        for i, bar in enumerate(bars):
            if i and bar.cluster != bars[i - 1].cluster:
                x += GAP / 2
            out.append((x, bar))
            x += 1
        x += GAP
    return out


def _group_span(panel: Panel) -> list[tuple[float, float]]:
    """Each group's first and last bar position."""
    placed = iter(_positions(panel))
    spans = []
    for _, bars in panel.groups:
        xs = [next(placed)[0] for _ in bars]
        spans.append((xs[0], xs[-1]))
    return spans


def _plain(value: float, _: Any) -> str:
    """Log-axis ticks as 0.01, 1, 1,000 rather than powers of ten."""
    return f"{value:,g}"


def _scale(panels: Sequence[Panel], log: bool) -> tuple[bool, float, float]:
    """One y scale for a figure's bar panels (`Figure.log` decides log or linear) and its
    limits."""
    bars = [b for p in panels for _, group in p.groups for b in group]
    values = [sum(v for _, v in b.segments) for b in bars] + [b.ci[1] for b in bars if b.ci]
    values = [v for v in values + [y for p in panels for y, _ in p.refs] if v > 0]
    if not values:
        return False, 0.0, 1.0
    if not log:
        return False, 0.0, max(values) * 1.18  # headroom for the notes above the bars
    # Down to the lowest bar, so that every bar shows.
    heights = [v for b in bars for _, v in b.segments if v > 0]
    return True, min(heights) / 3, max(values) * 4


def _bars(ax: Any, placed: list[tuple[float, Bar]]) -> None:
    """Stacked segments, the 95% whisker and the note above each bar."""
    for x, bar in placed:
        bottom = 0.0
        for phase, value in bar.segments:
            color, hatch, _ = PHASE_STYLE[phase]
            style = NOISY_STYLE if phase in bar.noisy else PLAIN_STYLE
            ax.bar(x, value, 0.8, bottom=bottom, color=color, hatch=hatch, **style)
            bottom += value
        top = bottom
        if bar.ci:
            low, high = min(bar.ci[0], bottom), max(bar.ci[1], bottom)
            whisker = [[bottom - low], [high - bottom]]
            ax.errorbar(x, bottom, whisker, fmt="none", ecolor="black", capsize=3, lw=1)
            top = high
        ax.annotate(
            bar.note,
            (x, top),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )


def _panel(
    ax: Any, panel: Panel, scale: tuple[bool, float, float], rotate: bool, width: float
) -> None:
    """A bar panel: bars, y scale, reference lines, tick and group labels."""
    from matplotlib.ticker import FuncFormatter

    placed = _positions(panel)
    _bars(ax, placed)
    log, low, high = scale
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_ylim(low, high)
    for y, label in panel.refs:
        ax.axhline(y, color="0.3", ls=(0, (4, 3)), lw=1)
        ax.text(
            0.01, y, label, transform=ax.get_yaxis_transform(), va="bottom", fontsize=8, color="0.3"
        )
    if panel.unity:
        ax.axhline(1, color="black", lw=0.8)
    if panel.secondary:
        label, factor = panel.secondary
        right = ax.secondary_yaxis("right", functions=(lambda y: y * factor, lambda y: y / factor))
        right.set_ylabel(label)
        if ax.get_yscale() == "log":
            right.yaxis.set_major_formatter(FuncFormatter(_plain))

    labelled = any(b.label for _, b in placed)
    spans = _group_span(panel)
    centers = [(first + last) / 2 for first, last in spans]
    if labelled:
        ticks = [_tick(b.label, rotate) for _, b in placed]
        ax.set_xticks([x for x, _ in placed], ticks, fontsize=8)
        ax.tick_params(axis="x", length=0)  # ticks under unlabelled bars of a cluster say nothing
        for group, center in zip(_group_labels(panel), centers, strict=True):
            ax.text(
                center,
                1.01,
                group,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                weight="bold",
            )
        for (_, last), (first, _) in itertools.pairwise(spans):
            ax.axvline((last + first) / 2, color="0.8", lw=0.8)
    else:
        ax.set_xticks(centers, [_tick(g, rotate) for g, _ in panel.groups], fontsize=8)
    if rotate:
        ax.tick_params(axis="x", labelrotation=ROTATION)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_xlim(-0.7, spans[-1][1] + 0.7)
    ax.set_ylabel(panel.ylabel)
    above = max((g.count("\n") + 1 for g in _group_labels(panel) if g), default=0)
    pad = 6 + 12 * above if labelled else 6
    ax.set_title(_wrap(panel.title, width), pad=pad, fontsize=9)


def _tick(label: str, rotate: bool) -> str:
    """A tick label; rotated, its lines joined and rewrapped to a few long ones (a rotated
    stack of short lines is hard to read, one very long line wastes the figure's height)."""
    flat = label.replace("\n", " ")
    return textwrap.fill(flat, ROTATED_CHARS, break_long_words=False) if rotate else label


def _wrap(text: str, width_in: float, char_in: float = CHAR_IN * 1.15) -> str:
    """`text` broken into lines that fit `width_in` inches (titles must never be clipped)."""
    return textwrap.fill(text, max(12, int(width_in / char_in))) if text else text


def _windows(ax: Any, panel: Windows) -> None:
    """Each window's value in order (outliers as crosses), the estimate with its band."""
    x = range(1, len(panel.values) + 1)
    kept = [(i + 1, v) for i, v in enumerate(panel.values) if i not in panel.outliers]
    out = [(i + 1, v) for i, v in enumerate(panel.values) if i in panel.outliers]
    low, high = panel.ci
    ax.axhspan(low, high, color="#0072B2", alpha=0.18, lw=0, label="95% interval")
    ax.axhline(panel.estimate, color="#0072B2", lw=1.5, label="robust estimate")
    ax.axhline(panel.mean, color="0.4", lw=1, ls=(0, (4, 3)), label="mean of all windows")
    if panel.limit:
        for bound in (1 - panel.limit, 1 + panel.limit):
            ax.axhline(panel.estimate * bound, color="#0072B2", lw=0.8, ls=":")
    if kept:
        ax.plot(*zip(*kept, strict=True), "o", color="black", ms=5, label="window")
    if out:
        ax.plot(*zip(*out, strict=True), "x", color=OUTLIER_COLOR, ms=8, mew=2, label="outlier")
    values = [*panel.values, low, high, panel.mean, panel.estimate * (1 + (panel.limit or 0))]
    top = max(values)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    ax.set_xlim(0.5, len(panel.values) + 0.5)
    ax.set_xticks(list(x))
    ax.set_xlabel("window")
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=9, color=STAMP_COLOR if panel.noisy else "black")


def _heatmap(fig: Any, ax: Any, heatmap: Heatmap) -> None:
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in heatmap.values])
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    rotate = len(heatmap.cols) > 6
    ax.set_xticks(
        range(len(heatmap.cols)),
        heatmap.cols,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
    )
    ax.set_yticks(range(len(heatmap.rows)), heatmap.rows)
    ax.set_xlabel("month")
    middle = np.nanmean([np.nanmin(data), np.nanmax(data)])
    for (r, c), value in np.ndenumerate(data):
        if not math.isnan(value):
            ax.text(
                c,
                r,
                fmt(value, 2),
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > middle else "white",
            )
    fig.colorbar(image, ax=ax, label=heatmap.label)
    ax.set_title(heatmap.title, fontsize=9)
    ax.spines[:].set_visible(False)


def _scatter(ax: Any, panel: Scatter, width: float) -> None:
    """Each job at (CO2e, quality) with both intervals; each family's frontier as a staircase
    (the best quality reachable for a given CO2e); jobs identical to the reference on a line
    above the rest, its tick naming it. Labels come after the layout (:func:`_point_labels`)."""
    from matplotlib.ticker import FuncFormatter

    for point, y in _placed(panel):
        _point(ax, point, y)
    for family in dict.fromkeys(p.family for p in panel.points):
        front = sorted(
            (p.kg.value, y) for p, y in _placed(panel) if p.frontier and p.family == family
        )
        if len(front) > 1:
            xs, ys = zip(*front, strict=True)
            ax.step(xs, ys, where="post", color=FRONTIER_COLOR, lw=1.5, zorder=1)
    if panel.log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.margins(x=0.12, y=0.12)
    if panel.reference is not None:
        ax.axhline(panel.reference, color="0.3", ls=(0, (4, 3)), lw=1, zorder=0)
        _reference_tick(ax, panel.reference, any(p.quality for p in panel.points))
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(_wrap(panel.title, width - 1.0), fontsize=9)


def _placed(panel: Scatter) -> list[tuple[Point, float]]:
    """The points drawn, each with its y: jobs identical to the reference at its line."""
    return [
        (p, panel.reference if p.quality is None else p.quality.value)
        for p in panel.points
        if p.quality is not None or panel.reference is not None
    ]


def _reference_tick(ax: Any, reference: float, finite: bool) -> None:
    """The quality ticks below the '= reference' line, and its own tick naming it."""
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t < reference] if finite else []
    step = ticks[1] - ticks[0] if len(ticks) > 1 else high - low
    ticks = [t for t in ticks if reference - t > 0.4 * step]  # none overprints the reference's
    ax.set_yticks([*ticks, reference], [*(f"{t:g}" for t in ticks), "= reference"])
    ax.set_ylim(low, high)


def _point(ax: Any, point: Point, y: float) -> None:
    """One job: marker (open triangle: stochastic sampler; filled: on the frontier; faded:
    noisy) and whiskers."""
    q = point.quality
    xerr = [[point.kg.value - point.kg.low], [point.kg.high - point.kg.value]]
    yerr = None if q is None else [[q.value - q.low], [q.high - q.value]]
    alpha = NOISY_STYLE["alpha"] if point.noisy else 1.0
    ax.errorbar(point.kg.value, y, yerr, xerr, fmt="none", ecolor="0.55", lw=0.8, capsize=2,
                alpha=alpha, zorder=2)  # fmt: skip
    face = FRONTIER_COLOR if point.frontier else "white"
    ax.plot(
        point.kg.value,
        y,
        "^" if point.stochastic else "o",
        ms=7,
        mfc="none" if point.stochastic else face,
        mec=FRONTIER_COLOR if point.frontier else POINT_COLOR,
        mew=1.5 if point.frontier else 1.0,
        ls="none",
        alpha=alpha,
        zorder=3,
    )


def _point_labels(ax: Any, panel: Scatter) -> None:
    """Each point's label beside it (to its left in the right third of the axes), top to
    bottom; a label that would overprint one above it moves down, a thin line to its point.
    Called after the layout, which fixes where the points land."""
    to_pt = 72 / ax.figure.dpi
    where = []  # point, y, its place in points, its x as a fraction of the axes
    for point, y in _placed(panel):
        pixels = ax.transData.transform((point.kg.value, y))
        share = ax.transAxes.inverted().transform(pixels)[0]
        where.append((point, y, pixels[0] * to_pt, pixels[1] * to_pt, share))
    boxes: list[tuple[float, float, float]] = []  # left, right, bottom (points)
    for point, y, px, py, share in sorted(where, key=lambda w: -w[3]):
        text = point.label + (f" (n={point.runs})" if point.runs > 1 else "")
        right = share < 0.67
        width = LABEL_CHAR_PT * len(text)
        left = px + LABEL_GAP_PT if right else px - LABEL_GAP_PT - width
        bottom = py + 2
        while clash := [b for b in boxes if b[0] < left + width and left < b[1]
                        and abs(b[2] - bottom) < LABEL_LINE_PT]:  # fmt: skip
            bottom = min(b[2] for b in clash) - LABEL_LINE_PT
        boxes.append((left, left + width, bottom))
        moved = bottom < py - LABEL_LINE_PT / 2
        label = ax.annotate(
            text,
            (point.kg.value, y),
            xytext=(LABEL_GAP_PT if right else -LABEL_GAP_PT, bottom - py),
            textcoords="offset points",
            ha="left" if right else "right",
            va="bottom",
            fontsize=LABEL_PT,
            alpha=max(NOISY_STYLE["alpha"], 0.7) if point.noisy else 1.0,
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if moved else None,
        )
        label.set_in_layout(False)  # the layout is done: labels must not move the axes


def _panel_size(panel: Panel | Heatmap | Windows | Scatter) -> tuple[float, float]:
    if isinstance(panel, Panel):
        above = max((g.count("\n") for g in _group_labels(panel)), default=0)
        return _panel_width(panel), 4.2 + 0.12 * _lines(panel) + 0.17 * above
    if isinstance(panel, Heatmap):
        return 3.4 + 0.6 * len(panel.cols), 1.6 + 0.4 * len(panel.rows)
    if isinstance(panel, Scatter):
        return 5.4, 4.6
    return 1.6 + 0.35 * len(panel.values), 2.6


def _labels(panel: Panel) -> list[str]:
    return [b.label for _, bars in panel.groups for b in bars] + [g for g, _ in panel.groups]


def _lines(panel: Panel) -> int:
    """Extra lines of tick labels beyond one (zone ticks carry name and intensity)."""
    return max((label.count("\n") for label in _labels(panel)), default=0)


def _grid(figure: Figure) -> tuple[int, int]:
    """Rows and columns of panels: one column when stacked, a grid of two columns for more than
    two windows panels, else one row."""
    n = len(figure.panels)
    if figure.stacked:
        return n, 1
    if n > 2 and all(isinstance(p, Windows) for p in figure.panels):
        return math.ceil(n / 2), 2
    return 1, n


def _size(figure: Figure) -> tuple[float, float, list[float], bool]:
    """Figure width and height (inches), each panel's share of it, and whether tick labels
    must be rotated to fit."""
    sizes = [_panel_size(p) for p in figure.panels]
    rows, cols = _grid(figure)
    if cols == 1:
        width, height = max(w for w, _ in sizes), sum(h for _, h in sizes)
        shares = [h for _, h in sizes]
    elif rows == 1:
        width, height = sum(w for w, _ in sizes), max(h for _, h in sizes)
        shares = [w for w, _ in sizes]
    else:
        width = cols * max(w for w, _ in sizes)
        height, shares = rows * max(h for _, h in sizes), []
    rotate = width > MAX_WIDTH_IN
    ticks = [
        _tick(label, True) for p in figure.panels if isinstance(p, Panel) for label in _labels(p)
    ]
    # Wide enough for the title and the scale stamp; the title wraps beyond the maximum.
    width = max(width, TITLE_CHAR_IN * len(figure.title) + 0.5, CHAR_IN * len(figure.stamp) + 0.5)
    lines = [line for tick in ticks for line in tick.split("\n")]
    deepest = max((t.count("\n") for t in ticks), default=0)
    extra = 0.2 + 0.75 * CHAR_IN * max(map(len, lines), default=0) + 0.15 * deepest
    extra = extra if rotate else 0
    extra += 0.25 * (TITLE_CHAR_IN * len(figure.title) > MAX_WIDTH_IN - 0.5)
    return min(width, MAX_WIDTH_IN), height + extra + 0.6 + 0.3 * bool(figure.stamp), shares, rotate


def _windows_legend(panels: Sequence[Windows]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Line2D([], [], color="black", marker="o", ls="", ms=5, label="window"),
        Line2D([], [], color="#0072B2", lw=1.5, label="robust estimate"),
        Patch(facecolor="#0072B2", alpha=0.18, label="its 95% interval"),
        Line2D([], [], color="0.4", lw=1, ls=(0, (4, 3)), label="mean of all windows"),
    ]
    if any(p.limit for p in panels):
        limit = max(p.limit or 0 for p in panels)
        handles.append(
            Line2D([], [], color="#0072B2", lw=0.8, ls=":", label=f"stable limit ±{limit:.0%}")
        )
    if any(p.outliers for p in panels):
        handles.insert(
            1,
            Line2D(
                [],
                [],
                color=OUTLIER_COLOR,
                marker="x",
                ls="",
                ms=8,
                mew=2,
                label="outlier, left out",
            ),
        )
    return handles


def _scatter_legend(panels: Sequence[Scatter]) -> list[Any]:
    from matplotlib.lines import Line2D

    points = [p for panel in panels for p in panel.points]
    handles: list[Any] = [
        Line2D([], [], color=POINT_COLOR, marker="o", mfc="white", ls="", ms=7, label="job"),
        Line2D([], [], color="0.55", marker="_", ms=8, lw=0.8, label="95% intervals"),
        Line2D([], [], color=FRONTIER_COLOR, marker="o", mfc=FRONTIER_COLOR, lw=1.5, ms=7,
               label="Pareto frontier"),
    ]  # fmt: skip
    if any(p.stochastic for p in points):
        handles.append(
            Line2D([], [], color=POINT_COLOR, marker="^", mfc="none", ls="", ms=7,
                   label="stochastic sampler (fidelity reads low)")
        )  # fmt: skip
    if any(p.noisy for p in points):
        handles.append(
            Line2D([], [], color=POINT_COLOR, marker="o", mfc="white", ls="", ms=7,
                   alpha=NOISY_STYLE["alpha"], label="noisy verdict")
        )  # fmt: skip
    if any(panel.reference is not None for panel in panels):
        handles.append(
            Line2D([], [], color="0.3", ls=(0, (4, 3)), lw=1, label="= reference sampler (PSNR ∞)")
        )
    return handles


def _legend(fig: Any, panels: Sequence[Panel | Heatmap | Windows | Scatter], stamp: str) -> None:
    """The legend under the panels, the scale stamp as its title (or alone where there is no
    legend): on the picture itself wherever it is pasted, in its own colour."""
    handles = _handles(panels)
    if not handles:
        if stamp:
            fig.supxlabel(stamp, fontsize=8.5, color=STAMP_COLOR, style="italic")
        return
    ncol = max(1, min(len(handles), int(fig.get_figwidth() / LEGEND_ENTRY_IN)))
    legend = fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=ncol,
        frameon=False,
        fontsize=8,
        title=stamp or None,
        title_fontproperties={"size": 8.5, "style": "italic"},
    )
    legend.get_title().set_color(STAMP_COLOR)


def _handles(panels: Sequence[Panel | Heatmap | Windows | Scatter]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if scatters := [p for p in panels if isinstance(p, Scatter)]:
        return _scatter_legend(scatters)
    bars = [b for p in panels if isinstance(p, Panel) for _, group in p.groups for b in group]
    shown = [p for p in panels if isinstance(p, Windows)]
    if shown:
        return _windows_legend(shown)
    if not bars:
        return []
    phases = [p for p in PHASE_STYLE if any(p == s for b in bars for s, _ in b.segments)]
    handles: list[Any] = [
        Patch(
            facecolor=PHASE_STYLE[p][0],
            hatch=PHASE_STYLE[p][1],
            edgecolor="white",
            label=PHASE_STYLE[p][2],
        )
        for p in phases
    ]
    if any(b.ci for b in bars):
        label = "95% interval" + (" (n>1: between runs)" if any(b.runs > 1 for b in bars) else "")
        handles.append(Line2D([], [], color="black", marker="_", markersize=8, lw=1, label=label))
    if any(b.noisy for b in bars):
        handles.append(Patch(facecolor="0.6", **NOISY_STYLE, label="noisy verdict"))
    return handles


def render(figure: Figure) -> Any:
    """The matplotlib figure for a spec (call inside `matplotlib.rc_context(RC)`).

    Raises:
        ValueError: a spec that stacks phases on a log axis (see `figures.arranged`).
    """
    from matplotlib.figure import Figure as MplFigure

    if figure.log and stacks(figure):
        raise ValueError(f"{figure.name}: stacked phases on a log axis misstate their shares")
    width, height, shares, rotate = _size(figure)
    fig = MplFigure(figsize=(width, height), layout="constrained")
    rows, cols = _grid(figure)
    if rows > 1 and cols > 1:
        grid = fig.subplots(rows, cols, squeeze=False)
    elif cols == 1:
        grid = fig.subplots(rows, 1, squeeze=False, height_ratios=shares)
    else:
        grid = fig.subplots(1, cols, squeeze=False, width_ratios=shares)
    axes = list(grid.flat)
    for spare in axes[len(figure.panels) :]:
        spare.set_visible(False)
    scale = _scale([p for p in figure.panels if isinstance(p, Panel)], figure.log)
    for i, (ax, panel) in enumerate(zip(axes, figure.panels, strict=False)):
        if isinstance(panel, Heatmap):
            _heatmap(fig, ax, panel)
        elif isinstance(panel, Windows):
            _windows(ax, panel)
        elif isinstance(panel, Scatter):
            _scatter(ax, panel, width * (shares[i] / sum(shares) if rows == 1 else 1.0))
        else:
            share = shares[i] / sum(shares) if rows == 1 else 1.0
            _panel(ax, panel, scale, rotate, width * share)
    fig.suptitle(_wrap(figure.title, width, TITLE_CHAR_IN), fontsize=11, weight="bold")
    _legend(fig, figure.panels, _wrap(figure.stamp, width))
    scatters = [
        (ax, p) for ax, p in zip(axes, figure.panels, strict=False) if isinstance(p, Scatter)
    ]
    if scatters:
        fig.draw_without_rendering()  # the layout places the points; their labels avoid each other
        for ax, panel in scatters:
            _point_labels(ax, panel)
    return fig


def draw(figure: Figure, out: Path) -> list[Path]:
    """Write `<out>/<name>.png` and `.svg`; return their paths."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = render(figure)
        paths = [out / f"{figure.name}.png", out / f"{figure.name}.svg"]
        fig.savefig(paths[0], dpi=150)
        fig.savefig(paths[1], metadata={"Date": None})  # reproducible files
    return paths

"""Draw `lpm.report.figures` specs as PNG and SVG.

matplotlib is imported inside the drawing functions and pyplot never: no GUI backend loads, PNGs
render with Agg, and the report command starts without paying for matplotlib until it draws.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lpm.report.figures import Bar, Figure, Heatmap, Panel
from lpm.report.study import fmt

# Okabe & Ito's colour-blind-safe palette; the two training phases share a hue, and hatching
# keeps all three apart in greyscale print.
PHASE_STYLE = {
    "autoencoder": ("#0072B2", "//", "training: autoencoder"),
    "diffusion": ("#56B4E9", "\\\\", "training: diffusion"),
    "synthesis": ("#D55E00", "", "synthesis"),
}
# A phase whose verdict is noisy: faded, with a dashed outline (the legend says so).
NOISY_STYLE = {"alpha": 0.45, "edgecolor": "black", "lw": 0.8, "ls": "--"}
PLAIN_STYLE = {"edgecolor": "white", "lw": 0.5}
GAP = 0.6  # space between groups, in bar widths
CHAR_IN = 0.065  # width of one tick-label character at 8 pt, inches
TITLE_CHAR_IN = 0.1  # the same for the 11 pt bold title
LEGEND_ENTRY_IN = 1.9
MAX_WIDTH_IN = 14.0
LOG_SPAN = 100.0  # log scale once the values span more than two decades
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


def _slot_in(panel: Panel) -> float:
    """Inches per bar: wide enough for the tick labels, the bars' or else the groups'."""
    need = [_text_in(b.label) + 0.15 for _, bars in panel.groups for b in bars if b.label]
    if not need:
        need = [(_text_in(g) + 0.3) / len(bars) for g, bars in panel.groups]
    return max(0.45, *need)


def _panel_width(panel: Panel) -> float:
    slots = sum(len(bars) for _, bars in panel.groups) + GAP * (len(panel.groups) - 1)
    return 1.6 + slots * _slot_in(panel) + (0.9 if panel.secondary else 0)


def _positions(panel: Panel) -> list[tuple[float, Bar]]:
    out, x = [], 0.0
    for _, bars in panel.groups:
        out += [(x + i, b) for i, b in enumerate(bars)]
        x += len(bars) + GAP
    return out


def _plain(value: float, _: Any) -> str:
    """Log-axis ticks as 0.01, 1, 1,000 rather than powers of ten."""
    return f"{value:,g}"


def _scale(panels: Sequence[Panel]) -> tuple[bool, float, float]:
    """One y scale for a figure's bar panels (log when the values span more than two decades)
    and its limits."""
    bars = [b for p in panels for _, group in p.groups for b in group]
    values = [sum(v for _, v in b.segments) for b in bars] + [b.ci[1] for b in bars if b.ci]
    values = [v for v in values + [y for p in panels for y, _ in p.refs] if v > 0]
    if not values:
        return False, 0.0, 1.0
    if max(values) / min(values) <= LOG_SPAN:
        return False, 0.0, max(values) * 1.18  # headroom for the notes above the bars
    # Down to the smallest segment's top, so that every stacked segment shows.
    tops = [t for b in bars for t in itertools.accumulate(v for _, v in b.segments) if t > 0]
    return True, min(tops) / 3, max(values) * 4


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


def _panel(ax: Any, panel: Panel, scale: tuple[bool, float, float], rotate: bool) -> None:
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
    starts = [0.0]
    for _, bars in panel.groups:
        starts.append(starts[-1] + len(bars) + GAP)
    centers = [(start + end - GAP - 1) / 2 for start, end in itertools.pairwise(starts)]
    if labelled:
        ax.set_xticks([x for x, _ in placed], [b.label for _, b in placed], fontsize=8)
        for (group, _), center in zip(panel.groups, centers, strict=True):
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
        for boundary in starts[1:-1]:
            ax.axvline(boundary - (GAP + 1) / 2, color="0.8", lw=0.8)
    else:
        ax.set_xticks(centers, [g for g, _ in panel.groups], fontsize=8)
    if rotate:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_xlim(-0.7, starts[-1] - GAP - 0.3)
    ax.set_ylabel(panel.ylabel)
    grouped_above = labelled and any(g for g, _ in panel.groups)
    ax.set_title(panel.title, pad=18 if grouped_above else 6, fontsize=9)


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


def _size(figure: Figure) -> tuple[float, float, list[float], bool]:
    """Figure width and height (inches), each panel's share of it, and whether tick labels
    must be rotated to fit."""
    widths = [
        _panel_width(p) if isinstance(p, Panel) else 2.8 + 0.6 * len(p.cols) for p in figure.panels
    ]
    heights = [4.2 if isinstance(p, Panel) else 1.6 + 0.4 * len(p.rows) for p in figure.panels]
    if figure.stacked:
        width, height, shares = max(widths), sum(heights), heights
    else:
        width, height, shares = sum(widths), max(heights), widths
    rotate = width > MAX_WIDTH_IN
    width = max(width, TITLE_CHAR_IN * len(figure.title) + 0.5)
    return min(width, MAX_WIDTH_IN), height + (0.8 if rotate else 0) + 0.6, shares, rotate


def _legend(fig: Any, panels: Sequence[Panel | Heatmap]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bars = [b for p in panels if isinstance(p, Panel) for _, group in p.groups for b in group]
    if not bars:
        return
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
    ncol = max(1, min(len(handles), int(fig.get_figwidth() / LEGEND_ENTRY_IN)))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=8)


def draw(figure: Figure, out: Path) -> list[Path]:
    """Write `<out>/<name>.png` and `.svg`; return their paths."""
    import matplotlib
    from matplotlib.figure import Figure as MplFigure

    with matplotlib.rc_context(RC):
        width, height, shares, rotate = _size(figure)
        fig = MplFigure(figsize=(width, height), layout="constrained")
        n = len(figure.panels)
        if figure.stacked:
            axes = fig.subplots(n, 1, squeeze=False, height_ratios=shares).flat
        else:
            axes = fig.subplots(1, n, squeeze=False, width_ratios=shares).flat
        scale = _scale([p for p in figure.panels if isinstance(p, Panel)])
        for ax, panel in zip(axes, figure.panels, strict=True):
            if isinstance(panel, Heatmap):
                _heatmap(fig, ax, panel)
            else:
                _panel(ax, panel, scale, rotate)
        fig.suptitle(figure.title, fontsize=11, weight="bold")
        _legend(fig, figure.panels)
        paths = [out / f"{figure.name}.png", out / f"{figure.name}.svg"]
        fig.savefig(paths[0], dpi=150)
        fig.savefig(paths[1], metadata={"Date": None})  # reproducible files
    return paths

"""One line chart to a PNG, with matplotlib's Agg backend (no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def line_chart(
    path: Path,
    x: Sequence[float],
    y: Sequence[float],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    marks: Sequence[tuple[float, str]] = (),
    marker: str = "",
) -> None:
    """``y`` over ``x``, with a dashed vertical line and a legend entry for each mark."""
    # Imported here: scripts that draw nothing (and the tests that run bench code) need
    # no matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(x, y, marker=marker, markersize=2, linewidth=1)
    colours = ("tab:green", "tab:red", "tab:purple", "tab:orange")
    for index, (at, label) in enumerate(marks):
        axes.axvline(at, color=colours[index % 4], linestyle="--", linewidth=1, label=label)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if marks:
        axes.legend(loc="best")
    figure.savefig(path, dpi=100)

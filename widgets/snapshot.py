"""Live panels as one static plotly Figure: what a saved notebook keeps of a dashboard (its widgets are not saved).

Each panel becomes a subplot with the panel's own title, traces, axes (units, from zero, times of day) and a
legend of its own beneath it, as in the live view.
"""
from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .panels import Panel

_PLACED_BY_SUBPLOTS = {"domain", "anchor", "overlaying", "side"}  # where an axis sits: the grid decides
_MARGIN = {"l": 60, "r": 60, "t": 80, "b": 70}  # b: the last row's legend
_GAP_PX = 100  # between rows: the time axis's labels, a legend row, the next title


def _axis(axis) -> dict:
    return {key: value for key, value in axis.to_plotly_json().items() if key not in _PLACED_BY_SUBPLOTS}


def _right_axis(panel: Panel) -> bool:
    return any(trace.yaxis == "y2" for trace in panel.figure.data)


def figure_of(grid: Sequence[Sequence[Panel]], title: str, width: int = 1100, row_height: int = 310) -> go.Figure:
    """Panels row by row; a row with fewer panels than the widest one stretches its last panel across."""
    columns = max(len(row) for row in grid)
    specs = [[{"secondary_y": _right_axis(p), "colspan": columns - len(row) + 1 if i == len(row) - 1 else 1}
              for i, p in enumerate(row)] + [None] * (columns - len(row)) for row in grid]
    placed = [(r, c, panel) for r, row in enumerate(grid, 1) for c, panel in enumerate(row, 1)]
    height = row_height * len(grid)
    plot_px = height - _MARGIN["t"] - _MARGIN["b"]
    template = grid[0][0].figure.layout.template  # the live panels' look, colours included
    colours = template.layout.colorway
    figure = make_subplots(rows=len(grid), cols=columns, specs=specs, vertical_spacing=_GAP_PX / plot_px,
                           horizontal_spacing=0.16, subplot_titles=[p.figure.layout.title.text for *_, p in placed])
    for n, (r, c, panel) in enumerate(placed, 1):
        legend = "legend" if n == 1 else f"legend{n}"
        for i, trace in enumerate(panel.figure.data):
            copy = go.Scatter(trace, legend=legend)
            if copy.line.color is None:  # each panel's own colours, as live, not one cycle across the figure
                copy.line.color = copy.marker.color = colours[i % len(colours)]
            figure.add_trace(copy, row=r, col=c, secondary_y=trace.yaxis == "y2")
        figure.update_xaxes(_axis(panel.figure.layout.xaxis), row=r, col=c)
        figure.update_yaxes(_axis(panel.figure.layout.yaxis), row=r, col=c, secondary_y=False)
        if _right_axis(panel):
            figure.update_yaxes(_axis(panel.figure.layout.yaxis2), row=r, col=c, secondary_y=True)
        cell = figure.get_subplot(r, c)
        # Beneath the time axis's labels, as the live panels place theirs.
        figure.layout[legend] = {"orientation": "h", "x": cell.xaxis.domain[0], "xanchor": "left",
                                 "y": cell.yaxis.domain[0] - 28 / plot_px, "yanchor": "top"}
    figure.update_annotations(font_size=14)  # the subplot titles, at the live panels' title size
    figure.update_layout(title=title, width=width, height=height, template=template, margin=_MARGIN)
    return figure

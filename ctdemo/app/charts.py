"""Plotly figures for the pages: numbers in, figures out; `curve_columns` alone draws (loss
and accuracy side by side).

Class and model names come from a visitor's folders and files, and plotly renders a subset of
HTML in every label (`<b>`, `<a href>`, `<br>`): each name goes through `html.escape` here, so
it shows as written.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ctdemo.app.classify import format_probability
from ctdemo.explain.faithfulness import DeletionCurve

CURVE_METRICS = ("loss", "accuracy")
PREDICTED_COLOUR = "#d62728"
OTHER_COLOUR = "#9aa5b1"
STRIP_COLOUR = "#1f6feb"


def probability_bars(probabilities: dict[str, float], title: str = "") -> go.Figure:
    """One horizontal bar per class, the most probable one highlighted, as percentages."""
    names = [html.escape(name) for name in probabilities]
    values = list(probabilities.values())
    best = max(range(len(values)), key=values.__getitem__)
    figure = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker_color=[
                PREDICTED_COLOUR if i == best else OTHER_COLOUR for i in range(len(names))
            ],
            text=[format_probability(value) for value in values],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    figure.update_layout(
        title=html.escape(title) or None,
        xaxis={
            "range": [0, 1.001],
            "tickvals": [0, 0.25, 0.5, 0.75, 1],
            "tickformat": ".0%",
            "title": "probability",
        },
        yaxis={"autorange": "reversed"},
        height=60 + 40 * len(names),
        margin={"l": 10, "r": 30, "t": 30 if title else 10, "b": 10},
        showlegend=False,
    )
    return figure


def training_curves(
    history: Mapping[str, Sequence[float]],
    metric: str,
    best_epoch: int = 0,
    early_stop_epoch: int | None = None,
) -> go.Figure:
    """Train and validation `metric` ("loss" or "accuracy") per epoch, the best epoch (whose
    weights are kept) and the early-stopping point marked."""
    figure = go.Figure()
    for key, name, dash in ((metric, "train", "solid"), (f"val_{metric}", "validation", "dash")):
        values = list(history.get(key) or ())
        figure.add_scatter(
            x=list(range(1, len(values) + 1)),
            y=values,
            name=name,
            mode="lines+markers",
            line={"dash": dash},
        )
    if best_epoch:
        figure.add_vline(x=best_epoch, line_dash="dot", annotation_text=f"best epoch {best_epoch}")
    if early_stop_epoch:
        figure.add_vline(
            x=early_stop_epoch,
            line_dash="dash",
            line_color="#888",
            annotation_text="early stop",
            annotation_position="bottom right",
        )
    figure.update_layout(
        xaxis_title="epoch",
        yaxis_title=metric,
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.15},
    )
    return figure


def curve_columns(figure: Callable[[str], go.Figure], key: str) -> None:
    """Two columns, loss then accuracy, each the chart `figure(metric)` (keyed `{key}_{metric}`)."""
    for column, metric in zip(st.columns(2), CURVE_METRICS, strict=True):
        column.plotly_chart(figure(metric), key=f"{key}_{metric}", width="stretch")


def _count_heatmap(
    matrix: list[list[int]], true_names: list[str], predicted_names: list[str]
) -> go.Heatmap:
    """Counts with true classes as rows and predicted ones as columns, each cell labelled."""
    return go.Heatmap(
        z=matrix,
        x=[f"predicted {html.escape(name)}" for name in predicted_names],
        y=[f"true {html.escape(name)}" for name in true_names],
        text=matrix,
        texttemplate="%{text}",
        colorscale="Blues",
        showscale=False,
    )


def confusion_matrix(matrix: list[list[int]], class_names: list[str]) -> go.Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    figure = go.Figure(_count_heatmap(matrix, class_names, class_names))
    figure.update_layout(
        height=120 + 60 * len(class_names),
        yaxis={"autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return figure


def run_overlay(
    runs: Sequence[tuple[str, Mapping[str, Sequence[float]]]], metric: str
) -> go.Figure:
    """Several runs' train (solid) and validation (dashed) `metric`, one colour per run."""
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
    figure = go.Figure()
    for index, (label, history) in enumerate(runs):
        colour = palette[index % len(palette)]
        for key, dash, suffix in ((metric, "solid", "train"), (f"val_{metric}", "dash", "val")):
            values = list(history.get(key) or [])
            figure.add_scatter(
                x=list(range(1, len(values) + 1)),
                y=values,
                name=f"{html.escape(label)} ({suffix})",
                mode="lines",
                line={"color": colour, "dash": dash},
            )
    figure.update_layout(
        xaxis_title="epoch",
        yaxis_title=metric,
        height=340,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


MODEL_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
"""One colour per compared model, in the order of `run_overlay`, so a model keeps its colour
from chart to chart."""


def roc_overlay(curves: dict[str, tuple[list[float], list[float], float]]) -> go.Figure:
    """Several models' ROC curves on the same slices, AUC in the legend, chance dotted."""
    figure = _with_diagonal("chance")
    for index, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        label = (
            html.escape(name)
            if auc is None or auc != auc
            else f"{html.escape(name)} (AUC {auc:.3f})"
        )
        figure.add_scatter(
            x=list(fpr),
            y=list(tpr),
            name=label,
            mode="lines",
            line={"color": MODEL_PALETTE[index % len(MODEL_PALETTE)], "shape": "hv"},
            hovertemplate="false-positive rate %{x:.1%}<br>sensitivity %{y:.1%}<extra></extra>",
        )
    figure.update_layout(
        xaxis={
            "title": "false-positive rate (1 − specificity)",
            "range": [0, 1],
            "tickformat": ".0%",
        },
        yaxis={"title": "sensitivity", "range": [0, 1.02], "tickformat": ".0%"},
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def reliability_diagram(calibration: dict[str, list[dict]]) -> go.Figure:
    """Mean predicted probability against observed frequency per bin (`metrics.
    reliability_bins`), one line per model; marker size and hover give each bin's count.
    Empty bins are left out; a calibrated model lies on the dotted diagonal."""
    figure = _with_diagonal("perfectly calibrated")
    largest = max((row["count"] for rows in calibration.values() for row in rows), default=1) or 1
    for index, (name, rows) in enumerate(calibration.items()):
        filled = [row for row in rows if row["count"]]
        figure.add_scatter(
            x=[row["mean_predicted"] for row in filled],
            y=[row["observed"] for row in filled],
            customdata=[row["count"] for row in filled],
            name=html.escape(name),
            mode="lines+markers",
            marker={"size": [6 + 14 * (row["count"] / largest) ** 0.5 for row in filled]},
            line={"color": MODEL_PALETTE[index % len(MODEL_PALETTE)]},
            hovertemplate=(
                "predicted %{x:.1%}<br>observed %{y:.1%}<br>%{customdata} slices<extra></extra>"
            ),
        )
    figure.update_layout(
        xaxis={"title": "mean predicted probability", "range": [0, 1], "tickformat": ".0%"},
        yaxis={"title": "observed frequency", "range": [0, 1.02], "tickformat": ".0%"},
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def confusion_matrices(
    panels: dict[str, tuple[list[list[int]], list[str], list[str]]],
) -> go.Figure:
    """`confusion_matrix` for several models side by side, one panel per model:
    model -> (counts, true class names (rows), predicted class names (columns))."""
    from plotly.subplots import make_subplots

    names = list(panels)
    figure = make_subplots(
        rows=1,
        cols=max(1, len(names)),
        subplot_titles=[html.escape(name) for name in names],
        horizontal_spacing=0.12,
    )
    for column, name in enumerate(names, start=1):
        matrix, true_names, predicted_names = panels[name]
        figure.add_trace(
            _count_heatmap(matrix, true_names, predicted_names),
            row=1,
            col=column,
        )
        figure.update_yaxes(autorange="reversed", row=1, col=column, showticklabels=column == 1)
    rows = max((len(panel[1]) for panel in panels.values()), default=2)
    figure.update_layout(height=150 + 60 * rows, margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return figure


def _with_diagonal(name: str) -> go.Figure:
    """A new figure with the dotted y = x line a ROC curve or a reliability diagram is read
    against."""
    figure = go.Figure()
    figure.add_scatter(
        x=[0, 1],
        y=[0, 1],
        name=name,
        mode="lines",
        line={"color": OTHER_COLOUR, "dash": "dot"},
        hoverinfo="skip",
    )
    return figure


HEAT_ORDER_COLOUR = "#d62728"


def deletion_chart(curve: DeletionCurve, class_name: str) -> go.Figure:
    """The class probability as pixels are deleted, most-heated first (solid) against a random
    order (dashed): the sooner the solid line falls below the dashed one, the more faithful."""
    shares = [float(share) for share in curve.fractions]
    figure = go.Figure()
    for values, name, colour, dash in (
        (curve.heat_order, "most-heated pixels first", HEAT_ORDER_COLOUR, "solid"),
        (curve.random_order, "pixels in random order", OTHER_COLOUR, "dash"),
    ):
        figure.add_scatter(
            x=shares,
            y=[float(value) for value in values],
            name=name,
            mode="lines+markers",
            line={"color": colour, "dash": dash},
            marker={"size": 5},
            hovertemplate="%{x:.0%} deleted: %{y:.1%}<extra>" + name + "</extra>",
        )
    figure.update_layout(
        xaxis={
            "title": "share of pixels deleted",
            "range": [0, 1],
            "tickvals": [0, 0.25, 0.5, 0.75, 1],
            "tickformat": ".0%",
        },
        yaxis={
            "title": f"probability of {html.escape(class_name)}",
            "range": [0, 1.02],
            "tickformat": ".0%",
        },
        height=340,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
    )
    return figure


def sanity_chart(layers: list[str], correlations: list[float], unchanged_above: float) -> go.Figure:
    """Rank correlation with the trained model's map as layers are randomised from the output
    down; above the dotted line the map has barely changed."""
    figure = go.Figure()
    figure.add_scatter(
        x=[html.escape(layer) for layer in layers],
        y=correlations,
        mode="lines+markers",
        line={"color": HEAT_ORDER_COLOUR},
        hovertemplate="randomised down to %{x}: r = %{y:.2f}<extra></extra>",
    )
    figure.add_hline(
        y=unchanged_above,
        line_dash="dot",
        line_color=OTHER_COLOUR,
        annotation_text="barely changed above",
        annotation_position="top left",
    )
    figure.update_layout(
        xaxis={"title": "randomised from the output down to"},
        yaxis={"title": "rank correlation", "range": [-1, 1.05]},
        height=280,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        showlegend=False,
    )
    return figure


def slice_strip(
    probabilities: Sequence[float],
    flagged: Sequence[bool],
    current: int,
    class_name: str,
    positions: Sequence[float] | None = None,
) -> go.Figure:
    """One point per slice of a volume (x: slice number, feet to head; y: the probability of
    `class_name`), the slices the "is this CT?" screen flagged crossed, the slice shown
    (index `current`) marked by a vertical line, the 0.5 threshold dotted."""
    numbers = list(range(1, len(probabilities) + 1))
    values = [float(value) if np.isfinite(value) else None for value in probabilities]
    where = [f"z {z:.1f} mm" for z in positions] if positions else [""] * len(numbers)
    name = html.escape(class_name)
    figure = go.Figure()
    figure.add_scatter(
        x=numbers,
        y=values,
        customdata=where,
        name=f"P({name}) per slice",
        mode="lines+markers",
        line={"color": STRIP_COLOUR},
        marker={"size": 5},
        hovertemplate="slice %{x} %{customdata}: %{y:.1%}<extra></extra>",
    )
    marked = [i for i, flag in enumerate(flagged) if flag]
    figure.add_scatter(
        x=[numbers[i] for i in marked],
        y=[values[i] for i in marked],
        name="flagged: not like a chest CT slice",
        mode="markers",
        marker={"symbol": "x", "size": 10, "color": PREDICTED_COLOUR},
        hovertemplate="slice %{x}: flagged, left out of the summary<extra></extra>",
    )
    figure.add_vline(x=current + 1, line={"color": "#444", "width": 1})
    figure.add_hline(y=0.5, line={"color": OTHER_COLOUR, "dash": "dot", "width": 1})
    figure.update_layout(
        xaxis={"title": "slice (feet → head)", "range": [0.5, len(numbers) + 0.5]},
        yaxis={"title": f"probability of {name}", "range": [0, 1.02], "tickformat": ".0%"},
        height=280,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "x": 0, "y": -0.35, "yanchor": "top"},
    )
    return figure

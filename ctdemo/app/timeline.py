"""The attention timeline's chart: the heat inside the lungs (and on a planted marker), epoch by
epoch.

A Grad-CAM frame shows where the CNN looks; this says how much of that look falls on the lungs,
against the lungs' own share of the slice, which is what a map blind to anatomy would score.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

BLIND_LABEL = "a map blind to anatomy"


def lung_share_chart(
    epochs: Sequence[int],
    shares: Sequence[float | None],
    lung_area: float,
    marker_shares: Sequence[float | None] = (),
) -> go.Figure:
    """Each epoch's share of the attention slice's heat inside its lungs, with the lungs' area
    as a dotted reference line (an epoch without a share is left as a gap), and, for a run
    with a planted marker, the share on the marker. The axis has no title: the caption above
    the chart names it, and a title crowds the line's label."""
    figure = go.Figure()
    figure.add_scatter(
        x=list(epochs),
        y=list(shares),
        name="heat inside the lungs",
        mode="lines+markers",
        hovertemplate="epoch %{x}: %{y:.0%} of the heat inside the lungs<extra></extra>",
    )
    if any(share is not None for share in marker_shares):
        figure.add_scatter(
            x=list(epochs),
            y=list(marker_shares),
            name="heat on the marker",
            mode="lines+markers",
            line={"color": "#d62728"},
            hovertemplate="epoch %{x}: %{y:.0%} of the heat on the marker<extra></extra>",
        )
    figure.add_hline(
        y=lung_area,
        line_dash="dot",
        line_color="#888",
        annotation_text=f"lungs' area {lung_area:.0%}:<br>{BLIND_LABEL}",
        annotation_position="bottom right",
    )
    figure.update_layout(
        xaxis_title="epoch",
        yaxis={"range": [0, 1], "tickformat": ".0%"},
        height=260,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=any(share is not None for share in marker_shares),
        legend={"orientation": "h", "y": -0.3},
    )
    return figure

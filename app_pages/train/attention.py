"""Train's attention timeline: the validation slice to watch, and where the CNN looked at it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from ctdemo.app import resources
from ctdemo.app.jobs import AttentionFrame
from ctdemo.app.text import plain
from ctdemo.app.timeline import lung_share_chart
from ctdemo.app.train_settings import TrainSettings
from ctdemo.explain.overlay import blend
from ctdemo.io.folders import ArrayDataset

FRAMES_SHOWN = 12


def attention_picker(settings: TrainSettings, dataset: ArrayDataset) -> int | None:
    """The validation slice whose Grad-CAM is taken every epoch (CNNs only); None for off."""
    if not settings.is_cnn:
        st.caption("The attention timeline needs a CNN: an MLP has no convolution to read.")
        return None
    split = resources.validation_split(dataset, settings.split_spec())
    choices = list(range(min(24, len(split.val))))
    index = st.selectbox(
        "Attention timeline: watch where the CNN looks at this validation slice",
        [None, *choices],
        format_func=lambda i: "off" if i is None else split.val.files[i],
        key="attention",
    )
    if index is not None:
        st.image(split.val.x[index, ..., 0], width=96, caption=plain(split.val.files[index]))
    return index


def show_attention(
    frames: Sequence[AttentionFrame], pixels: np.ndarray, lung_area: float | None, key: str
) -> None:
    """The chosen slice with each epoch's Grad-CAM over it, and beside it how much of that
    heat falls inside the slice's lungs."""
    shown = frames[-FRAMES_SHOWN:]
    images, chart = st.columns([3, 2])
    marked = any(frame.marker_share is not None for frame in frames)
    images.caption(
        "Where the CNN looks at the chosen slice, epoch by epoch (Grad-CAM, true class)"
        + (", with the planted marker burned in" if marked else "")
    )
    images.image(
        [blend(pixels, frame.heatmap / 255.0, 0.5) for frame in shown],
        caption=[f"epoch {frame.epoch}" for frame in shown],
        width=96,
    )
    if lung_area is None:
        chart.caption("The lungs were not found on this slice: the heat inside them is not shown.")
        return
    chart.caption("Share of the heat inside the lungs, each epoch; dotted: the lungs' area")
    chart.plotly_chart(
        lung_share_chart(
            [frame.epoch for frame in frames],
            [frame.lung_share for frame in frames],
            lung_area,
            [frame.marker_share for frame in frames],
        ),
        key=f"{key}_lung_share",
        width="stretch",
    )

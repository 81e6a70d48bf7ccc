"""What the Compare page reads from disk and keeps between reruns, so the page only draws.

`held_out` lists the labelled slices no chosen model trained on; `explained_slice` reads one
slice and draws a model's explanation over it; `CompareState` is the page's one state object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ctdemo.app import resources
from ctdemo.app.classify import digest
from ctdemo.evaluation.compare import unseen_by_all
from ctdemo.explain.methods import METHOD_LABELS, to_slice_geometry
from ctdemo.explain.overlay import blend
from ctdemo.io.folders import scan_image_folder
from ctdemo.io.slices import decode_slice, read_slice_file
from ctdemo.models.cards import ModelCard

STATE = "compare_state"
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class Selection:
    """The models and slices of one comparison: what "where the models look" is asked for."""

    model_keys: tuple[str, ...]
    root: str
    files: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class CompareState:
    """The Compare page's state between reruns, under one session-state key."""

    looks_for: Selection | None = None  # the selection the visitor asked to explain


def page_state() -> CompareState:
    return st.session_state.get(STATE) or CompareState()


def update_state(**changes) -> CompareState:
    """The page state with `changes` (fields of `CompareState`), kept for the next rerun."""
    st.session_state[STATE] = dataclasses.replace(page_state(), **changes)
    return st.session_state[STATE]


@dataclass(frozen=True)
class HeldOut:
    """The slices to compare on (relative to the data's root) and how they were chosen."""

    files: tuple[str, ...]
    note: str


def held_out(root: str, cards: Mapping[str, ModelCard]) -> HeldOut:
    """The labelled slices under `root` that none of the models trained on (`DatasetError`
    when the folder holds no labelled slices)."""
    folder = scan_image_folder(root)
    unseen, note = unseen_by_all(folder, cards)
    return HeldOut(tuple(unseen.relative(path) for path in unseen.files), note)


@dataclass(frozen=True)
class ExplainedSlice:
    image: np.ndarray  # the slice with the heatmap blended over it, RGB
    method: str  # the explanation's name for a person


def explained_slice(model_key: str, root: str, file: str, predicted: str) -> ExplainedSlice:
    """The slice and the model's explanation of `predicted` (its own prediction), over it.
    Raises OSError or SliceError when the file can no longer be read, ExplanationError when
    the model cannot be explained."""
    # Only called once the models are loaded: TensorFlow is in memory by then, not at first paint.
    from ctdemo.explain.saliency import available_methods
    from ctdemo.models.inference import model_input, slices_per_batch

    data = read_slice_file(Path(root) / file)
    pixels = decode_slice(data, file).pixels
    model, card = resources.get_model(model_key)
    method = available_methods(model)[0]
    key = resources.ExplanationKey(
        model_key, digest(data), (0.0, 0.0), method, card.class_names.index(predicted)
    )
    heatmap = resources.explanation(
        key, model, model_input(pixels, card), batch_size=slices_per_batch(card)
    )
    overlay = blend(pixels, to_slice_geometry(heatmap, pixels.shape), OVERLAY_ALPHA)
    return ExplainedSlice(overlay, METHOD_LABELS[method])


def figures_html(figures: Iterable[go.Figure]) -> str:
    """Several figures in one HTML page, plotly.js included once."""
    return "\n".join(
        figure.to_html(full_html=False, include_plotlyjs=index == 0)
        for index, figure in enumerate(figures)
    )

"""Train's shortcut lab: plant a marker on one class's training slices, and the one-click lesson."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from app_pages.train.data import DEMO_OPTION
from app_pages.train.settings_form import reset_to_preset
from app_pages.train.state import update
from ctdemo.app import resources, shortcut_lab
from ctdemo.app.text import plain
from ctdemo.app.train_settings import TrainSettings
from ctdemo.config import DEMO_BUNDLE_DIR
from ctdemo.evaluation.shortcut import (
    MAX_SIZE,
    MIN_SIZE,
    Corner,
    MarkerKind,
    Shortcut,
    ShortcutError,
    ValidationMarking,
)
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.specs import PRESETS

INTRO = (
    "Many published COVID models learned a hospital's marker or a scanner's frame instead of "
    "the lungs (DeGrave et al., Nature Machine Intelligence, 2021). Plant such a marker on one "
    "class's training slices and watch what the model learns: accuracy on clean and on marked "
    "validation slices, epoch by epoch, and where its Grad-CAM falls."
)
MARKERS = {"": "none", **{kind.value: kind.value for kind in MarkerKind}}
VALIDATIONS = {
    ValidationMarking.CLEAN.value: "clean",
    ValidationMarking.MARKED.value: "marked the same way",
    ValidationMarking.FLIPPED.value: "flipped: marked on the other class",
}


def shortcut_panel(settings: TrainSettings, dataset: ArrayDataset) -> TrainSettings | None:
    """The marker's settings (off by default), its preview on a slice, and the lesson button;
    `settings` with the marker's fields, or None (and the reason) when it cannot be planted."""
    with st.expander("Plant a shortcut", expanded=bool(settings.marker)):
        st.caption(INTRO)
        st.button(
            shortcut_lab.LESSON_QUESTION,
            key="shortcut_lesson",
            help="A square on every COVID training slice of the demo set, clean validation, "
            "the page's CNN: about 20 seconds here.",
            on_click=_start_lesson,
        )
        planted = replace(settings, **_marker_inputs(dataset))
        try:
            shortcut = planted.shortcut()
        except ShortcutError as error:
            st.error(plain(error))
            return None
        if shortcut is not None:
            _preview(shortcut, dataset)
    return planted


def _marker_inputs(dataset: ArrayDataset) -> dict:
    """The marker's widgets (keys `set_marker*`, like every setting's): their values."""
    marker = st.radio(
        "Marker", list(MARKERS), format_func=MARKERS.get, key="set_marker", horizontal=True
    )
    off, frame = not marker, marker == MarkerKind.FRAME
    names = dataset.class_names
    if st.session_state.get("set_marker_class") not in names:
        st.session_state["set_marker_class"] = "COVID" if "COVID" in names else names[0]
    columns = st.columns(2)
    carrier = columns[0].selectbox(
        "Class that carries it", names, key="set_marker_class", format_func=plain, disabled=off
    )
    share = columns[1].slider(
        "Share of its training slices marked", 0.0, 1.0, step=0.05, key="set_marker_share",
        disabled=off, format="%.2f",
    )  # fmt: skip
    corner = columns[0].selectbox(
        "Where", [corner.value for corner in Corner], key="set_marker_corner", disabled=off or frame
    )
    size = columns[1].slider(
        "Size (of the slice's side)", MIN_SIZE, MAX_SIZE, step=0.05, key="set_marker_size",
        disabled=off, format="%.2f",
    )  # fmt: skip
    validation = st.radio(
        "Validation slices",
        list(VALIDATIONS),
        format_func=VALIDATIONS.get,
        key="set_marker_validation",
        disabled=off,
        horizontal=True,
    )
    return {
        "marker": marker,
        "marker_class": carrier,
        "marker_share": share,
        "marker_corner": corner,
        "marker_size": size,
        "marker_validation": validation,
    }


def _preview(shortcut: Shortcut, dataset: ArrayDataset) -> None:
    """One slice of the carrying class as the model will see it, marker and all."""
    index = shortcut_lab.first_slice_of(dataset, shortcut.carrier)
    image, text = st.columns([1, 2])
    image.image(shortcut_lab.preview(dataset.x[index, ..., 0], shortcut), width=96, clamp=True)
    text.caption(f"As the model sees it: {plain(shortcut.describe())}.")


def _start_lesson() -> None:
    """The lesson's settings on the demo set with the page's CNN, started on this rerun."""
    st.session_state["data"] = DEMO_OPTION
    if PRESETS[st.session_state.get("set_arch", "cnn")].architecture.kind != "cnn":
        st.session_state["set_arch"] = "cnn"
        reset_to_preset()
    for name, value in shortcut_lab.lesson_values().items():
        st.session_state[f"set_{name}"] = value
    spec = TrainSettings(
        split=st.session_state["set_split"],
        val=st.session_state["set_val"],
        seed=st.session_state["set_seed"],
    ).split_spec()
    demo = resources.training_arrays(str(DEMO_BUNDLE_DIR), st.session_state["set_size"])
    validation = resources.validation_split(demo, spec).val
    st.session_state["attention"] = shortcut_lab.first_slice_of(
        validation, shortcut_lab.LESSON_SHORTCUT.carrier
    )
    update(lesson=True)

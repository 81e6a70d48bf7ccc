"""Classify's inputs: the model (shipped, trained, or brought), the slices (uploaded or a sample
picked), and the DICOM window. Each helper draws its widgets and returns what was chosen."""

from __future__ import annotations

import streamlit as st

from app_pages.classify import state
from ctdemo.app import resources, samples
from ctdemo.app.text import plain
from ctdemo.io.dicom import LUNG_WINDOW, MEDIASTINUM_WINDOW, Window
from ctdemo.models.cards import ModelLoadError

WINDOW_PRESETS = {"Lung": LUNG_WINDOW, "Mediastinum": MEDIASTINUM_WINDOW}


def model_choice() -> str:
    """The key of the model chosen; a model just added (here or on Train) comes selected."""
    if "pending_model" in st.session_state:  # set by "Use this model" before the select is drawn
        st.session_state["model"] = st.session_state.pop("pending_model")
    labels = resources.model_labels()
    return st.selectbox(
        "Model",
        list(labels),
        format_func=labels.__getitem__,
        key="model",
        help="The shipped models were trained on real scans by one command (see About). "
        "Models you train on the Train page or bring below join this list.",
    )


def own_model_form() -> None:
    """Upload a Keras classifier, say what its outputs mean, and add it to the model list (it
    is then selected in `model_choice` on the rerun)."""
    file = st.file_uploader("Keras model file", type=["keras", "h5"], key="byom_file")
    st.caption(
        "Any Keras image classifier with a fixed square input of 1 or 3 channels. It is loaded "
        "in Keras safe mode after a check of its architecture: Lambda layers and custom "
        "objects are refused, because loading them would run code from the file."
    )
    if file is None:
        return
    try:
        model, info = resources.read_own_model(file.getvalue(), file.name)
    except ModelLoadError as error:
        st.error(f"This model cannot be used: {plain(error)}")
        return
    st.table(
        {
            "input": f"{info.image_size}×{info.image_size}, {info.channels} channel(s)",
            "outputs": f"{info.output_units} ({info.output_activation})",
            "last convolution": plain(info.last_conv) if info.last_conv else "none: saliency only",
            "parameters": f"{info.parameters:,}",
        }
    )
    units = max(info.output_units, 2)
    default_names = ["COVID", "non-COVID"] if units == 2 else [f"class {i}" for i in range(units)]
    names_text = st.text_input(
        "Class names, in output order, separated by commas",
        value=", ".join(default_names),
        key="byom_classes",
    )
    class_names = [name.strip() for name in names_text.split(",") if name.strip()]
    outputs = st.radio(
        "Its outputs are",
        ["probabilities", "logits"],
        index=0 if info.suggested_outputs == "probabilities" else 1,
        horizontal=True,
        key="byom_outputs",
    )
    positive = None
    if info.output_units == 1 and class_names:
        positive = st.selectbox("A high output means", class_names, key="byom_positive")
    scaled = st.radio(
        "Input range it expects",
        ["[0, 1]", "[0, 255] (it rescales internally)"],
        index=1 if info.expects_0_255 else 0,
        horizontal=True,
        key="byom_range",
    )
    if st.button("Use this model", key="byom_use", type="primary"):
        try:
            model_key = resources.add_own_model(
                model, info, class_names, outputs, positive, scaled.startswith("[0, 255]")
            )
        except ValueError as error:
            st.error(f"This model cannot be used as described: {plain(error)}")
            return
        st.session_state["pending_model"] = model_key
        st.rerun()


def uploaded_files() -> list[tuple[str, bytes]]:
    """(name, bytes) of each file uploaded: slices, or the files of a whole scan."""
    uploads = st.file_uploader(
        "CT slices: PNG, JPEG, BMP, TIFF or DICOM, one or many; or a whole scan: the DICOM "
        "files of a series (or their .zip), or a NIfTI file (.nii, .nii.gz)",
        accept_multiple_files=True,
        key="upload",
    )
    return [(upload.name, upload.getvalue()) for upload in uploads or []]


def _pick(path: str) -> None:
    state.update(picked=path)


def sample_picker() -> str | None:
    """One click on a sample scan (and, when configured, on a slice of the full dataset); the
    path of the one picked last, if any."""
    st.markdown(
        "**…or pick a sample scan**: slices of patients the shipped models never saw, "
        "captioned with their label."
    )
    columns = st.columns(3)
    for index, scan in enumerate(samples.sample_scans()):
        with columns[index % 3]:
            st.image(resources.thumbnail(str(scan.path)), caption=scan.label, width="stretch")
            st.button(
                "Classify",
                key=f"sample_{index}",
                on_click=_pick,
                args=(str(scan.path),),
                width="stretch",
            )
    choices = samples.dataset_choices()
    if choices:
        st.selectbox(
            "…or a validation slice of the configured dataset",
            [str(path) for path in choices],
            index=None,
            placeholder="choose a slice",
            format_func=samples.label,
            key="dataset_file",
            on_change=lambda: _pick(st.session_state["dataset_file"]),
        )
    return state.page_state().picked


def window_controls() -> Window:
    """Width and level sliders for DICOM slices, with the lung and mediastinal presets."""

    def apply_preset() -> None:
        preset = WINDOW_PRESETS.get(st.session_state["window_preset"])
        if preset:
            st.session_state["window_width"] = int(preset.width)
            st.session_state["window_level"] = int(preset.level)

    def custom() -> None:
        st.session_state["window_preset"] = "Custom"

    st.session_state.setdefault("window_width", int(LUNG_WINDOW.width))
    st.session_state.setdefault("window_level", int(LUNG_WINDOW.level))
    columns = st.columns([1, 2, 2])
    columns[0].radio(
        "DICOM window", [*WINDOW_PRESETS, "Custom"], key="window_preset", on_change=apply_preset
    )
    width = columns[1].slider("Width (HU)", 50, 4000, step=10, key="window_width", on_change=custom)
    level = columns[2].slider(
        "Level (HU)", -1200, 1000, step=10, key="window_level", on_change=custom
    )
    return Window(width=float(width), level=float(level))

"""Classify: upload CT slices or pick a sample, get probabilities and see where the model looks."""

from __future__ import annotations

import streamlit as st

from app_pages.classify import trust_panel
from ctdemo.app import classify, resources, samples
from ctdemo.app.charts import probability_bars
from ctdemo.app.text import plain
from ctdemo.explain.methods import METHOD_LABELS, ExplanationError
from ctdemo.explain.overlay import COLOUR_MAPS, blend, colourise, outline, png_bytes
from ctdemo.io.slices import LUNG_WINDOW, MEDIASTINUM_WINDOW, Window, is_dicom
from ctdemo.models.cards import ModelLoadError

WINDOW_PRESETS = {"Lung": LUNG_WINDOW, "Mediastinum": MEDIASTINUM_WINDOW}


def own_model_form() -> None:
    """Upload a Keras classifier, say what its outputs mean, and add it to the model list."""
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


def window_controls() -> Window:
    """Width and level sliders for DICOM slices, with the lung and mediastinal presets."""

    def apply_preset() -> None:
        preset = WINDOW_PRESETS.get(st.session_state["window_preset"])
        if preset:
            st.session_state["window_width"] = int(preset.width)
            st.session_state["window_level"] = int(preset.level)

    st.session_state.setdefault("window_width", int(LUNG_WINDOW.width))
    st.session_state.setdefault("window_level", int(LUNG_WINDOW.level))
    columns = st.columns([1, 2, 2])
    columns[0].radio(
        "DICOM window", [*WINDOW_PRESETS, "Custom"], key="window_preset", on_change=apply_preset
    )

    def custom() -> None:
        st.session_state["window_preset"] = "Custom"

    width = columns[1].slider("Width (HU)", 50, 4000, step=10, key="window_width", on_change=custom)
    level = columns[2].slider(
        "Level (HU)", -1200, 1000, step=10, key="window_level", on_change=custom
    )
    return Window(width=float(width), level=float(level))


def pick(path: str) -> None:
    st.session_state["picked"] = path


def sample_picker() -> list[tuple[str, bytes]]:
    """One click on a sample scan (and, when configured, on a slice of the full dataset)."""
    st.markdown(
        "**…or pick a sample scan**: slices of patients the shipped models never saw, "
        "captioned with their label."
    )
    columns = st.columns(3)
    for index, scan in enumerate(samples.sample_scans()):
        with columns[index % 3]:
            st.image(
                resources.thumbnail(str(scan.path)),
                caption=scan.label,
                width="stretch",
            )
            st.button(
                "Classify",
                key=f"sample_{index}",
                on_click=pick,
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
            on_change=lambda: pick(st.session_state["dataset_file"]),
        )
    picked = st.session_state.get("picked")
    return [samples.read_file(picked)] if picked else []


def show_prediction(result: classify.SliceResult, card) -> None:
    if result.out_of_distribution:
        st.warning(f"**Is this a chest CT slice? Probably not.** {result.screening.reason}")
        with st.expander("Show the model's scores anyway"):
            st.write(result.probabilities)
        return
    top = classify.format_probability(result.probabilities[result.predicted_class])
    st.subheader(f"{plain(result.predicted_class)}: {top}")
    st.plotly_chart(
        probability_bars(result.probabilities), key=f"bars_{result.digest}", width="stretch"
    )
    st.caption(f"{classify.accuracy_statement(card)} Not for diagnosis.")


def heatmap_gallery(results: list[classify.SliceResult], model_key: str, window: Window) -> None:
    """Every slice of a batch with the chosen explanation of its predicted class."""
    _, card = resources.get_model(model_key)
    shown = [result for result in results if result.ok and not result.out_of_distribution]
    method, alpha = st.session_state["method"], st.session_state["alpha"] / 100
    st.subheader(f"{METHOD_LABELS[method]} of every slice")
    if len(shown) > classify.MAX_GALLERY:
        st.caption(f"The first {classify.MAX_GALLERY} of {len(shown)} slices.")
    columns = st.columns(4)
    with st.spinner(f"Computing {METHOD_LABELS[method]} for {len(shown)} slices…"):
        for index, result in enumerate(shown[: classify.MAX_GALLERY]):
            predicted = result.predicted_class
            key = trust_panel.explained(
                result, model_key, window, method, card.class_names.index(predicted)
            )
            on_slice = trust_panel.heatmap_on_slice(result, key)
            columns[index % 4].image(
                blend(result.pixels, on_slice, alpha, st.session_state["cmap"]),
                caption=f"{plain(result.name)}: {plain(predicted)} "
                f"{classify.format_probability(result.probabilities[predicted])}",
                width="stretch",
            )


def show_results(results: list[classify.SliceResult], card, model_key: str, window: Window) -> None:
    """The batch table (several files), each file's error, and a close look at one slice."""
    good = [result for result in results if result.ok]
    if len(results) > 1:
        rows = classify.result_rows(results, card.class_names)
        st.dataframe(rows, hide_index=True, key="results_table")
        st.download_button(
            "Download the results (CSV)",
            classify.rows_to_csv(rows),
            file_name="ctdemo-results.csv",
            mime="text/csv",
            key="download_csv",
        )
    for result in results:
        if result.error:
            st.error(f"**{plain(result.name)}**: {plain(result.error)}")
    if not good:
        return
    focus = good[0]
    if len(good) > 1:
        names = [result.name for result in good]
        focus = good[names.index(st.selectbox("Look closer at", names, key="focus"))]
        st.divider()
    height, width = focus.pixels.shape
    st.markdown(f"**{plain(focus.name)}** · {focus.source_format} · {width}×{height} pixels")
    if focus.tags:
        st.table({"tag": list(focus.tags), "value": [plain(v) for v in focus.tags.values()]})
    show_prediction(focus, card)
    if not focus.out_of_distribution:
        explained = show_explanation(focus, model_key, window)
        if explained and len(good) > 1:
            heatmap_gallery(good, model_key, window)


def show_explanation(result: classify.SliceResult, model_key: str, window: Window) -> bool:
    """The chosen explanation of one slice, with its controls; False (and an error shown)
    when that method cannot explain this model."""
    model, card = resources.get_model(model_key)
    from ctdemo.explain.saliency import available_methods

    methods = available_methods(model)
    if st.session_state.get("method") not in methods:
        st.session_state["method"] = methods[0]
    columns = st.columns(4)
    method = columns[0].selectbox(
        "Explanation", methods, format_func=METHOD_LABELS.__getitem__, key="method"
    )
    class_name = columns[1].selectbox(
        "Why this class",
        card.class_names,
        key="explain_class",
        index=card.class_names.index(result.predicted_class),
    )
    colour_map = columns[2].selectbox("Colour map", list(COLOUR_MAPS), key="cmap")
    alpha = columns[3].slider("Opacity", 0, 100, 45, 5, format="%d%%", key="alpha") / 100
    choices = st.columns([3, 1], vertical_alignment="bottom")
    with choices[0]:
        layer = trust_panel.layer_choice(model, method)
    show_lungs = choices[1].toggle("Lung outline", value=True, key="lung_outline")
    key = trust_panel.explained(
        result, model_key, window, method, card.class_names.index(class_name), layer
    )
    try:
        with st.spinner(f"Computing {METHOD_LABELS[method]} and how far to trust it…"):
            report = trust_panel.report(result, key)
    except ExplanationError as error:
        st.error(plain(error))
        return False
    overlay = blend(result.pixels, report.on_slice, alpha, colour_map)
    if show_lungs and report.lungs.ok:
        overlay = outline(overlay, report.lungs.mask)
    note = classify.explanation_note(card)
    if note:
        st.caption(note)
    images = st.columns(3)
    images[0].image(result.pixels, caption="Scan", clamp=True, width="stretch")
    images[1].image(
        colourise(report.on_slice, colour_map), caption=METHOD_LABELS[method], width="stretch"
    )
    images[2].image(overlay, caption=f"Overlay ({alpha:.0%})", width="stretch")
    st.download_button(
        "Download the overlay (PNG)",
        png_bytes(overlay),
        file_name=f"{result.name.rsplit('.', 1)[0]}-{method}.png",
        mime="image/png",
        key="download_overlay",
    )
    trust_panel.trust_panel(report, class_name)
    trust_panel.sanity_panel(result, key, colour_map, alpha)
    return True


# ------------------------------------------------------------------ page
st.title("Classify a CT slice")
st.caption(classify.CAUTION)
inputs, output = st.columns([1, 2], gap="large")

with inputs:
    if "pending_model" in st.session_state:  # set by "Use this model" before the select is drawn
        st.session_state["model"] = st.session_state.pop("pending_model")
    labels = resources.model_labels()
    model_key = st.selectbox(
        "Model",
        list(labels),
        format_func=labels.__getitem__,
        key="model",
        help="The shipped models were trained on real scans by one command (see About). "
        "Models you train on the Train page or bring below join this list.",
    )
    with st.expander("Bring your own model (.keras or .h5)"):
        own_model_form()
    uploads = st.file_uploader(
        "CT slices: PNG, JPEG, BMP, TIFF or DICOM, one or many",
        accept_multiple_files=True,
        key="upload",
    )
    files = [(upload.name, upload.getvalue()) for upload in uploads or []]
    if files:
        st.caption("Remove the uploads to pick a sample scan instead.")
    else:
        files = sample_picker()

with output:
    if not files:
        st.info("Upload a slice or pick a sample scan to see what the model makes of it.")
        st.stop()
    if len(files) > classify.MAX_FILES:
        st.warning(f"{len(files)} files: the first {classify.MAX_FILES} are classified.")
        files = files[: classify.MAX_FILES]
    has_dicom = any(is_dicom(data, name) for name, data in files)
    window = window_controls() if has_dicom else LUNG_WINDOW
    results = classify.decode_files(files, window)
    model, card = resources.get_model(model_key)
    classify.predict(results, model, card)
    screening = resources.ct_screen()
    if screening is not None:
        classify.screen(results, *screening)
    show_results(results, card, model_key, window)

"""Where the model looks: one slice's explanation with its controls and trust panel, and the
same explanation over every slice of a batch. TensorFlow-side modules are imported when a model
is used, so the page paints first."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from app_pages.classify import trust_panel
from ctdemo.app import classify, resources
from ctdemo.app.text import plain
from ctdemo.explain.methods import METHOD_LABELS, ExplanationError
from ctdemo.explain.overlay import COLOUR_MAPS, blend, colourise, outline, png_bytes
from ctdemo.io.dicom import Window


@dataclass(frozen=True)
class ExplanationChoice:
    """What the visitor asked to see of one slice."""

    method: str
    class_name: str
    colour_map: str
    alpha: float  # overlay opacity in [0, 1]
    layer: str | None  # the convolution a class-activation map reads; None: the last
    lung_outline: bool


def explanation_controls(model, card, result: classify.SliceResult) -> ExplanationChoice:
    """The method, class, colour map, opacity, convolution and lung-outline widgets."""
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
    lung_outline = choices[1].toggle("Lung outline", value=True, key="lung_outline")
    return ExplanationChoice(method, class_name, colour_map, alpha, layer, lung_outline)


def show_explanation(
    result: classify.SliceResult, model_key: str, window: Window
) -> ExplanationChoice | None:
    """The chosen explanation of one slice, with its controls; None (and an error shown) when
    that method cannot explain this model."""
    model, card = resources.get_model(model_key)
    choice = explanation_controls(model, card, result)
    method, colour_map, alpha = choice.method, choice.colour_map, choice.alpha
    key = trust_panel.explained(
        result, model_key, window, method, card.class_names.index(choice.class_name), choice.layer
    )
    try:
        with st.spinner(f"Computing {METHOD_LABELS[method]} and how far to trust it…"):
            report = trust_panel.report(result, key)
    except ExplanationError as error:
        st.error(plain(error))
        return None
    overlay = blend(result.pixels, report.on_slice, alpha, colour_map)
    if choice.lung_outline and report.lungs.ok:
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
    trust_panel.trust_panel(report, choice.class_name)
    trust_panel.sanity_panel(result, key, colour_map, alpha)
    return choice


def heatmap_gallery(
    results: list[classify.SliceResult], model_key: str, window: Window, choice: ExplanationChoice
) -> None:
    """Every slice of a batch with the chosen explanation of its predicted class."""
    _, card = resources.get_model(model_key)
    shown = [result for result in results if result.ok and not result.out_of_distribution]
    label = METHOD_LABELS[choice.method]
    st.subheader(f"{label} of every slice")
    if len(shown) > classify.MAX_GALLERY:
        st.caption(f"The first {classify.MAX_GALLERY} of {len(shown)} slices.")
    columns = st.columns(4)
    with st.spinner(f"Computing {label} for {len(shown)} slices…"):
        for index, result in enumerate(shown[: classify.MAX_GALLERY]):
            predicted = result.predicted_class
            key = trust_panel.explained(
                result, model_key, window, choice.method, card.class_names.index(predicted)
            )
            on_slice = trust_panel.heatmap_on_slice(result, key)
            columns[index % 4].image(
                blend(result.pixels, on_slice, choice.alpha, choice.colour_map),
                caption=f"{plain(result.name)}: {plain(predicted)} "
                f"{classify.format_probability(result.probabilities[predicted])}",
                width="stretch",
            )

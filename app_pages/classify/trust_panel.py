"""Classify's "Can I trust this heatmap?": the lungs, the deletion curve and the sanity check
beside one slice's explanation, and the choice of which convolution a map reads.

Every number comes from the library (`ctdemo.explain.lungs`, `.faithfulness`, `.sanity`, the
`HeatmapReport` of `ctdemo.explain.trust`) through the caches in `ctdemo.app.resources`; this
module only lays them out. TensorFlow-side modules are imported when a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from app_pages.classify import state
from ctdemo.app import classify, resources
from ctdemo.app.charts import deletion_chart, sanity_chart
from ctdemo.app.resources import ExplanationKey
from ctdemo.app.text import plain
from ctdemo.explain.methods import (
    CAM_METHODS,
    METHOD_LABELS,
    ExplanationError,
    grid_label,
    to_slice_geometry,
)
from ctdemo.explain.overlay import blend
from ctdemo.io.dicom import Window

if TYPE_CHECKING:
    import keras

    from ctdemo.explain.trust import HeatmapReport

LAYER_KEY = "cam_layer"


def explained(
    result: classify.SliceResult,
    model_key: str,
    window: Window,
    method: str,
    class_index: int,
    layer: str | None = None,
) -> ExplanationKey:
    return ExplanationKey(
        model_key, result.digest, (window.width, window.level), method, class_index, layer
    )


def heatmap(result: classify.SliceResult, key: ExplanationKey) -> np.ndarray:
    """The (cached) explanation at the model's input size; `ExplanationError` when the method
    cannot explain this model."""
    from ctdemo.models.inference import model_input, slices_per_batch

    model, card = resources.get_model(key.model_key)
    return resources.explanation(
        key, model, model_input(result.pixels, card), batch_size=slices_per_batch(card)
    )


def heatmap_on_slice(result: classify.SliceResult, key: ExplanationKey) -> np.ndarray:
    """The explanation mapped onto the slice's own shape (the square padding undone)."""
    return to_slice_geometry(heatmap(result, key), result.pixels.shape)


def report(result: classify.SliceResult, key: ExplanationKey) -> HeatmapReport:
    """The explanation and its trust numbers, as `ctdemo.explain.trust.assess` computes them,
    from cached parts: the map, the lungs of the slice, the deletion curve."""
    from ctdemo.explain.trust import HeatmapReport
    from ctdemo.models.inference import model_input, slices_per_batch

    model, card = resources.get_model(key.model_key)
    at_input = heatmap(result, key)
    curve = resources.deletion(
        key, model, model_input(result.pixels, card), at_input, batch_size=slices_per_batch(card)
    )
    return HeatmapReport(
        heatmap=at_input,
        on_slice=to_slice_geometry(at_input, result.pixels.shape),
        lungs=resources.lung_mask(key.digest, key.window, result.pixels),
        faithfulness=curve,
    )


def layer_choice(model: keras.Model, method: str) -> str | None:
    """Which convolution a class-activation map reads, shown with its grid; None for the
    last convolution (and for saliency, which reads the input's pixels)."""
    from ctdemo.explain.saliency import cam_layers

    layers = cam_layers(model)
    if method not in CAM_METHODS or not layers:
        st.caption("Resolution: one value per input pixel (a gradient map).")
        return None
    names = list(layers)
    if st.session_state.get(LAYER_KEY) not in names:
        st.session_state[LAYER_KEY] = names[0]

    def describe(name: str) -> str:
        where = "last convolution" if name == names[0] else f"earlier: {name}"
        return f"{where} ({grid_label(layers[name])})"

    chosen = st.selectbox(
        "Convolution explained",
        names,
        format_func=describe,
        key=LAYER_KEY,
        disabled=len(names) == 1,
        help="The last convolution sees the most but on the coarsest grid; an earlier one is "
        "finer and sees less of the slice at once. Layer-CAM weighs each cell by its own "
        "gradient, so it differs most from Grad-CAM on an earlier convolution.",
    )
    return None if chosen == names[0] else chosen


def trust_panel(report: HeatmapReport, class_name: str) -> None:
    """The lung share and the deletion curve of the explanation shown above."""
    st.markdown("#### Can I trust this heatmap?")
    text, chart = st.columns(2, gap="medium")
    with text:
        if report.lung_share is None:
            st.warning(report.lung_sentence())
        else:
            st.markdown(f"**Lungs.** {report.lung_sentence()}")
        curve = report.faithfulness
        st.markdown(f"**Faithfulness: {curve.score:+.2f}.** {curve.sentence()}")
    with chart:
        st.plotly_chart(deletion_chart(curve, class_name), key="deletion_chart", width="stretch")
        st.caption(
            "Deletion curve: the pixels the map heats most are deleted first (solid) or in a "
            "random order (dashed), 5% at a time; a deleted pixel is replaced by a heavily "
            "blurred copy of the slice, not by black, which a CT slice would read as air."
        )


def sanity_panel(
    result: classify.SliceResult, key: ExplanationKey, colour_map: str, alpha: float
) -> None:
    """One click re-initialises a copy of the model layer by layer from the output down and
    compares the fully random model's map with the trained one's."""
    from ctdemo.explain.sanity import UNCHANGED_ABOVE, verdict
    from ctdemo.models.inference import model_input

    if st.button("Sanity check: randomise the model", key="sanity_button"):
        state.update(sanity_for=key)
    if state.page_state().sanity_for != key:
        st.caption(
            "A map that stays the same when the model's weights are random shows the image, "
            "not what the model learned (Adebayo et al., 2018)."
        )
        return
    model, card = resources.get_model(key.model_key)
    label = METHOD_LABELS[key.method]
    try:
        with st.spinner(f"Randomising the model layer by layer and explaining with {label}…"):
            steps = resources.sanity_check(key, model, model_input(result.pixels, card))
            trained = heatmap_on_slice(result, key)
    except ExplanationError as error:
        st.error(plain(error))
        return
    if not steps:
        st.info(verdict(steps))
        return
    final = steps[-1]
    st.markdown(f"**Sanity check: {final.correlation:.2f}.** {verdict(steps)}")
    columns = st.columns([1, 1, 2], vertical_alignment="center")
    columns[0].image(
        blend(result.pixels, trained, alpha, colour_map),
        caption=f"Trained model ({label})",
        width="stretch",
    )
    randomised = to_slice_geometry(final.heatmap, result.pixels.shape)
    columns[1].image(
        blend(result.pixels, randomised, alpha, colour_map),
        caption=f"Every weight random: rank correlation {final.correlation:.2f}",
        width="stretch",
    )
    layers = [step.layer for step in steps]
    columns[2].plotly_chart(
        sanity_chart(layers, [step.correlation for step in steps], UNCHANGED_ABOVE),
        key="sanity_chart",
        width="stretch",
    )

"""Classify's whole scans: each volume of an upload (a DICOM series or a NIfTI file) with a
slider through its slices, the slice's verdict and, on demand, its explanation; the per-slice
probability strip; and the patient-level summary under the named rules. Reading and caching
live in `ctdemo.app.volume`; this module only lays them out."""

from __future__ import annotations

import streamlit as st

from app_pages.classify import state
from app_pages.classify.explanation import show_explanation
from app_pages.classify.prediction import show_prediction
from ctdemo.app import classify, resources
from ctdemo.app import volume as scans
from ctdemo.app.charts import slice_strip
from ctdemo.app.text import plain
from ctdemo.evaluation.volume_summary import RULES, VolumeSummary, top_k
from ctdemo.io.dicom import LUNG_WINDOW
from ctdemo.io.volumes import Volume

SLICE_KEY = "volume_slice"
SCAN_CAUTION = (
    "Not for diagnosis. The models learned from single slices of one dataset (the SARS-CoV-2 "
    "CT-scan dataset); the strip shows how far they carry to another scan, and none of these "
    "rules has been validated on patients."
)


def show_scans(files: scans.Files, model_key: str) -> None:
    """Every volume of the upload's scan files: an error per refused series, a choice among
    several volumes, then the chosen one."""
    digest = scans.upload_digest(files)
    items = scans.read_scans(digest, files)
    for refused in scans.refused_of(items):
        st.error(
            f"**{plain(refused.name)}** was not read: {plain(refused.reason)} "
            "Upload the files of one series (or its zip), or a NIfTI file."
        )
    volumes = scans.volumes_of(items)
    if not volumes:
        return
    index = volume_choice(volumes)
    show_volume(digest, index, volumes[index], model_key)


def volume_choice(volumes: list[Volume]) -> int:
    """The index of the volume to look at: a select naming them when there are several."""
    if len(volumes) == 1:
        return 0
    return st.selectbox(
        f"{len(volumes)} scans in this upload: look at",
        range(len(volumes)),
        format_func=lambda i: volumes[i].name,
        key="scan_choice",
    )


def slice_slider(scan: str, volume: Volume) -> int:
    """The index of the slice shown; a newly shown volume starts at its middle slice."""
    if state.page_state().scan != scan or st.session_state.get(SLICE_KEY, 0) > len(volume):
        st.session_state[SLICE_KEY] = len(volume) // 2 + 1
        state.update(scan=scan)
    if len(volume) == 1:
        return 0
    number = st.slider(
        "Slice (feet → head)", 1, len(volume), key=SLICE_KEY, format=f"%d of {len(volume)}"
    )
    return number - 1


def show_volume(digest: str, index: int, volume: Volume, model_key: str) -> None:
    """One volume: what it is, the slider, the strip, the slice's verdict, the summary."""
    height, width = volume.pixels.shape[1:]
    st.markdown(
        f"**{plain(volume.name)}** · {volume.source} · {len(volume)} slices of "
        f"{width}×{height} pixels, read in the lung window"
    )
    for note in volume.notes:
        st.caption(plain(note))
    verdict = scans.classified(digest, index, model_key, volume)
    number = slice_slider(f"{digest}-{index}", volume)
    _, card = resources.get_model(model_key)
    positive = verdict.positive_class or card.class_names[0]
    st.plotly_chart(
        slice_strip(
            verdict.probabilities[:, verdict.class_names.index(positive)],
            verdict.flagged,
            number,
            positive,
            volume.positions,
        ),
        key="slice_strip",
        width="stretch",
    )
    result = scans.slice_result(digest, index, volume, verdict, number)
    picture, reading = st.columns([1, 2], gap="medium")
    picture.image(result.pixels, caption=_slice_caption(volume, number), width="stretch")
    with reading:
        if result.error:
            st.error(f"**{plain(result.name)}**: {plain(result.error)}")
        else:
            show_prediction(result, card)
    explainable = result.ok and not result.out_of_distribution
    if explainable and st.toggle("Explain this slice", key="explain_slice"):
        show_explanation(result, model_key, LUNG_WINDOW)
    show_summary(verdict.summary, positive)


def _slice_caption(volume: Volume, number: int) -> str:
    where = "" if volume.positions is None else f" · z = {volume.positions[number]:.1f} mm"
    return f"Slice {number + 1} of {len(volume)}{where}"


def show_summary(summary: VolumeSummary | None, positive: str) -> None:
    """The scan's score under each named rule, with what the rule assumes, and the caution."""
    st.subheader("The whole scan")
    if summary is None:
        st.info("This model's card names no positive class, so the scan is not summarised.")
        return
    st.caption(
        f"From the probability of {plain(positive)} on {summary.slices_used} slices"
        f"{_left_out(summary)}; the threshold is {summary.threshold:.0%}."
    )
    for rule in RULES:
        score = summary.scores[rule.name]
        value, sentence = st.columns([1, 2])
        value.markdown(
            f"**{_score_text(rule.name, score, summary)}**  \n{rule.label} (`{rule.name}`)"
        )
        sentence.markdown(rule.assumes)
    st.warning(SCAN_CAUTION)


def _left_out(summary: VolumeSummary) -> str:
    parts = []
    if summary.slices_flagged:
        parts.append(f"{summary.slices_flagged} flagged as not like a chest CT slice")
    if summary.slices_without_verdict:
        parts.append(f"{summary.slices_without_verdict} without a verdict")
    return f" ({' and '.join(parts)} left out)" if parts else ""


def _score_text(name: str, score: float | None, summary: VolumeSummary) -> str:
    if score is None:
        return "no slice left"
    if name == "fraction_above":
        return f"{score:.0%} of slices"
    if name == "top_k_mean":
        return f"{classify.format_probability(score)} (top {top_k(summary.slices_used)})"
    return classify.format_probability(score)

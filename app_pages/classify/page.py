"""Classify: upload CT slices or a whole scan, or pick a sample; get probabilities and see where
the model looks."""

from __future__ import annotations

import streamlit as st

from app_pages.classify.explanation import heatmap_gallery, show_explanation
from app_pages.classify.inputs import (
    model_choice,
    own_model_form,
    sample_picker,
    uploaded_files,
    window_controls,
)
from app_pages.classify.prediction import show_prediction
from app_pages.classify.volume import show_scans
from ctdemo.app import classify, resources, samples, volume, warmup
from ctdemo.app.text import plain
from ctdemo.io.dicom import LUNG_WINDOW, Window


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
        choice = show_explanation(focus, model_key, window)
        if choice and len(good) > 1:
            heatmap_gallery(good, model_key, window, choice)


# ------------------------------------------------------------------ page
st.title("Classify a CT slice")
st.caption(classify.CAUTION)
inputs, output = st.columns([1, 2], gap="large")

with inputs:
    model_key = model_choice()
    with st.expander("Bring your own model (.keras or .h5)"):
        own_model_form()
    files = uploaded_files()
    if files:
        st.caption("Remove the uploads to pick a sample scan instead.")
    else:
        picked = sample_picker()
        files = [samples.read_file(picked)] if picked else []

with output:
    if not files:
        st.info("Upload a slice or pick a sample scan to see what the model makes of it.")
        warmup.warm_up(model_key)  # the last thing: the page is on screen already
        st.stop()
    files, scan_files = volume.split_upload(files)
    if scan_files:
        if files:
            st.info(f"{len(files)} single slice(s) are left aside while a scan is open.")
        show_scans(scan_files, model_key)
        st.stop()
    if len(files) > classify.MAX_FILES:
        st.warning(f"{len(files)} files: the first {classify.MAX_FILES} are classified.")
        files = files[: classify.MAX_FILES]
    window = window_controls() if classify.has_dicom(files) else LUNG_WINDOW
    results = classify.decode_files(files, window)
    model, card = resources.get_model(model_key)
    classify.predict(results, model, card)
    screening = resources.ct_screen()
    if screening is not None:
        classify.screen(results, *screening)
    show_results(results, card, model_key, window)

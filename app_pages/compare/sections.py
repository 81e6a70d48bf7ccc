"""The Compare page's parts, each drawing one section of the screen and returning its choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ctdemo.app import resources
from ctdemo.app.charts import confusion_matrices, reliability_diagram, roc_overlay, run_overlay
from ctdemo.app.classify import format_probability
from ctdemo.app.compare import (
    Selection,
    explained_slice,
    figures_html,
    page_state,
    update_state,
)
from ctdemo.app.text import plain
from ctdemo.config import DEMO_BUNDLE_DIR, resolve_data_source
from ctdemo.evaluation.compare import (
    Answer,
    Comparison,
    Disagreement,
    SortBy,
    calibration,
    card_roc_curves,
    confusion_panels,
    disagreements,
    histories,
    roc_curves,
    threshold_tradeoff,
)
from ctdemo.evaluation.report import comparison_csv, display_rows, metrics_csv
from ctdemo.evaluation.table import TableRow, card_comparison
from ctdemo.explain.methods import ExplanationError
from ctdemo.io.archives import ArchiveError
from ctdemo.io.decoded import SliceError
from ctdemo.io.folders import DatasetError
from ctdemo.io.uploads import import_zip_dataset
from ctdemo.models.cards import ModelCard

MAX_DISAGREEMENTS = 8
BETTER_STYLE = "background-color: #d8f0dc; font-weight: bold"
UPLOAD = "Upload a labelled .zip of class folders"
SORT_LABELS = {
    SortBy.CONFIDENCE: "the surer model first",
    SortBy.BOTH: "both sure, still disagreeing",
    SortBy.FILE: "file order",
}


def short_name(key: str, label: str) -> str:
    return key.removeprefix(resources.SHIPPED_PREFIX) if key.startswith("shipped:") else label


def choose_data() -> str | None:
    """The labelled slices to evaluate on: the demo set, the configured data, or a zip."""
    source = resolve_data_source()
    options = {"Embedded demo set (300 validation slices)": str(DEMO_BUNDLE_DIR)}
    if source.origin != "embedded demo set":
        held_out = f"The configured dataset's held-out slices ({source.origin})"
        options[held_out] = str(source.train_dir)
    options[UPLOAD] = ""
    choice = st.radio("Evaluate on", list(options), key="compare_data")
    if options[choice]:
        return options[choice]
    upload = st.file_uploader("A .zip with one folder per class", type=["zip"], key="compare_zip")
    if upload is None:
        return None
    try:
        return str(import_zip_dataset(upload.getvalue(), resources.owner_id()).root)
    except (ArchiveError, DatasetError) as error:
        st.error(f"This zip cannot be used: {plain(error)}")
        return None


def styled(display: pd.DataFrame, better: Sequence[str | None]):
    """The table with each row's significantly better model highlighted."""
    return display.style.apply(
        lambda row: [BETTER_STYLE if column == better[row.name] else "" for column in row.index],
        axis=1,
    )


def table(rows: Sequence[dict], better: Sequence[str | None], key: str) -> None:
    display = pd.DataFrame(rows)
    height = 35 * (len(display) + 1) + 3
    st.dataframe(styled(display, better), hide_index=True, height=height, key=key)


def from_cards(cards: Mapping[str, ModelCard], why: str) -> None:
    """No readable images: compare what the cards say, and say that is what it is."""
    st.info(f"{plain(why)} So this comparison comes from the models' cards instead.")
    rows = card_comparison(cards)
    st.dataframe(display_rows(rows, list(cards)), hide_index=True, key="card_table")
    st.caption(f"These numbers are {rows[0].basis}.")
    left, right = st.columns(2)
    left.plotly_chart(roc_overlay(card_roc_curves(cards)), key="card_roc")
    right.plotly_chart(run_overlay(histories(cards), "loss"), key="card_curves")


def metrics(rows: Sequence[TableRow], names: Sequence[str]) -> None:
    st.subheader("Metrics")
    table(display_rows(rows, names), [row.better for row in rows], key="metrics_table")
    st.caption(
        "A model is called better in a row only when a paired test says so (p < 0.05): "
        "McNemar's exact test on the same slices for accuracy, sensitivity and specificity; a "
        "paired bootstrap for precision, F1 and ROC AUC."
    )


def charts(result: Comparison, cards: Mapping[str, ModelCard]) -> list[go.Figure]:
    """ROC, confusion, training curves and calibration, two by two; the figures drawn."""
    panels = (
        ("roc", "**ROC curves**", roc_overlay(roc_curves(result))),
        ("confusion", "**Confusion matrices**", confusion_matrices(confusion_panels(result))),
        (
            "curves",
            "**Training curves** (loss, from the cards)",
            run_overlay(histories(cards), "loss"),
        ),
        (
            "calibration",
            "**Calibration** (predicted probability against observed frequency)",
            reliability_diagram(calibration(result)),
        ),
    )
    columns = st.columns(2)
    for index, (key, title, figure) in enumerate(panels):
        columns[index % 2].markdown(title)
        columns[index % 2].plotly_chart(figure, key=key)
    return [figure for _, _, figure in panels]


def threshold(result: Comparison) -> None:
    st.subheader("Sensitivity against specificity")
    chosen = st.slider(
        f"Call a slice {plain(result.positive_class)} when its probability is at least",
        0.0,
        1.0,
        0.5,
        0.05,
        key="threshold",
    )
    for column, name in zip(st.columns(len(result.names)), result.names, strict=True):
        (point,) = threshold_tradeoff(result, name, [chosen])
        column.metric(f"{plain(name)}: sensitivity", f"{point.sensitivity:.1%}")
        column.metric(f"{plain(name)}: specificity", f"{point.specificity:.1%}")


def where_models_look(selection: Selection, models: dict) -> None:
    """On demand, each model's explanations scored (heat in the lungs, faithfulness), compared."""
    st.subheader("Where the models look")
    if st.button("Compare where the models look", key="compare_looks"):
        update_state(looks_for=selection)
    if page_state().looks_for != selection:
        st.caption(
            f"Each model explains its own prediction on up to {resources.LOOK_SAMPLE} of these "
            "slices (spread over the classes), and each map is scored: how much of its heat falls "
            "inside the lungs, and whether deleting its hottest pixels changes the answer "
            "sooner than deleting at random. About 40 s for the two shipped models on 2 cores."
        )
        return
    looks = resources.explanation_quality(
        selection.model_keys, selection.root, selection.files, selection.labels, models
    )
    rows = looks.rows()
    table(
        [row.flat(list(looks.models)) for row in rows], [row.better for row in rows], "looks_table"
    )
    st.caption(f"{looks.note()} Computed in {looks.seconds:.0f} s.")


def disagreement_gallery(result: Comparison, keys: Mapping[str, str], root: str) -> None:
    """The slices the first two models classify differently, each with both explanations."""
    first, second = result.names[:2]
    st.subheader(f"Where {plain(first)} and {plain(second)} disagree")
    order = st.selectbox(
        "Sort by", list(SortBy), format_func=SORT_LABELS.__getitem__, key="disagree_sort"
    )
    rows = disagreements(result, first, second, order)
    st.caption(f"{len(rows)} of {result.n} slices; the first {min(len(rows), MAX_DISAGREEMENTS)}:")
    for row in rows[:MAX_DISAGREEMENTS]:
        columns = st.columns([1, 2, 2])
        columns[0].markdown(f"**{plain(row.file)}**  \ntrue: {plain(row.truth)}")
        for column, answer in zip(columns[1:], row.answers, strict=True):
            with column:
                _explained(row, answer, keys[answer.model], root)


def _explained(row: Disagreement, answer: Answer, model_key: str, root: str) -> None:
    try:
        explained = explained_slice(model_key, root, row.file, answer.predicted)
    except (OSError, SliceError):
        st.warning(f"{plain(row.file)} can no longer be read.")
        return
    except ExplanationError as error:
        st.error(plain(error))
        return
    mark = "✓" if row.right == answer.model else "✗"
    caption = (
        f"{plain(answer.model)}: {plain(answer.predicted)} "
        f"{format_probability(answer.probability)} {mark} ({explained.method})"
    )
    st.image(explained.image, caption=caption, width=220)


def export(rows: Sequence[TableRow], result: Comparison, figures: Sequence[go.Figure]) -> None:
    st.subheader("Export")
    columns = st.columns(3)
    columns[0].download_button(
        "Metrics (CSV)", metrics_csv(rows), "ctdemo-metrics.csv", key="export_metrics"
    )
    columns[1].download_button(
        "Every slice's predictions (CSV)",
        comparison_csv(result),
        "ctdemo-predictions.csv",
        key="export_predictions",
    )
    columns[2].download_button(
        "Figures (HTML)",
        figures_html(figures),
        "ctdemo-figures.html",
        mime="text/html",
        key="export_figures",
    )

"""Train's results: what the last run learned and what to do with its model, then the runs
of this session overlaid, with the split lesson when a pair is there."""

from __future__ import annotations

import streamlit as st

from app_pages.train.attention import show_attention
from app_pages.train.progress import loss_and_accuracy
from app_pages.train.shortcut_results import shortcut_curves, shortcut_findings
from app_pages.train.state import Outcome, Submitted, update
from ctdemo.app import resources, runs
from ctdemo.app.charts import confusion_matrix, curve_columns, run_overlay
from ctdemo.app.jobs import JobStatus, LungHeat
from ctdemo.app.runs import RunRecord
from ctdemo.app.text import plain
from ctdemo.evaluation.numbers import shown
from ctdemo.models.cards import ModelCard

ENDED = {
    JobStatus.DONE: st.success,
    JobStatus.STOPPED: st.warning,
    JobStatus.FAILED: st.error,
    JobStatus.CANCELLED: st.info,
}
METRICS = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
           "roc_auc": "ROC AUC"}  # fmt: skip


def show_result(result: Outcome) -> None:
    """Why the last run ended, its curves and attention timeline; for a run with a measured
    model, its validation metrics, confusion matrix and what to do with it."""
    snapshot, settings = result.snapshot, result.run.settings
    ended = plain(snapshot.message) if snapshot.message else "Training finished."
    ENDED.get(snapshot.status, st.info)(
        f"**{snapshot.status.capitalize()}** after {snapshot.epochs_done} epochs "
        f"({snapshot.elapsed_seconds:.0f} s). {ended}"
    )
    loss_and_accuracy(snapshot, "final")
    shortcut_curves(snapshot.history, snapshot.best_epoch, "final")
    if snapshot.frames:
        frames, lung_area = snapshot.frames, snapshot.attention_lung_area
        show_attention(frames, result.run.pixels, lung_area, "final")
    card = result.card
    if result.model is None or card is None or "accuracy" not in card.validation:
        return
    st.subheader(f"Validation at epoch {card.best_epoch} ({settings.split} split)")
    validation_metrics(card)
    show_lung_heat(snapshot.lung_heat)
    shortcut_findings(result, snapshot.lung_heat)
    left, right = st.columns(2)
    left.plotly_chart(
        confusion_matrix(card.validation["confusion_matrix"], card.class_names),
        key="confusion",
        width="stretch",
    )
    with right:
        model_actions(result)


def validation_metrics(card: ModelCard) -> None:
    """Accuracy, sensitivity, specificity and ROC AUC, each with its 95% interval."""
    validation = card.validation
    names = METRICS | {"sensitivity": f"Sensitivity ({plain(card.positive_class)})"}
    for column, (key, name) in zip(st.columns(len(names)), names.items(), strict=True):
        if key in validation:
            interval = validation[key]
            low, high = shown(interval["low"], "{:.3f}"), shown(interval["high"], "{:.3f}")
            column.metric(
                name,
                shown(interval["value"], "{:.1%}" if key != "roc_auc" else "{:.3f}"),
                help=f"95% CI {low}–{high} on {validation['n']} validation slices",
            )


def show_lung_heat(heat: LungHeat | None) -> None:
    """Where the final model looks over the validation slices, against the lungs' area."""
    if heat is None:
        return
    columns = st.columns(2)
    columns[0].metric(
        "Heat inside the lungs",
        f"{heat.share.mean:.0%}",
        help=f"95% CI {heat.share.low:.0%}–{heat.share.high:.0%} on {heat.share.n} slices",
    )
    columns[1].metric(
        "Lungs' area", f"{heat.lung_area:.0%}", help="What a map blind to anatomy scores"
    )
    st.caption(heat.sentence())


def model_actions(result: Outcome) -> None:
    """Use the model on Classify, add it to Compare, download it, or train the other split."""
    run, model, card = result.run, result.model, result.card
    label = runs.run_label(run.settings)
    if st.button("Use on Classify", key="use_model", type="primary"):
        st.session_state["pending_model"] = resources.add_trained_model(
            run.job_id, label, model, card
        )
        st.switch_page("app_pages/classify/page.py")
    if st.button("Add to Compare", key="add_compare"):
        resources.add_trained_model(run.job_id, label, model, card)
        st.success("Added: it is in the model lists of Compare and Classify.")
    st.download_button(
        "Download the model and its card (.zip)",
        resources.model_bundle(run.job_id, model, card),
        file_name=f"ctdemo-{run.settings.arch}-{run.job_id}.zip",
        mime="application/zip",
        key="download_model",
    )
    st.button(
        f"Train the same with a {runs.flipped_split(run.settings).split} split",
        key="lesson",
        help="The second lesson: how much a random split of slices flatters accuracy.",
        on_click=_queue_lesson,
        args=(run,),
    )


def _queue_lesson(run: Submitted) -> None:
    """Repeat the last run with the other split: set the split widget, start on this rerun."""
    st.session_state["set_split"] = runs.flipped_split(run.settings).split
    update(lesson=True)


def show_runs(kept: tuple[RunRecord, ...]) -> None:
    """Several runs' curves overlaid, and the split lesson when a pair is there."""
    if len(kept) < 2:
        return
    st.header("Your runs")
    labels = [f"{index + 1}. {run.label}" for index, run in enumerate(kept)]
    chosen = st.multiselect("Overlay", labels, default=labels[-2:], key="overlay_runs")
    picked = [(run.label, run.history) for run in (kept[labels.index(label)] for label in chosen)]
    if picked:
        curve_columns(lambda metric: run_overlay(picked, metric), "overlay")
    pair = runs.split_pair(kept)
    if pair is None:
        return
    st.subheader("Random against grouped split")
    for column, run in zip(st.columns(2), pair, strict=True):
        accuracy = run.accuracy
        column.metric(
            f"{run.settings.split.capitalize()} split: validation accuracy",
            f"{accuracy['value']:.1%}",
            help=f"95% CI {accuracy['low']:.1%}–{accuracy['high']:.1%}",
        )
    st.markdown(runs.SPLIT_LESSON)

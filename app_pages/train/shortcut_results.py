"""Train's shortcut results: clean against marked validation, epoch by epoch, and what the
finished run learned: the sentence, the heat on the marker, and the flipped test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import streamlit as st

from app_pages.train.state import Outcome, update
from ctdemo.app import shortcut_lab
from ctdemo.app.jobs import LungHeat
from ctdemo.evaluation.shortcut import ValidationMarking

FLIPPED_HELP = (
    "Train the same again, with the marker on the other class's validation slices: a model "
    "that reads the marker now calls them by the class that carried it in training."
)


def shortcut_curves(history: Mapping[str, Sequence[float]], best_epoch: int, key: str) -> None:
    """The two curves, once a run with a planted marker has measured an epoch."""
    if history.get("clean_accuracy"):
        st.plotly_chart(
            shortcut_lab.shortcut_curves(history, best_epoch),
            key=f"{key}_shortcut_curves",
            width="stretch",
        )


def shortcut_findings(result: Outcome, lung_heat: LungHeat | None) -> None:
    """Accuracy on clean and on marked slices, heat on the marker beside heat inside the lungs,
    the sentence that names what happened, and the flipped test one click away."""
    found = shortcut_lab.findings(result.card, result.snapshot.history)
    if found is None:
        return
    st.subheader("The planted shortcut")
    columns = st.columns(4)
    columns[0].metric("Clean validation", f"{found.clean_accuracy:.0%}")
    columns[1].metric("Marked validation", f"{found.marked_accuracy:.0%}")
    if found.marker_heat is not None:
        columns[2].metric(
            "Heat on the marker",
            f"{found.marker_heat:.0%}",
            help=f"The marker is {found.marker_area:.0%} of the slice",
        )
    if lung_heat is not None:
        columns[3].metric("Heat inside the lungs", f"{lung_heat.share.mean:.0%}")
    st.markdown(f"**{found.sentence}**")
    st.caption(found.heat_text() + " " + shortcut_lab.KEPT_EPOCH_NOTE)
    settings = result.run.settings
    if settings.marker_validation != ValidationMarking.FLIPPED:
        st.button(
            "Now the flipped test: mark the other class's validation slices",
            key="shortcut_flipped",
            help=FLIPPED_HELP,
            on_click=_queue_flipped,
        )


def _queue_flipped() -> None:
    st.session_state["set_marker_validation"] = ValidationMarking.FLIPPED.value
    update(lesson=True)

"""Train's live run: where it waits or how far it has trained, its curves growing epoch by
epoch, and, once it has finished, its model and curves moved into the session."""

from __future__ import annotations

import streamlit as st

from app_pages.train.attention import show_attention
from app_pages.train.shortcut_results import shortcut_curves
from app_pages.train.state import Outcome, Submitted, page_state, update
from ctdemo.app import resources, runs
from ctdemo.app.charts import curve_columns, training_curves
from ctdemo.app.jobs import JobSnapshot, JobStatus, TrainingJob


def current_job() -> TrainingJob | None:
    """This session's latest job (None once collected, or dropped by the queue)."""
    submitted = page_state().job
    if submitted is None:
        return None
    return resources.training_queue().get(submitted.job_id, resources.owner_id())


def live_run() -> None:
    """The run's status, progress and curves: redrawn every second while a run waits or
    trains, and not at all otherwise (an idle page must not rerun, nor cost the server CPU)."""
    job = current_job()
    if job is not None and not job.finished:
        st.fragment(_live_panel, run_every=1.0)()
    elif job is not None:
        _live_panel()


def loss_and_accuracy(snapshot: JobSnapshot, key: str) -> None:
    """A run's loss and accuracy curves side by side, best epoch and early stop marked."""
    if snapshot.history:
        curve_columns(
            lambda metric: training_curves(
                snapshot.history, metric, snapshot.best_epoch, snapshot.early_stop_epoch
            ),
            key,
        )


def _live_panel() -> None:
    job, submitted = current_job(), page_state().job
    if job is None or submitted is None:
        return
    snapshot = job.snapshot()
    if snapshot.status == JobStatus.QUEUED:
        st.info(f"Waiting in line: position {snapshot.position}. One training runs at a time.")
    elif snapshot.status == JobStatus.RUNNING:
        eta = f", about {snapshot.eta_seconds:.0f} s left" if snapshot.eta_seconds else ""
        st.progress(
            snapshot.progress,
            text=f"Epoch {snapshot.epochs_done + 1} of {snapshot.epochs_total} · batch "
            f"{snapshot.batch}/{snapshot.batches or '?'} · {snapshot.elapsed_seconds:.0f} s{eta}",
        )
    loss_and_accuracy(snapshot, "live")
    shortcut_curves(snapshot.history, snapshot.best_epoch, "live")
    if snapshot.frames:
        show_attention(snapshot.frames, submitted.pixels, snapshot.attention_lung_area, "live")
    if snapshot.finished:
        _collect(job, submitted, snapshot)
        st.rerun(scope="app")


def _collect(job: TrainingJob, submitted: Submitted, snapshot: JobSnapshot) -> None:
    """Move a finished job's model, card and curves into the session and free the queue."""
    kept = page_state().runs
    if job.model is not None or snapshot.history:
        kept = runs.keep(kept, runs.record(job.id, submitted.settings, snapshot, job.card))
    update(job=None, result=Outcome(submitted, snapshot, job.model, job.card), runs=kept)
    resources.training_queue().forget(resources.owner_id())

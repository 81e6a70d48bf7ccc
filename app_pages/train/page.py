"""Train: an MLP or a CNN, live, with sliders, curves that grow epoch by epoch, and lessons."""

from __future__ import annotations

import streamlit as st

from app_pages.train.attention import attention_picker
from app_pages.train.data import data_choice, show_dataset
from app_pages.train.launch import affordable, split_ready, start_training, train_buttons
from app_pages.train.progress import current_job, live_run
from app_pages.train.results import show_result, show_runs
from app_pages.train.settings_form import settings_form, share_in_url, starting_settings
from app_pages.train.shortcut_panel import shortcut_panel
from app_pages.train.state import page_state, take_lesson, update

st.title("Train a model")
st.caption(
    "Train an MLP or a CNN on CT slices and watch it learn, epoch by epoch. The first seed "
    "project asked: did 50% dropout and early stopping make validation loss follow training "
    "loss? Try dropout 0 and 0.5 and overlay the runs. What you train stays in your session."
)
controls, panel = st.columns([1, 2], gap="large")

with controls:
    root = data_choice()
    settings = settings_form(starting_settings(page_state().saved))
    dataset = show_dataset(root, settings.size) if root and settings else None
    if dataset is not None:
        settings = shortcut_panel(settings, dataset)
        dataset = dataset if settings is not None else None
    if settings is not None:
        share_in_url(settings)
        update(saved=settings)
    ready = dataset is not None and affordable(settings, dataset) and split_ready(settings, dataset)
    attention = attention_picker(settings, dataset) if ready else None
    job = current_job()
    busy = job is not None and not job.finished
    train, stop = train_buttons(ready, busy)
    if stop:
        job.stop()
    if ready and not busy and (train or take_lesson()):
        start_training(settings, dataset, attention)

with panel:
    live_run()
    result = page_state().result
    if result is not None and current_job() is None:
        show_result(result)
    show_runs(page_state().runs)

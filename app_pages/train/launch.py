"""Train's way from settings to a run: what they cost, whether their split can be made, the
Train and Stop buttons, and putting the run in the server's queue."""

from __future__ import annotations

import streamlit as st

from app_pages.train.state import Submitted, update
from ctdemo.app import resources, runs, shortcut_lab
from ctdemo.app.queue import QueueFull
from ctdemo.app.text import plain
from ctdemo.app.train_settings import TrainSettings
from ctdemo.io.folders import ArrayDataset, DatasetError
from ctdemo.models import training_cost
from ctdemo.models.specs import duration
from ctdemo.models.training_cost import SHARED_SERVER, TooCostly, memory_text


def affordable(settings: TrainSettings, dataset: ArrayDataset) -> bool:
    """Parameters, memory and a rough time, counted before anything is built; an error and
    False for settings past what one training may cost on this server."""
    classes, planted = len(dataset.class_names), settings.shortcut() is not None
    cost = training_cost.estimate(settings.config(), len(dataset), classes, settings.val, planted)
    st.caption(
        f"**{cost.parameters:,} parameters** · about {memory_text(cost.memory_bytes)} of memory "
        f"· about {cost.seconds_per_epoch:.1f} s per epoch on this server "
        f"({cost.train_slices} training slices), up to {duration(cost.seconds)} in all."
    )
    try:
        training_cost.check_cost(cost, SHARED_SERVER)
    except TooCostly as error:
        st.error(str(error))
        return False
    return True


def split_ready(settings: TrainSettings, dataset: ArrayDataset) -> bool:
    """Whether the run's validation split can be made; if not (a class too small to put on
    both sides), the reason is shown and Train stays off."""
    try:
        resources.validation_split(dataset, settings.split_spec())
    except DatasetError as error:
        st.error(plain(error))
        return False
    return True


def train_buttons(ready: bool, busy: bool) -> tuple[bool, bool]:
    """Train (on while nothing of this session trains) and Stop: whether each was pressed."""
    left, right = st.columns(2)
    train = left.button(
        "Train", key="train", type="primary", disabled=not ready or busy, width="stretch"
    )
    stop = right.button("Stop", key="stop", disabled=not busy, width="stretch")
    return train, stop


def start_training(settings: TrainSettings, dataset: ArrayDataset, attention: int | None) -> None:
    """Put the run in the queue and remember it, or say why the queue refused it."""
    shortcut = settings.shortcut()
    try:
        job = resources.training_queue().submit(
            resources.owner_id(),
            dataset,
            settings.config(),
            settings.split_spec(),
            name=runs.run_label(settings),
            attention_slice=attention,
            shortcut=shortcut,
        )
    except (QueueFull, ValueError) as error:
        st.error(plain(error))
        return
    pixels = None
    if attention is not None:
        pixels = resources.validation_split(dataset, settings.split_spec()).val.x[attention, ..., 0]
        pixels = shortcut_lab.preview(pixels, shortcut) if shortcut is not None else pixels
    update(job=Submitted(job.id, settings, pixels))
    st.rerun()  # redraw the buttons: Train off, Stop on

"""The Train page's state in the session: one frozen object under one key, replaced, not mutated.

The widgets keep their own values under their keys (`set_dropout`, ...); this holds what the
page itself remembers between reruns and between visits to other pages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from ctdemo.app.jobs import JobSnapshot
from ctdemo.app.runs import RunRecord
from ctdemo.app.train_settings import TrainSettings
from ctdemo.models.cards import ModelCard

if TYPE_CHECKING:
    import keras

KEY = "train_page"


@dataclass(frozen=True)
class Submitted:
    """A training this session put in the queue."""

    job_id: str
    settings: TrainSettings
    pixels: np.ndarray | None  # the attention slice's grey pixels, its frames drawn over them


@dataclass(frozen=True)
class Outcome:
    """What a finished run left: its last snapshot, and its model and card if it has them."""

    run: Submitted
    snapshot: JobSnapshot
    model: keras.Model | None
    card: ModelCard | None


@dataclass(frozen=True)
class TrainPage:
    saved: TrainSettings | None = None  # the last settings: widgets lose theirs on other pages
    job: Submitted | None = None  # this session's latest training, until it is collected
    result: Outcome | None = None  # the last finished run
    runs: tuple[RunRecord, ...] = ()  # curves kept to overlay
    lesson: bool = False  # start the last run again, with the other split, on this rerun


def page_state() -> TrainPage:
    return st.session_state.get(KEY) or TrainPage()


def update(**changes) -> TrainPage:
    """Replace the page's state with these fields changed; returns the new state."""
    state = replace(page_state(), **changes)
    st.session_state[KEY] = state
    return state


def take_lesson() -> bool:
    """Whether the split lesson asked for a run on this rerun (asked once)."""
    if not page_state().lesson:
        return False
    update(lesson=False)
    return True

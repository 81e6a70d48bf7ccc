"""The Classify page's state in the session: one frozen object under one key, replaced, not
mutated. The widgets keep their own values under their keys (`model`, `method`, `alpha`, ...);
`pending_model` stays a key of its own, because the Train page sets it too."""

from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from ctdemo.app.resources import ExplanationKey

KEY = "classify_page"


@dataclass(frozen=True)
class ClassifyPage:
    picked: str | None = None  # the sample (or dataset slice) clicked, shown while no upload
    sanity_for: ExplanationKey | None = None  # the explanation a sanity check was asked for
    scan: str | None = None  # the volume shown ("digest-index"): its slider starts mid-scan


def page_state() -> ClassifyPage:
    return st.session_state.get(KEY) or ClassifyPage()


def update(**changes) -> ClassifyPage:
    """Replace the page's state with these fields changed; returns the new state."""
    state = replace(page_state(), **changes)
    st.session_state[KEY] = state
    return state

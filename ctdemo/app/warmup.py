"""Warm up what a first classification needs while the visitor reads the Classify page.

On a fresh server the first verdict waited about 8 s after the click (`benchmarks/budget.py`):
TensorFlow's import, loading the model and tracing its functions. The Classify page calls
`warm_up` after it has laid out everything (Streamlit sends each element as the script makes
it, so the page is already on screen), in the script thread: TensorFlow imported from a
second thread was not safe. A click during the warm-up waits for the step in progress, then
reruns the page at once: between steps the warm-up passes Streamlit a placeholder, and that
is where a rerun or a page switch interrupts a running script. Once per server and model; a
warm-up that was interrupted is finished by the next visit.

The slice it classifies and explains is a phantom drawn here (a body with two lungs), so no
visitor's answer is cached by it: only the model, the "is this CT?" screen and the traced
TensorFlow functions of prediction, the default explanation and the deletion curve stay warm.
"""

from __future__ import annotations

import gc
import sys
import time

import cv2
import numpy as np
import streamlit as st

from ctdemo.app import resources
from ctdemo.config import warm_up_enabled

PHANTOM_SIDE = 256
PAINT_GRACE_S = 0.5
"""How long the warm-up lets the server send the page first: TensorFlow's import holds the
GIL for seconds, and the server's event loop needs it to send the page's elements (on this
2-core machine, with the browser beside it, the first paint came 0.5-1 s later without it)."""


def phantom_slice(side: int = PHANTOM_SIDE) -> np.ndarray:
    """A grey (side, side) slice in [0, 1]: a bright body with two dark lungs in black."""
    image = np.zeros((side, side), dtype=np.float32)
    centre, half = side // 2, side // 2
    cv2.ellipse(image, (centre, centre), (int(half * 0.9), int(half * 0.7)), 0, 0, 360, 0.7, -1)
    for offset in (-1, 1):
        lung = (centre + offset * side // 5, centre)
        cv2.ellipse(image, lung, (side // 8, side // 4), 0, 0, 360, 0.1, -1)
    return image


def warm_up(model_key: str) -> None:
    """Make the first click on `model_key` fast; a model of this session is warm already.
    Off with CTDEMO_WARM_UP=0."""
    if not model_key.startswith(resources.SHIPPED_PREFIX) or not warm_up_enabled():
        return
    checkpoint = st.empty()
    if "tensorflow" not in sys.modules:  # the first visit to a fresh server
        time.sleep(PAINT_GRACE_S)
    for step in (_load_model, _trace_the_verdict, _trace_the_explanation):
        checkpoint.empty()  # a rerun asked for during the last step happens here
        step(model_key)


@st.cache_resource(show_spinner=False)
def _load_model(model_key: str) -> None:
    resources.get_model(model_key)  # TensorFlow's import, on a fresh server
    freeze_what_is_loaded()  # also when a click interrupts what follows


@st.cache_resource(show_spinner=False)
def _trace_the_verdict(model_key: str) -> None:
    """Classify and screen the phantom as the page would, by the same functions."""
    from ctdemo.app.classify import SliceResult, predict, screen

    model, card = resources.get_model(model_key)
    result = SliceResult(name="phantom", digest="phantom", pixels=phantom_slice())
    predict([result], model, card)
    screening = resources.ct_screen()
    if screening is not None:
        screen([result], *screening)


@st.cache_resource(show_spinner=False)
def _trace_the_explanation(model_key: str) -> None:
    """The phantom's default explanation, its deletion curve and its lungs."""
    from ctdemo.explain.faithfulness import deletion_curve
    from ctdemo.explain.lungs import segment_lungs
    from ctdemo.explain.saliency import available_methods, explain
    from ctdemo.models.inference import model_input, probabilities, slices_per_batch

    model, card = resources.get_model(model_key)
    phantom = phantom_slice()
    x = model_input(phantom, card)
    batch = slices_per_batch(card)
    heatmap = explain(model, x, available_methods(model)[0], 0, batch)

    def first_class(images: np.ndarray) -> np.ndarray:
        return probabilities(model, images, batch)[:, 0]

    deletion_curve(first_class, x, heatmap)
    segment_lungs(phantom)
    freeze_what_is_loaded()  # the explainers' modules and traces too


def freeze_what_is_loaded() -> None:
    """Leave what is loaded by now out of every later garbage collection (`gc.freeze`).

    Streamlit collects all generations after each script run (`runner.postScriptGC`): with
    TensorFlow and a model loaded that is about 430,000 objects and 0.25-0.3 s here, on every
    rerun of every visitor, while the server's event loop waits for the GIL. Frozen, the
    modules and models stay (they do anyway) and a collection takes microseconds; objects made
    later are collected as before. No collection first: it would cost the same 0.3 s on the
    way to a waiting click, to free the little garbage an import leaves. Called only from the
    cached steps, so once or twice per server and model: a frozen object is never collected,
    and freezing on every visit would make other visitors' garbage of that moment immortal."""
    gc.freeze()

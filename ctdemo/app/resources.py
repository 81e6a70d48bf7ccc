"""Cached loaders shared by the pages: the one ctdemo module that knows Streamlit.

Shipped models load once per server process (`st.cache_resource`); explanations are cached by
what they depend on (model, slice, window, method, class), with a bound and a time-to-live so
a public server's memory does not grow with its visitors. Models a visitor trains or uploads
live in that visitor's session only.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from ctdemo.app.catalog import shipped_cards
from ctdemo.config import WEIGHTS_DIR
from ctdemo.models.cards import ModelCard

if TYPE_CHECKING:
    import keras

    from ctdemo.app.queue import TrainingQueue
    from ctdemo.evaluation.compare import Comparison
    from ctdemo.evaluation.splits import SplitData, SplitSpec
    from ctdemo.explain.faithfulness import DeletionCurve
    from ctdemo.explain.lungs import LungMask
    from ctdemo.explain.ood import OODDetector
    from ctdemo.explain.quality import ExplanationComparison
    from ctdemo.explain.sanity import RandomisationStep
    from ctdemo.io.folders import ArrayDataset
    from ctdemo.models.uploaded.describe import UploadedModelInfo


def _close_matplotlib_figures() -> None:
    """What Streamlit cleans after each script run, less `keras.backend.clear_session()`."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def keep_keras_state_between_runs() -> None:
    """Stop Streamlit clearing Keras after every script run of every session.

    Streamlit 1.67's `_clean_problem_modules` resets the default graph, empties TensorFlow's
    kernel cache and collects garbage after each run, while a training runs in the queue's
    thread: with two Train pages polling once a second and one visitor classifying, a 2-epoch
    training sat at its first batch for over a minute (benchmarks/load.py); without the clear
    it took 10 s. Our models live in st.cache_resource and session state, not in Keras's
    global state, so there is nothing to clear. A private name: tests/test_script_runner.py
    fails if Streamlit renames it."""
    if hasattr(script_runner, "_clean_problem_modules"):  # looked up by name after each run
        script_runner._clean_problem_modules = _close_matplotlib_figures


SESSION_MODELS = "session_models"
SHIPPED_PREFIX = "shipped:"
OWN_PREFIX = "own:"
TRAINED_PREFIX = "trained:"
MAX_TRAINED_MODELS = 3
OWNER = "owner_id"
SPLIT_CACHE = "validation_split"
SCREENING_MODEL = "cnn"
THUMBNAIL_SIDE = 160
OWN_MODEL_FILE = "own_model_file"
EXPLANATION_BATCH = 20  # copies of a slice explained at once (SmoothGrad's samples)


@dataclass
class SessionModel:
    """A model trained or uploaded in this browser session."""

    label: str
    model: keras.Model
    card: ModelCard


@st.cache_resource(show_spinner="Loading TensorFlow and the model (once per server)…")
def shipped_model(name: str) -> tuple[keras.Model, ModelCard]:
    from ctdemo.models.saving import load_model

    return load_model(WEIGHTS_DIR / f"{name}.keras")


@st.cache_resource(show_spinner=False)
def ct_screen() -> tuple[keras.Model, OODDetector, int] | None:
    """The shipped CNN's "is this a chest CT slice?" check, used whatever model classifies:
    its features separate CT from other images, an MLP's do not (see `ctdemo.explain.ood`).
    (feature extractor, detector, input size), or None when no detector ships."""
    from ctdemo.explain.ood_model import feature_extractor, load_detector

    if not (WEIGHTS_DIR / f"{SCREENING_MODEL}.keras").is_file():
        return None
    model, card = shipped_model(SCREENING_MODEL)
    detector = load_detector(WEIGHTS_DIR / f"{SCREENING_MODEL}.keras", model)
    if detector is None:
        return None
    return feature_extractor(model, detector.layer), detector, card.image_size


@st.cache_data(show_spinner=False)
def shipped_labels() -> dict[str, str]:
    """Model key → label for the shipped models, from their cards (no TensorFlow)."""
    labels = {}
    for name, card in shipped_cards().items():
        labels[SHIPPED_PREFIX + name] = f"Shipped {card.kind} ({name}, {card.image_size} px)"
    return labels


def session_models() -> dict[str, SessionModel]:
    return st.session_state.setdefault(SESSION_MODELS, {})


def add_session_model(key: str, entry: SessionModel) -> None:
    session_models()[key] = entry


def model_labels() -> dict[str, str]:
    """Every model this visitor can use: shipped ones first, then this session's."""
    labels = dict(shipped_labels())
    labels.update({key: entry.label for key, entry in session_models().items()})
    return labels


def get_model(key: str) -> tuple[keras.Model, ModelCard]:
    if key.startswith(SHIPPED_PREFIX):
        return shipped_model(key.removeprefix(SHIPPED_PREFIX))
    entry = session_models()[key]
    return entry.model, entry.card


def read_own_model(data: bytes, filename: str) -> tuple[keras.Model, UploadedModelInfo]:
    """An uploaded model, read once per session and file (reruns reuse it)."""
    from ctdemo.models.uploaded.load import read_uploaded_model

    file_digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    held = st.session_state.get(OWN_MODEL_FILE)
    if held is None or held[0] != file_digest:
        st.session_state.pop(OWN_MODEL_FILE, None)  # one upload held at a time
        st.session_state[OWN_MODEL_FILE] = (file_digest, *read_uploaded_model(data, filename))
    _, model, info = st.session_state[OWN_MODEL_FILE]
    return model, info


def add_own_model(
    model: keras.Model,
    info: UploadedModelInfo,
    class_names: list[str],
    outputs: str,
    positive_class: str | None,
    input_range_0_255: bool,
) -> str:
    """Adapt an uploaded model and make it this session's one own model; returns its key."""
    from ctdemo.models.uploaded.adapt import adapt_uploaded_model

    adapted, card = adapt_uploaded_model(
        model, info, class_names, outputs, positive_class, input_range_0_255, info.filename
    )
    models = session_models()
    for key in [key for key in models if key.startswith(OWN_PREFIX)]:
        del models[key]
    key = OWN_PREFIX + st.session_state[OWN_MODEL_FILE][0][:12]
    models[key] = SessionModel(f"Your model ({info.filename})", adapted, card)
    return key


@st.cache_data(max_entries=64, show_spinner=False)
def thumbnail(path: str, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A sample scan as an 8-bit square thumbnail (padded, not squashed): a tidy gallery."""
    from ctdemo.io.slices import decode_slice, to_model_input

    pixels = decode_slice(Path(path).read_bytes(), path).pixels
    return np.round(to_model_input(pixels, side)[..., 0] * 255).astype(np.uint8)


@dataclass(frozen=True)
class ExplanationKey:
    """What one explanation of one slice depends on: the key of every cache below that holds a
    part of it (Streamlit hashes a dataclass by its fields)."""

    model_key: str
    digest: str  # of the slice's file
    window: tuple[float, float]  # the DICOM window it was decoded with; (0, 0) for pictures
    method: str
    class_index: int
    layer: str | None = None  # the convolution a class-activation map reads; None: the last


@st.cache_data(max_entries=256, ttl=3600, show_spinner=False)
def explanation(
    key: ExplanationKey,
    _model: keras.Model,
    _image: np.ndarray,
    batch_size: int = EXPLANATION_BATCH,
) -> np.ndarray:
    """Heatmap at the model's input size, computed `batch_size` copies of the slice at a time;
    `_model` and `_image` are identified by `key` (the leading underscore tells Streamlit not to
    hash them)."""
    from ctdemo.explain.saliency import explain

    return explain(_model, _image, key.method, key.class_index, batch_size, key.layer)


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def lung_mask(slice_digest: str, window: tuple[float, float], _pixels: np.ndarray) -> LungMask:
    """The lungs of one decoded slice (10-30 ms), identified by its digest and window; few
    entries, since a mask is as large as its slice."""
    from ctdemo.explain.lungs import segment_lungs

    return segment_lungs(_pixels)


@st.cache_data(max_entries=256, ttl=3600, show_spinner=False)
def deletion(
    key: ExplanationKey,
    _model: keras.Model,
    _image: np.ndarray,
    _heatmap: np.ndarray,
    batch_size: int = EXPLANATION_BATCH,
) -> DeletionCurve:
    """The deletion curve of one explanation: 42 copies of the slice through the model,
    `batch_size` at a time, and 42 numbers kept."""
    from ctdemo.explain.faithfulness import deletion_curve
    from ctdemo.models.inference import probabilities

    return deletion_curve(
        lambda batch: probabilities(_model, batch, batch_size)[:, key.class_index],
        _image,
        _heatmap,
    )


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def sanity_check(
    key: ExplanationKey, _model: keras.Model, _image: np.ndarray
) -> list[RandomisationStep]:
    """Cascading randomisation of a clone of the model on one slice (one explanation per
    weighted layer: a few seconds for Grad-CAM on the shipped CNN)."""
    from ctdemo.explain.sanity import cascading_randomisation

    return cascading_randomisation(_model, _image, key.method, key.class_index, layer=key.layer)


def owner_id() -> str:
    """This browser session's id: it owns its trainings and uploads, and nobody else's."""
    return st.session_state.setdefault(OWNER, uuid.uuid4().hex)


@st.cache_resource(show_spinner=False)
def training_queue() -> TrainingQueue:
    """The one training queue of this server process (one training at a time)."""
    from ctdemo.app.queue import default_queue

    return default_queue()


@st.cache_resource(max_entries=6, ttl=3600, show_spinner="Decoding the slices (once per size)…")
def training_arrays(root: str, size: int) -> ArrayDataset:
    """A dataset's decoded slices at `size`, shared by every session (read-only), with a
    bound on how many sizes and datasets one process holds."""
    from ctdemo.io.folders import load_arrays

    return load_arrays(Path(root), size)


def add_trained_model(job_id: str, label: str, model: keras.Model, card: ModelCard) -> str:
    """Put a model trained in this session in its model list (Classify, Compare); the oldest
    trained ones go beyond MAX_TRAINED_MODELS. Returns its key."""
    models = session_models()
    key = TRAINED_PREFIX + job_id
    models[key] = SessionModel(f"Trained: {label}", model, card)
    trained = [existing for existing in models if existing.startswith(TRAINED_PREFIX)]
    for old in trained[:-MAX_TRAINED_MODELS]:
        del models[old]
    return key


def validation_split(dataset: ArrayDataset, spec: SplitSpec) -> SplitData:
    """The split a training on `dataset` will use, kept for this session's last request."""
    from ctdemo.evaluation.splits import make_split as split_of

    key = (id(dataset), spec)
    held = st.session_state.get(SPLIT_CACHE)
    if held is None or held[0] != key:
        st.session_state[SPLIT_CACHE] = (key, split_of(dataset, spec))
    return st.session_state[SPLIT_CACHE][1]


@st.cache_data(max_entries=4, ttl=600, show_spinner="Packing the model…")
def model_bundle(job_id: str, _model: keras.Model, _card: ModelCard) -> bytes:
    """The trained model and its card as a zip, made once per run."""
    from ctdemo.models.saving import model_bundle as bundle

    return bundle(_model, _card)


@st.cache_data(max_entries=8, ttl=3600, show_spinner="Evaluating the models on the same slices…")
def comparison(
    model_keys: tuple[str, ...], root: str, files: tuple[str, ...], _models: dict
) -> Comparison:
    """Every chosen model on the same slices, computed once per (models, slices): the keys
    identify `_models` (not hashed)."""
    from ctdemo.io.folders import scan_image_folder
    from ctdemo.models.evaluate import evaluate_models

    folder = scan_image_folder(root)
    keep = set(files)
    chosen = [i for i, path in enumerate(folder.files) if folder.relative(path) in keep]
    folder.files = [folder.files[i] for i in chosen]
    folder.labels = folder.labels[chosen]
    model_files = {  # shipped models are named by their file's stem on the page
        key.removeprefix(SHIPPED_PREFIX): WEIGHTS_DIR / f"{key.removeprefix(SHIPPED_PREFIX)}.keras"
        for key in model_keys
        if key.startswith(SHIPPED_PREFIX)
    }
    return evaluate_models(_models, folder, model_files=model_files)


LOOK_SAMPLE = 60
"""Slices every model explains for Compare's "where the models look": about 40 s for the two
shipped models on 2 cores."""


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def explanation_quality(
    model_keys: tuple[str, ...],
    root: str,
    files: tuple[str, ...],
    labels: tuple[str, ...],
    _models: dict,
) -> ExplanationComparison:
    """Each model's explanations on a sample of the compared slices, once per (models, slices):
    the keys identify `_models` (not hashed). A progress bar counts the slices: each update is
    also where a click interrupts the pass (it is not cached then), so the page never freezes
    for its 40 s; the bar is emptied at the end, so a cached answer shows none."""
    from ctdemo.explain import quality

    sample = [files[i] for i in quality.spread_sample(labels, LOOK_SAMPLE)]
    bar = st.progress(0.0, text=f"Explaining {len(sample)} slices with every model…")

    def on_slice(done: int) -> None:
        bar.progress(done / max(1, len(sample)), text=f"Explained {done} of {len(sample)} slices…")

    looks = quality.compare_explanations(_models, quality.read_slices(root, sample), on_slice)
    bar.empty()
    return looks

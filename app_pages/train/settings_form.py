"""Train's settings form: every hyper-parameter, from a shared URL or the last visit."""

from __future__ import annotations

import dataclasses

import streamlit as st

from ctdemo.app import train_settings
from ctdemo.app.train_settings import TrainSettings
from ctdemo.evaluation.splits import SPLIT_METHODS
from ctdemo.models.specs import PRESETS

SPLIT_HELP = (
    "Grouped keeps whole patients (blocks of 25 consecutive file numbers) on one side, as a "
    "new patient would be; random scatters each patient's slices over both sides and flatters "
    "the validation accuracy."
)
MEMBERS_HELP = (
    "Train this many copies of the CNN side by side, each from its own random start and on its "
    "own loss, and average their logits. The curves are the average's; runs of one model jump "
    "from epoch to epoch more than the average does. Each member adds one model's time."
)
DENSITY_HELP = (
    "Besides the convolutions' pooled features, give the dense head the slice's sorted "
    "brightness and edge strengths (what the MLP reads). Per-image scaling hides how dense a "
    "slice is from the convolutions; the shipped CNN gained about a point on each of three "
    "patient splits from this. Grad-CAM still shows only the convolutions' part."
)


def starting_settings(saved: TrainSettings | None) -> TrainSettings:
    """What the form starts from: its widgets' own state, else the settings of the last visit
    (Streamlit drops the widgets' state on another page), else the URL's on a first visit."""
    if "set_arch" in st.session_state:
        return train_settings.defaults()
    if saved is not None:
        return saved
    return train_settings.from_query(st.query_params.to_dict())


def share_in_url(settings: TrainSettings) -> None:
    """The settings in the address bar, for a teacher to hand out."""
    if st.query_params.to_dict() != settings.to_query():  # no URL message when unchanged
        st.query_params.from_dict(settings.to_query())


def settings_form(start: TrainSettings) -> TrainSettings | None:
    """Every hyper-parameter, each with a stable key, starting from `start`; None (and the
    reason shown) for layer sizes that do not parse.

    Session state holds the values; each widget is also given its current value as its
    default. The browser falls back to a widget's default when it re-creates the widget
    (seen in Chromium after a zip upload): without this, the settings jumped to the first
    option of each widget (learning rate 1e-4, no filters)."""
    for name, value in _widget_values(start).items():
        st.session_state.setdefault(f"set_{name}", value)
    now = {key: st.session_state[key] for key in st.session_state if str(key).startswith("set_")}
    chosen = _model_inputs(now)
    cnn = PRESETS[chosen["arch"]].architecture.kind == "cnn"
    chosen |= _layer_inputs(now, cnn) | _split_inputs(now)
    try:
        layers = train_settings.parse_units(chosen["layers"])
        dense = train_settings.parse_units(chosen["dense"], allow_empty=True) if cnn else ()
    except ValueError as error:
        st.error(str(error))
        return None
    cnn_only = {
        "members": int(chosen["members"]) if cnn else 1,
        "density": chosen["density"] and cnn,
    }
    return TrainSettings(**chosen | cnn_only | {"layers": layers, "dense": dense})


def _index(options: tuple | list, value: object) -> int:
    return list(options).index(value) if value in options else 0


def _model_inputs(now: dict) -> dict:
    """Architecture, dropout, epochs, learning rate, batch and image size."""
    arch = st.selectbox(
        "Architecture",
        train_settings.ARCHITECTURES,
        index=_index(train_settings.ARCHITECTURES, now["set_arch"]),
        key="set_arch",
        on_change=reset_to_preset,
    )
    st.caption(PRESETS[arch].description)
    dropout = st.slider("Dropout", 0.0, 0.8, now["set_dropout"], step=0.05, key="set_dropout")
    epochs = st.slider("Epochs", 1, train_settings.MAX_EPOCHS, now["set_epochs"], key="set_epochs")
    columns = st.columns(3)
    lr = columns[0].select_slider(
        "Learning rate",
        train_settings.LEARNING_RATES,
        now["set_lr"],
        key="set_lr",
        format_func="{:g}".format,
    )
    batch = columns[1].selectbox(
        "Batch size",
        train_settings.BATCH_SIZES,
        _index(train_settings.BATCH_SIZES, now["set_batch"]),
        key="set_batch",
    )
    size = columns[2].selectbox(
        "Image size",
        train_settings.IMAGE_SIZES,
        _index(train_settings.IMAGE_SIZES, now["set_size"]),
        key="set_size",
    )
    return {"arch": arch, "dropout": dropout, "epochs": epochs, "lr": lr, "batch": batch,
            "size": size}  # fmt: skip


def _layer_inputs(now: dict, cnn: bool) -> dict:
    """Layer sizes (as typed), ensemble members, early stopping, augmentation, density."""
    columns = st.columns(3)
    layers = columns[0].text_input(
        "Filters per block" if cnn else "Hidden units per layer",
        now["set_layers"],
        key="set_layers",
    )
    dense = columns[1].text_input(
        "Dense head units", now["set_dense"], key="set_dense", disabled=not cnn
    )
    members = columns[2].number_input(
        "Ensemble members",
        1,
        train_settings.MAX_MEMBERS,
        now["set_members"],
        1,
        key="set_members",
        disabled=not cnn,
        help=MEMBERS_HELP,
    )
    columns = st.columns(2)
    early = columns[0].checkbox("Early stopping", now["set_early"], key="set_early")
    augment = columns[0].checkbox("Augmentation", now["set_augment"], key="set_augment")
    density = columns[0].checkbox(
        "Show the head the slice's density",
        now["set_density"],
        key="set_density",
        disabled=not cnn,
        help=DENSITY_HELP,
    )
    patience = columns[1].slider(
        "Patience", 1, 20, now["set_patience"], key="set_patience", disabled=not early
    )
    return {"layers": layers, "dense": dense, "members": members, "early": early,
            "augment": augment, "patience": patience, "density": density}  # fmt: skip


def _split_inputs(now: dict) -> dict:
    """How the slices are split into training and validation, and the seed."""
    columns = st.columns(3)
    split = columns[0].radio(
        "Split",
        SPLIT_METHODS,
        _index(SPLIT_METHODS, now["set_split"]),
        key="set_split",
        help=SPLIT_HELP,
    )
    val = columns[1].slider("Validation fraction", 0.1, 0.4, now["set_val"], 0.05, key="set_val")
    seed = columns[2].number_input("Seed", 0, 2**31 - 1, now["set_seed"], 1, key="set_seed")
    return {"split": split, "val": val, "seed": int(seed)}


def _widget_values(settings: TrainSettings) -> dict[str, object]:
    """The settings as their widgets hold them: layer sizes as text."""
    values = dataclasses.asdict(settings)
    for name, value in values.items():
        if isinstance(value, tuple | list):
            values[name] = ", ".join(str(v) for v in value)
    return values


def reset_to_preset() -> None:
    """A new architecture starts from its own preset's settings (the split, the seed and a
    planted shortcut stay)."""
    preset = _widget_values(train_settings.defaults(st.session_state["set_arch"]))
    for name, value in preset.items():
        if name not in ("arch", "split", "seed", "val") and not name.startswith("marker"):
            st.session_state[f"set_{name}"] = value

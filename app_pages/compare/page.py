"""Compare: two or more models on the same slices, with intervals, a paired test and pictures."""

from __future__ import annotations

import streamlit as st

from app_pages.compare import sections
from ctdemo.app import resources
from ctdemo.app.classify import CAUTION
from ctdemo.app.compare import Selection, held_out
from ctdemo.app.text import plain
from ctdemo.evaluation.table import metrics_table
from ctdemo.io.folders import DatasetError

st.title("Compare models")
st.caption(
    "Two or more models on the same slices, none of which any of them trained on: every "
    f"number with its 95% interval, and a paired test before calling one better. {CAUTION}"
)
labels = resources.model_labels()
defaults = [key for key in labels if key.startswith(resources.SHIPPED_PREFIX)]
chosen = st.multiselect(
    "Models", list(labels), default=defaults, format_func=labels.__getitem__, key="compare_models"
)
if len(chosen) < 2:
    st.info("Choose at least two models.")
    st.stop()
names = {key: sections.short_name(key, labels[key]) for key in chosen}
root = sections.choose_data()
if root is None:
    st.stop()

models = {names[key]: resources.get_model(key) for key in chosen}
cards = {name: card for name, (_, card) in models.items()}
try:
    unseen = held_out(root, cards)
except DatasetError as error:
    sections.from_cards(cards, f"No labelled slices could be read here ({error}).")
    st.stop()
if not unseen.files:
    why = f"None of these slices is held out from every chosen model ({unseen.note})"
    sections.from_cards(cards, why)
    st.stop()
try:
    result = resources.comparison(tuple(chosen), root, unseen.files, models)
except (ValueError, DatasetError) as error:
    st.error(f"These models cannot be compared on these slices: {plain(error)}")
    st.stop()

splits = {card.split_method for card in cards.values() if card.split}
st.caption(
    f"Evaluated on {result.n} slices: {plain(unseen.note)} The models' own splits: "
    f"{', '.join(sorted(splits)) or 'unknown'}; each card's validation split also chose its "
    "best epoch (early stopping), so card numbers are slightly optimistic; these are not."
)
table = metrics_table(result)
sections.metrics(table, result.names)
figures = sections.charts(result, cards)
if result.binary:
    sections.threshold(result)
selection = Selection(tuple(chosen), root, result.files, result.labels)
sections.where_models_look(selection, models)
sections.disagreement_gallery(result, {name: key for key, name in names.items()}, root)
sections.export(table, result, figures)

"""One slice's verdict: the predicted class, a bar per class and what the accuracy means, or
the "is this a chest CT slice?" warning instead. Shared by uploaded slices and a scan's slices."""

from __future__ import annotations

import streamlit as st

from ctdemo.app import classify
from ctdemo.app.charts import probability_bars
from ctdemo.app.text import plain
from ctdemo.models.cards import ModelCard


def show_prediction(result: classify.SliceResult, card: ModelCard) -> None:
    """The verdict of one classified slice, or why it has none."""
    if result.out_of_distribution:
        st.warning(f"**Is this a chest CT slice? Probably not.** {result.screening.reason}")
        with st.expander("Show the model's scores anyway"):
            st.write(result.probabilities)
        return
    top = classify.format_probability(result.probabilities[result.predicted_class])
    st.subheader(f"{plain(result.predicted_class)}: {top}")
    st.plotly_chart(
        probability_bars(result.probabilities), key=f"bars_{result.digest}", width="stretch"
    )
    st.caption(f"{classify.accuracy_statement(card)} Not for diagnosis.")

"""ctdemo: how neural networks read chest CT. Start with `streamlit run streamlit_app.py`."""

from __future__ import annotations

import streamlit as st

from ctdemo.catalog import shipped_model_summaries
from ctdemo.data import resolve_data_source

st.set_page_config(page_title="ctdemo: how neural networks read chest CT", page_icon="🫁")

st.title("How neural networks read chest CT")
st.caption(
    "For teaching and research only: not a medical device, not for diagnosis. "
    "Accuracy is measured on whole patients the models never saw in training "
    "(a grouped validation split), because a random split of slices flatters every number."
)

source = resolve_data_source()
st.write(f"Data: **{source.origin}** (`{source.train_dir}`).")

st.subheader("Shipped models")
summaries = shipped_model_summaries()
if summaries:
    st.dataframe(summaries, hide_index=True, key="shipped_models")
else:
    st.info("No shipped models found in weights/. Build them with the commands in the README.")
st.info("The Classify, Train and Compare pages are on their way.")

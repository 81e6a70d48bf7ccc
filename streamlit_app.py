"""ctdemo: how neural networks read chest CT. Start with `streamlit run streamlit_app.py`."""

from __future__ import annotations

import streamlit as st

from ctdemo import resources
from ctdemo.classify import CAUTION
from ctdemo.data import resolve_data_source

resources.keep_keras_state_between_runs()

st.set_page_config(
    page_title="ctdemo: how neural networks read chest CT",
    page_icon=":material/biotech:",
    layout="wide",
    menu_items={"About": "ctdemo teaches how neural networks classify chest CT slices. " + CAUTION},
)

# The pages live in app_pages/, not pages/: Streamlit runs a folder named pages/ as a legacy
# multipage app on a fresh server's first request, so a shared /train link would skip this file.
pages = [
    st.Page("app_pages/classify.py", title="Classify", icon=":material/biotech:", default=True),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/about.py", title="About", icon=":material/info:"),
]
navigation = st.navigation(pages)

with st.sidebar:
    st.markdown("### ctdemo")
    st.caption("How neural networks read chest CT: COVID-19 vs non-COVID on single slices.")
    source = resolve_data_source()
    st.caption(f"Data: **{source.origin}**")
    st.caption(CAUTION)

navigation.run()

"""ctdemo: how neural networks read chest CT. Start with `streamlit run streamlit_app.py`."""

from __future__ import annotations

import streamlit as st

from ctdemo.app import resources
from ctdemo.app.classify import CAUTION
from ctdemo.config import resolve_data_source

resources.keep_keras_state_between_runs()

st.set_page_config(
    page_title="ctdemo: how neural networks read chest CT",
    page_icon=":material/biotech:",
    layout="wide",
    menu_items={"About": "ctdemo teaches how neural networks classify chest CT slices. " + CAUTION},
)

# Each page is app_pages/<name>/page.py. Not pages/: while a folder of that name exists,
# Streamlit 1.67 runs a fresh server's first request as a legacy multipage app, and a shared
# /train link then opens with a "Page not found" dialog (tests/e2e/test_restart.py).
pages = [
    st.Page(
        "app_pages/classify/page.py",
        title="Classify",
        icon=":material/biotech:",
        url_path="classify",
        default=True,
    ),
    st.Page(
        "app_pages/train/page.py", title="Train", icon=":material/model_training:", url_path="train"
    ),
    st.Page(
        "app_pages/compare/page.py",
        title="Compare",
        icon=":material/compare_arrows:",
        url_path="compare",
    ),
    st.Page("app_pages/about/page.py", title="About", icon=":material/info:", url_path="about"),
]
navigation = st.navigation(pages)

with st.sidebar:
    st.markdown("### ctdemo")
    st.caption("How neural networks read chest CT: COVID-19 vs non-COVID on single slices.")
    source = resolve_data_source()
    st.caption(f"Data: **{source.origin}**")
    st.caption(CAUTION)

navigation.run()

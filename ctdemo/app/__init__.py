"""The only Streamlit-aware code: cached resources, the training queue, page settings, charts and
the text the pages show.
"""

"""Measuring models: metrics with intervals, paired tests, grouped splits and the comparison of
models. No TensorFlow, no Streamlit.
"""

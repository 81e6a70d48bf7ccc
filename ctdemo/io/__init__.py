"""Reading the world: slices (decode, DICOM, windows), image folders and their cache, archives, a
visitor's uploads, the download and the demo set. No TensorFlow, no Streamlit.
"""

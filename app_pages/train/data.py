"""Train's data: which slices to train on, and what they hold."""

from __future__ import annotations

import streamlit as st

from ctdemo.app import resources
from ctdemo.app.text import plain
from ctdemo.config import DEMO_BUNDLE_DIR, resolve_data_source
from ctdemo.explain.overlay import image_strip
from ctdemo.io.archives import ArchiveError
from ctdemo.io.folders import ArrayDataset, DatasetError

DEMO_OPTION = "Embedded demo set (300 slices)"


def data_choice() -> str | None:
    """The dataset root the person trains on: the demo set, the full dataset or their zip."""
    source = resolve_data_source()
    options = {DEMO_OPTION: str(DEMO_BUNDLE_DIR)}
    if source.origin != "embedded demo set":
        options[f"Full dataset ({source.origin})"] = str(source.train_dir)
    options["Upload a .zip of class folders"] = ""
    label = st.radio("Data", list(options), key="data")
    if options[label]:
        return options[label]
    upload = st.file_uploader("A .zip with one folder per class", type=["zip"], key="data_zip")
    if upload is None:
        st.caption("Two or more class folders of PNG, JPEG, TIFF or DICOM slices, 50 MB at most.")
        return None
    from ctdemo.io.uploads import import_zip_dataset

    try:
        folder = import_zip_dataset(upload.getvalue(), resources.owner_id())
    except (ArchiveError, DatasetError) as error:
        st.error(f"This zip cannot be used: {plain(error)}")
        return None
    return str(folder.root)


def show_dataset(root: str, size: int) -> ArrayDataset | None:
    """Classes, counts, a few thumbnails per class, and what was skipped and why."""
    try:
        dataset = resources.training_arrays(root, size)
    except DatasetError as error:
        message = str(error).replace(root, "the dataset folder")  # no server paths on the page
        st.error(f"This dataset cannot be used: {plain(message)}")
        return None
    counts = {name: int((dataset.y == i).sum()) for i, name in enumerate(dataset.class_names)}
    st.caption(
        f"{len(dataset)} slices: "
        + ", ".join(f"{plain(name)} {count}" for name, count in counts.items())
    )
    columns = st.columns(len(dataset.class_names))
    for index, (column, name) in enumerate(zip(columns, dataset.class_names, strict=True)):
        examples = [dataset.x[i, ..., 0] for i in (dataset.y == index).nonzero()[0][:3]]
        column.image(image_strip(examples), caption=plain(name), width="stretch")
    if dataset.skipped:
        with st.expander(f"{len(dataset.skipped)} files skipped"):
            st.dataframe(
                [{"file": file, "why": why} for file, why in dataset.skipped[:200]],
                hide_index=True,
            )
    if root == str(DEMO_BUNDLE_DIR):
        st.caption(
            "The full training set (1,971 slices) gives steadier numbers: "
            "`python -m ctdemo download`, then restart the app."
        )
    return dataset

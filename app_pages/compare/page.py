"""Compare: two or more models on the same slices, with intervals, a paired test and pictures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ctdemo.app import resources
from ctdemo.app.charts import confusion_matrices, reliability_diagram, roc_overlay, run_overlay
from ctdemo.app.classify import CAUTION, digest, format_probability
from ctdemo.app.text import plain
from ctdemo.config import DEMO_BUNDLE_DIR, resolve_data_source
from ctdemo.evaluation import compare
from ctdemo.explain.methods import METHOD_LABELS, ExplanationError, to_slice_geometry
from ctdemo.explain.overlay import blend
from ctdemo.io.archives import ArchiveError
from ctdemo.io.folders import DatasetError, scan_image_folder
from ctdemo.io.slices import SliceError, decode_slice, read_slice_file

MAX_DISAGREEMENTS = 8
BETTER_STYLE = "background-color: #d8f0dc; font-weight: bold"
LOOKS_FOR = "compare_looks_for"  # the selection the visitor asked "where the models look" for


def short_name(key: str, label: str) -> str:
    return key.removeprefix(resources.SHIPPED_PREFIX) if key.startswith("shipped:") else label


def data_root() -> str | None:
    """The labelled slices to evaluate on: the demo set, the configured data, or a zip."""
    source = resolve_data_source()
    options = {"Embedded demo set (300 validation slices)": str(DEMO_BUNDLE_DIR)}
    if source.origin != "embedded demo set":
        options[f"The configured dataset's held-out slices ({source.origin})"] = str(
            source.train_dir
        )
    options["Upload a labelled .zip of class folders"] = ""
    choice = st.radio("Evaluate on", list(options), key="compare_data")
    if options[choice]:
        return options[choice]
    upload = st.file_uploader("A .zip with one folder per class", type=["zip"], key="compare_zip")
    if upload is None:
        return None
    from ctdemo.io.uploads import import_zip_dataset

    try:
        return str(import_zip_dataset(upload.getvalue(), resources.owner_id()).root)
    except (ArchiveError, DatasetError) as error:
        st.error(f"This zip cannot be used: {plain(error)}")
        return None


def from_cards(names: dict[str, str], why: str) -> None:
    """No readable images: compare what the cards say, and say that is what it is."""
    st.info(f"{plain(why)} So this comparison comes from the models' cards instead.")
    cards = {name: resources.get_model(key)[1] for key, name in names.items()}
    rows = compare.card_comparison(cards)
    st.dataframe(compare.display_rows(rows, list(cards)), hide_index=True, key="card_table")
    st.caption(f"These numbers are {rows[0]['basis']}.")
    left, right = st.columns(2)
    left.plotly_chart(roc_overlay(compare.card_roc_curves(cards)), key="card_roc")
    right.plotly_chart(run_overlay(compare.histories(cards), "loss"), key="card_curves")


def slice_with_explanation(model_key: str, root: str, file: str, predicted: str):
    """The slice and the model's explanation of its own prediction, over it."""
    from ctdemo.explain.saliency import available_methods
    from ctdemo.models.inference import model_input, slices_per_batch

    data = read_slice_file(Path(root) / file)
    pixels = decode_slice(data, file).pixels
    model, card = resources.get_model(model_key)
    method = available_methods(model)[0]
    key = resources.ExplanationKey(
        model_key, digest(data), (0.0, 0.0), method, card.class_names.index(predicted)
    )
    heatmap = resources.explanation(
        key, model, model_input(pixels, card), batch_size=slices_per_batch(card)
    )
    return blend(pixels, to_slice_geometry(heatmap, pixels.shape), 0.45), METHOD_LABELS[method]


def styled(display: pd.DataFrame, better: list[str | None]):
    """The table with each row's significantly better model highlighted."""
    return display.style.apply(
        lambda row: [BETTER_STYLE if column == better[row.name] else "" for column in row.index],
        axis=1,
    )


def where_models_look(selection: tuple, models: dict) -> None:
    """On demand, each model's explanations scored (heat in the lungs, faithfulness), compared."""
    st.subheader("Where the models look")
    if st.button("Compare where the models look", key="compare_looks"):
        st.session_state[LOOKS_FOR] = selection
    if st.session_state.get(LOOKS_FOR) != selection:
        st.caption(
            f"Each model explains its own prediction on up to {resources.LOOK_SAMPLE} of these "
            "slices (spread over the classes), and each map is scored: how much of its heat falls "
            "inside the lungs, and whether deleting its hottest pixels changes the answer "
            "sooner than deleting at random. About 40 s for the two shipped models on 2 cores."
        )
        return
    looks = resources.explanation_quality(*selection, models)
    rows = looks.rows()
    display = pd.DataFrame([row.flat(list(looks.models)) for row in rows])
    st.dataframe(
        styled(display, [row.better for row in rows]),
        hide_index=True,
        height=35 * (len(display) + 1) + 3,
        key="looks_table",
    )
    st.caption(f"{looks.note()} Computed in {looks.seconds:.0f} s.")


# ------------------------------------------------------------------ page
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
names = {key: short_name(key, labels[key]) for key in chosen}
root = data_root()
if root is None:
    st.stop()

models = {names[key]: resources.get_model(key) for key in chosen}
cards = {name: card for name, (_, card) in models.items()}
try:
    folder = scan_image_folder(root)
except DatasetError as error:
    from_cards(names, f"No labelled slices could be read here ({error}).")
    st.stop()
unseen, fairness = compare.unseen_by_all(folder, cards)
if not unseen.files:
    from_cards(names, f"None of these slices is held out from every chosen model ({fairness})")
    st.stop()
try:
    result = resources.comparison(
        tuple(chosen), root, tuple(unseen.relative(path) for path in unseen.files), models
    )
except (ValueError, DatasetError) as error:
    st.error(f"These models cannot be compared on these slices: {plain(error)}")
    st.stop()

splits = {card.split.get("method", "?") for card in cards.values() if card.split}
st.caption(
    f"Evaluated on {result.n} slices: {plain(fairness)} The models' own splits: "
    f"{', '.join(sorted(splits)) or 'unknown'}; each card's validation split also chose its "
    "best epoch (early stopping), so card numbers are slightly optimistic; these are not."
)
table = compare.metrics_table(result)
st.subheader("Metrics")
display = pd.DataFrame(compare.display_rows(table, result.names))
better = [row.get("better") for row in table]  # set only when the paired test says so
st.dataframe(
    styled(display, better),
    hide_index=True,
    height=35 * (len(display) + 1) + 3,
    key="metrics_table",
)
st.caption(
    "A model is called better in a row only when a paired test says so (p < 0.05): McNemar's "
    "exact test on the same slices for accuracy, sensitivity and specificity; a paired "
    "bootstrap for precision, F1 and ROC AUC."
)

figures = {
    "roc": roc_overlay(compare.roc_curves(result)),
    "confusion": confusion_matrices(compare.confusion_panels(result)),
    "curves": run_overlay(compare.histories(cards), "loss"),
    "calibration": reliability_diagram(compare.calibration(result)),
}
left, right = st.columns(2)
left.markdown("**ROC curves**")
left.plotly_chart(figures["roc"], key="roc")
right.markdown("**Confusion matrices**")
right.plotly_chart(figures["confusion"], key="confusion")
left.markdown("**Training curves** (loss, from the cards)")
left.plotly_chart(figures["curves"], key="curves")
right.markdown("**Calibration** (predicted probability against observed frequency)")
right.plotly_chart(figures["calibration"], key="calibration")

if result.binary:
    st.subheader("Sensitivity against specificity")
    threshold = st.slider(
        f"Call a slice {plain(result.positive_class)} when its probability is at least",
        0.0,
        1.0,
        0.5,
        0.05,
        key="threshold",
    )
    columns = st.columns(len(result.names))
    for column, name in zip(columns, result.names, strict=True):
        (point,) = compare.threshold_tradeoff(result, name, [threshold])
        column.metric(f"{plain(name)}: sensitivity", f"{point['sensitivity']:.1%}")
        column.metric(f"{plain(name)}: specificity", f"{point['specificity']:.1%}")

where_models_look((tuple(chosen), root, tuple(result.files), tuple(result.labels)), models)

first, second = result.names[:2]
st.subheader(f"Where {plain(first)} and {plain(second)} disagree")
order = st.selectbox(
    "Sort by",
    ["confidence", "both", "file"],
    format_func={
        "confidence": "the surer model first",
        "both": "both sure, still disagreeing",
        "file": "file order",
    }.__getitem__,
    key="disagree_sort",
)
rows = compare.disagreements(result, first, second, order)
st.caption(f"{len(rows)} of {result.n} slices; the first {min(len(rows), MAX_DISAGREEMENTS)}:")
keys = {name: key for key, name in names.items()}
for row in rows[:MAX_DISAGREEMENTS]:
    columns = st.columns([1, 2, 2])
    columns[0].markdown(f"**{plain(row['file'])}**  \ntrue: {plain(row['truth'])}")
    for column, side in zip(columns[1:], ("a", "b"), strict=True):
        name = row[side]
        try:
            image, method = slice_with_explanation(
                keys[name], root, row["file"], row[f"{side}_predicted"]
            )
        except (OSError, SliceError):
            column.warning(f"{plain(row['file'])} can no longer be read.")
            continue
        except ExplanationError as error:
            column.error(plain(error))
            continue
        predicted = plain(row[f"{side}_predicted"])
        probability = format_probability(row[f"{side}_probability"])
        mark = "✓" if row["right"] == name else "✗"
        caption = f"{plain(name)}: {predicted} {probability} {mark} ({method})"
        column.image(image, caption=caption, width=220)

st.subheader("Export")
columns = st.columns(3)
columns[0].download_button(
    "Metrics (CSV)", compare.metrics_csv(table), "ctdemo-metrics.csv", key="export_metrics"
)
columns[1].download_button(
    "Every slice's predictions (CSV)",
    compare.comparison_csv(result),
    "ctdemo-predictions.csv",
    key="export_predictions",
)
columns[2].download_button(
    "Figures (HTML)",
    "\n".join(figure.to_html(full_html=False, include_plotlyjs=i == 0) for i, figure in
              enumerate(figures.values())),
    "ctdemo-figures.html",
    mime="text/html",
    key="export_figures",
)  # fmt: skip

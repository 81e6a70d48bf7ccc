"""About: the data and its licence, the shipped models' cards, and how accuracy was measured."""

from __future__ import annotations

import streamlit as st

from ctdemo.app.catalog import card_sections, shipped_cards
from ctdemo.app.charts import curve_columns, training_curves
from ctdemo.app.classify import CAUTION

st.title("About ctdemo")
st.warning(f"**Not for diagnosis.** {CAUTION}")

st.header("The data")
st.markdown(
    """
The scans are the **SARS-CoV-2 CT-scan dataset** of Eduardo Soares, Plamen Angelov, Sarah Biaso,
Michele Higa Froes and Daniel Kanda Abe (2020), *SARS-CoV-2 CT-scan dataset: A large dataset of
real patients CT scans for SARS-CoV-2 identification*, medRxiv,
[doi:10.1101/2020.04.24.20078584](https://doi.org/10.1101/2020.04.24.20078584): slices of real
patients of hospitals in São Paulo, Brazil, labelled COVID-19 or non-COVID (other lung diseases
and healthy lungs). It is published under **CC BY-NC-SA 4.0**: attribution, non-commercial,
share-alike. The few slices embedded in this app (12 samples and a 300-slice bundle, all from
the shipped models' validation split) are under that licence, not the code's.

The full training folder (1,971 slices) is fetched with `python -m ctdemo download`; point the
app at any image-folder dataset with `CTDEMO_DATA_DIR`.
"""
)

st.header("How accuracy is measured, and what a random split leaks")
st.markdown(
    """
The files are numbered patient by patient, and neighbouring slices of one patient look almost
alike: a slice's nearest neighbour is usually its numbering neighbour. Split the slices at
random and the same patients land on both sides, so a model is graded on near-copies of what it
trained on. A plain 1-nearest-neighbour lookup, which learns nothing, scores about **92%** under
a random split but about **69%** on patients it has never seen (`benchmarks/leakage.py`).

So every number in this app comes from a **grouped split**: whole groups of slices stay on one
side. The dataset has no patient IDs, so a group is a block of 25 consecutive file numbers (a
documented proxy; DICOM PatientID or a groups CSV are used when present). The validation split
also chose the best epoch, so it is slightly optimistic; the intervals are 95% Wilson (accuracy
and rates) or bootstrap (AUC) intervals over slices, and slices of one patient are not
independent, so the honest uncertainty is wider still (the README gives patient-level figures).
"""
)

st.header("Ask the models: does looking at the lungs help?")
st.markdown(
    """
Where a CNN looks can be steered: show it only the lungs, or only train it on the lungs. The
Train page's CNN (48 px) was trained four ways on each of three grouped splits of the full
training set, with a rough lung mask of every slice, and its Grad-CAM measured on the
validation slices as the model saw them (`python benchmarks/lung_recipes.py DATA_DIR`):

| recipe | accuracy, splits 0 / 1 / 2 | heat inside the lungs | the lungs' share | median ratio |
|---|---|---|---|---|
| the whole slice (as shipped) | 94.3% / 85.8% / 93.0% | 50% | 35% | 1.45 |
| outside the lungs blacked out, in training only | 71.0% / 61.3% / 81.8% | 32% | 35% | 0.96 |
| only the lungs, in training and validation | 91.4% / 82.0% / 90.4% | 42% | 35% | 1.18 |
| cropped to the lungs' box, in both | 91.9% / 88.0% / 93.0% | 52% | 47% | 1.19 |

- **Most of the signal is inside the lungs**: with nothing else to see, the CNN loses about
  three points. Those three points come from outside the lungs or from their edges, which the
  whole-slice model uses.
- **Hiding the rest only in training backfires**: the model meets whole slices at validation
  as something new, loses 20 points, and looks at the lungs *less* (0.96 times their share).
- **A crop keeps the accuracy** (91.0% on average either way) but not a sharper look: the lungs
  fill more of a cropped slice, and the heat grows only with them.
- None of the recipes puts twice the lungs' share of the heat inside them, so the shipped
  models keep the whole slice. A heatmap that falls 1.45 times more on the lungs than chance
  is a model that mostly, not only, reads the lungs.

The shipped CNN's own architecture (96 px, `--preset cnn-large`, the Train page's settings for
it), asked the same two ways it could be shipped:

| recipe | accuracy, splits 0 / 1 / 2 | heat inside the lungs | the lungs' share | median ratio |
|---|---|---|---|---|
| the whole slice (as shipped) | 93.7% / 86.2% / 90.1% | 45% | 35% | 1.22 |
| cropped to the lungs' box, in both | 94.3% / 90.8% / 89.6% | 46% | 52% | 0.99 |

- **At 96 px the crop is more accurate** on two splits of three (1.6 points on average, 4.5 on
  the hardest) but puts the same share of its heat inside the lungs, which now fill half the
  input: as much as a map blind to anatomy would. Cropping changes what the model is shown,
  not where inside it the model looks.
"""
)

st.header("The shipped models")
cards = shipped_cards()
if not cards:
    st.info("No shipped models found in weights/. The README says how to build them.")
for name, card in cards.items():
    st.subheader(f"{name}: {card.kind}")
    sections = card_sections(card)
    columns = st.columns(2)
    for index, (title, rows) in enumerate(sections.items()):
        with columns[index % 2]:
            st.markdown(f"**{title}**")
            st.table(rows)
    curve_columns(
        lambda metric, card=card: training_curves(card.history, metric, card.best_epoch),
        f"about_{name}",
    )

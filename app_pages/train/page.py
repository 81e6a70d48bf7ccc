"""Train: an MLP or a CNN, live, with sliders, curves that grow epoch by epoch, and lessons."""

from __future__ import annotations

import dataclasses

import streamlit as st

from ctdemo.app import resources, runs, train_settings
from ctdemo.app.charts import confusion_matrix, run_overlay, training_curves
from ctdemo.app.text import plain
from ctdemo.app.timeline import lung_share_chart
from ctdemo.app.train_settings import SHARED_SERVER, TooCostly, TrainSettings, memory_text
from ctdemo.config import DEMO_BUNDLE_DIR, resolve_data_source
from ctdemo.evaluation.numbers import shown
from ctdemo.evaluation.splits import SPLIT_METHODS
from ctdemo.explain.overlay import blend, image_strip
from ctdemo.io.archives import ArchiveError
from ctdemo.io.folders import DatasetError
from ctdemo.models.specs import PRESETS, duration

JOB = "train_job"  # (job id, settings, attention pixels) of this session's running training
RESULT = "train_result"  # (job id, settings, final snapshot, model, card) of the last run
FRAMES = "train_frames"  # the last run's attention frames, slice and its lungs' area
SAVED = "train_settings"  # the last settings, kept when the person visits another page
LESSON = "train_lesson"  # start a run on this rerun: the last one with the other split
RUNS = "train_runs"
SPLIT_HELP = (
    "Grouped keeps whole patients (blocks of 25 consecutive file numbers) on one side, as a "
    "new patient would be; random scatters each patient's slices over both sides and flatters "
    "the validation accuracy."
)
MEMBERS_HELP = (
    "Train this many copies of the CNN side by side, each from its own random start and on its "
    "own loss, and average their logits. The curves are the average's; runs of one model jump "
    "from epoch to epoch more than the average does. Each member adds one model's time."
)
DENSITY_HELP = (
    "Besides the convolutions' pooled features, give the dense head the slice's sorted "
    "brightness and edge strengths (what the MLP reads). Per-image scaling hides how dense a "
    "slice is from the convolutions; the shipped CNN gained about a point on each of three "
    "patient splits from this. Grad-CAM still shows only the convolutions' part."
)


def data_choice() -> tuple[str, str] | None:
    """(label, dataset root) the person trains on, after showing what it holds."""
    source = resolve_data_source()
    options = {"Embedded demo set (300 slices)": str(DEMO_BUNDLE_DIR)}
    if source.origin != "embedded demo set":
        options[f"Full dataset ({source.origin})"] = str(source.train_dir)
    options["Upload a .zip of class folders"] = ""
    label = st.radio("Data", list(options), key="data")
    if options[label]:
        return label, options[label]
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
    return upload.name, str(folder.root)


def show_dataset(root: str, size: int) -> object | None:
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


def settings_form(start: TrainSettings) -> TrainSettings | None:
    """Every hyper-parameter, each with a stable key, starting from the URL's settings.

    Session state holds the values; each widget is also given its current value as its
    default. The browser falls back to a widget's default when it re-creates the widget
    (seen in Chromium after a zip upload): without this, the settings jumped to the first
    option of each widget (learning rate 1e-4, no filters)."""
    for name, value in dataclasses.asdict(start).items():
        if isinstance(value, tuple | list):
            value = ", ".join(str(v) for v in value)
        st.session_state.setdefault(f"set_{name}", value)
    now = {key: st.session_state[key] for key in st.session_state if str(key).startswith("set_")}

    def index(options: tuple | list, key: str) -> int:
        return list(options).index(now[key]) if now[key] in options else 0

    arch = st.selectbox(
        "Architecture",
        train_settings.ARCHITECTURES,
        index=index(train_settings.ARCHITECTURES, "set_arch"),
        key="set_arch",
        on_change=reset_to_preset,
    )
    st.caption(PRESETS[arch].description)
    dropout = st.slider("Dropout", 0.0, 0.8, now["set_dropout"], step=0.05, key="set_dropout")
    epochs = st.slider("Epochs", 1, train_settings.MAX_EPOCHS, now["set_epochs"], key="set_epochs")
    columns = st.columns(3)
    lr = columns[0].select_slider(
        "Learning rate",
        train_settings.LEARNING_RATES,
        now["set_lr"],
        key="set_lr",
        format_func="{:g}".format,
    )
    batch = columns[1].selectbox(
        "Batch size",
        train_settings.BATCH_SIZES,
        index(train_settings.BATCH_SIZES, "set_batch"),
        key="set_batch",
    )
    size = columns[2].selectbox(
        "Image size",
        train_settings.IMAGE_SIZES,
        index(train_settings.IMAGE_SIZES, "set_size"),
        key="set_size",
    )
    cnn = PRESETS[arch].architecture.kind == "cnn"
    columns = st.columns(3)
    layers_text = columns[0].text_input(
        "Filters per block" if cnn else "Hidden units per layer",
        now["set_layers"],
        key="set_layers",
    )
    dense_text = columns[1].text_input(
        "Dense head units", now["set_dense"], key="set_dense", disabled=not cnn
    )
    members = columns[2].number_input(
        "Ensemble members",
        1,
        train_settings.MAX_MEMBERS,
        now["set_members"],
        1,
        key="set_members",
        disabled=not cnn,
        help=MEMBERS_HELP,
    )
    columns = st.columns(2)
    early = columns[0].checkbox("Early stopping", now["set_early"], key="set_early")
    augment = columns[0].checkbox("Augmentation", now["set_augment"], key="set_augment")
    density = columns[0].checkbox(
        "Show the head the slice's density",
        now["set_density"],
        key="set_density",
        disabled=not cnn,
        help=DENSITY_HELP,
    )
    patience = columns[1].slider(
        "Patience", 1, 20, now["set_patience"], key="set_patience", disabled=not early
    )
    columns = st.columns(3)
    split = columns[0].radio(
        "Split",
        SPLIT_METHODS,
        index(SPLIT_METHODS, "set_split"),
        key="set_split",
        help=SPLIT_HELP,
    )
    val = columns[1].slider("Validation fraction", 0.1, 0.4, now["set_val"], 0.05, key="set_val")
    seed = columns[2].number_input("Seed", 0, 2**31 - 1, now["set_seed"], 1, key="set_seed")
    try:
        layers = train_settings.parse_units(layers_text)
        dense = train_settings.parse_units(dense_text, allow_empty=True) if cnn else ()
    except ValueError as error:
        st.error(str(error))
        return None
    return TrainSettings(
        arch, dropout, epochs, lr, batch, size, layers, dense, early, patience, augment,
        val, split, int(seed), int(members) if cnn else 1, density and cnn,
    )  # fmt: skip


def reset_to_preset() -> None:
    """A new architecture starts from its own preset's settings."""
    for name, value in dataclasses.asdict(
        train_settings.defaults(st.session_state["set_arch"])
    ).items():
        if name in ("arch", "split", "seed", "val"):
            continue
        if isinstance(value, tuple | list):
            value = ", ".join(str(v) for v in value)
        st.session_state[f"set_{name}"] = value


def cost_line(settings: TrainSettings, dataset) -> bool:
    """Parameters, memory and a rough time, counted before anything is built; an error and
    False for settings past what one training may cost on this server."""
    cost = train_settings.estimate(
        settings.config(), len(dataset), len(dataset.class_names), settings.val
    )
    st.caption(
        f"**{cost.parameters:,} parameters** · about {memory_text(cost.memory_bytes)} of memory "
        f"· about {cost.seconds_per_epoch:.1f} s per epoch on this server "
        f"({cost.train_slices} training slices), up to {duration(cost.seconds)} in all."
    )
    try:
        train_settings.check_cost(cost, SHARED_SERVER)
    except TooCostly as error:
        st.error(str(error))
        return False
    return True


def split_ready(settings: TrainSettings, dataset) -> bool:
    """Whether the run's validation split can be made; if not (a class too small to put on
    both sides), the reason is shown and Train stays off."""
    try:
        resources.validation_split(dataset, settings.split_spec())
    except DatasetError as error:
        st.error(plain(error))
        return False
    return True


def attention_picker(settings: TrainSettings, dataset) -> int | None:
    """The validation slice whose Grad-CAM is taken every epoch (CNNs only)."""
    if not settings.is_cnn:
        st.caption("The attention timeline needs a CNN: an MLP has no convolution to read.")
        return None
    split = resources.validation_split(dataset, settings.split_spec())
    choices = list(range(min(24, len(split.val))))
    index = st.selectbox(
        "Attention timeline: watch where the CNN looks at this validation slice",
        [None, *choices],
        format_func=lambda i: "off" if i is None else split.val.files[i],
        key="attention",
    )
    if index is not None:
        st.image(split.val.x[index, ..., 0], width=96, caption=plain(split.val.files[index]))
    return index


def start_training(settings: TrainSettings, dataset, attention: int | None) -> None:
    from ctdemo.app.jobs import QueueFull

    try:
        job = resources.training_queue().submit(
            resources.owner_id(),
            dataset,
            settings.config(),
            settings.split_spec(),
            name=runs.run_label(settings),
            attention_slice=attention,
        )
    except (QueueFull, ValueError) as error:
        st.error(plain(error))
        return
    pixels = None
    if attention is not None:
        pixels = resources.validation_split(dataset, settings.split_spec()).val.x[attention, ..., 0]
    st.session_state[JOB] = (job.id, settings, pixels)
    st.rerun()  # redraw the buttons: Train off, Stop on


def current_job():
    """This session's latest job (None once collected or dropped), its settings and the
    attention slice's pixels."""
    held = st.session_state.get(JOB)
    if held is None:
        return None, None, None
    job_id, settings, pixels = held
    return resources.training_queue().get(job_id, resources.owner_id()), settings, pixels


def loss_and_accuracy(snapshot, key: str) -> None:
    """A run's loss and accuracy curves side by side, best epoch and early stop marked."""
    if not snapshot.history:
        return
    history = {name: list(values) for name, values in snapshot.history.items()}
    for column, metric in zip(st.columns(2), ("loss", "accuracy"), strict=True):
        column.plotly_chart(
            training_curves(history, metric, snapshot.best_epoch, snapshot.early_stop_epoch),
            key=f"{key}_{metric}",
            width="stretch",
        )


def live_run() -> None:
    """The run's status, progress and curves: redrawn every second while a run waits or
    trains, and not at all otherwise (an idle page must not rerun, nor cost the server CPU)."""
    job = current_job()[0]
    if job is not None and not job.finished:
        st.fragment(live_panel, run_every=1.0)()
    elif job is not None:
        live_panel()


def live_panel() -> None:
    job, settings, pixels = current_job()
    if job is None:
        return
    snapshot = job.snapshot()
    if snapshot.status == "queued":
        st.info(f"Waiting in line: position {snapshot.position}. One training runs at a time.")
    elif snapshot.status == "running":
        eta = f", about {snapshot.eta_seconds:.0f} s left" if snapshot.eta_seconds else ""
        st.progress(
            snapshot.progress,
            text=f"Epoch {snapshot.epochs_done + 1} of {snapshot.epochs_total} · batch "
            f"{snapshot.batch}/{snapshot.batches or '?'} · {snapshot.elapsed_seconds:.0f} s{eta}",
        )
    loss_and_accuracy(snapshot, "live")
    if snapshot.frames:
        show_attention(snapshot.frames, pixels, snapshot.attention_lung_area, "live")
    if snapshot.finished:
        collect(job, settings, snapshot)
        st.rerun(scope="app")


def show_attention(frames, pixels, lung_area: float | None, key: str) -> None:
    """The attention timeline: the chosen slice with each epoch's Grad-CAM over it, and beside
    it how much of that heat falls inside the slice's lungs."""
    shown = frames[-12:]
    images, chart = st.columns([3, 2])
    images.caption("Where the CNN looks at the chosen slice, epoch by epoch (Grad-CAM, true class)")
    images.image(
        [blend(pixels, frame.heatmap / 255.0, 0.5) for frame in shown],
        caption=[f"epoch {frame.epoch}" for frame in shown],
        width=96,
    )
    if lung_area is None:
        chart.caption("The lungs were not found on this slice: the heat inside them is not shown.")
        return
    chart.caption("Share of the heat inside the lungs, each epoch; dotted: the lungs' area")
    chart.plotly_chart(
        lung_share_chart(
            [frame.epoch for frame in frames], [frame.lung_share for frame in frames], lung_area
        ),
        key=f"{key}_lung_share",
        width="stretch",
    )


def collect(job, settings: TrainSettings, snapshot) -> None:
    """Move a finished job's model, card and curves into the session and free the queue."""
    st.session_state[RESULT] = (job.id, settings, snapshot, job.model, job.card)
    if job.model is not None or snapshot.history:
        st.session_state[RUNS] = runs.keep(
            st.session_state.get(RUNS, []), runs.record(job.id, settings, snapshot, job.card)
        )
    pixels = st.session_state[JOB][2]
    frames = (snapshot.frames, pixels, snapshot.attention_lung_area)
    st.session_state[FRAMES] = frames if snapshot.frames else None
    del st.session_state[JOB]
    resources.training_queue().forget(resources.owner_id())


def show_result() -> None:
    """What the last run learned: why it ended, validation metrics, confusion matrix, and
    what to do with the model."""
    job_id, settings, snapshot, model, card = st.session_state[RESULT]
    messages = {
        "done": st.success,
        "stopped": st.warning,
        "failed": st.error,
        "cancelled": st.info,
    }
    ended = plain(snapshot.message) if snapshot.message else "Training finished."
    messages.get(snapshot.status, st.info)(
        f"**{snapshot.status.capitalize()}** after {snapshot.epochs_done} epochs "
        f"({snapshot.elapsed_seconds:.0f} s). {ended}"
    )
    loss_and_accuracy(snapshot, "final")
    if st.session_state.get(FRAMES):
        show_attention(*st.session_state[FRAMES], "final")
    if model is None or card is None or "accuracy" not in card.validation:
        return
    validation = card.validation
    st.subheader(f"Validation at epoch {card.best_epoch} ({settings.split} split)")
    columns = st.columns(4)
    for column, key, name in zip(
        columns,
        ("accuracy", "sensitivity", "specificity", "roc_auc"),
        ("Accuracy", f"Sensitivity ({plain(card.positive_class)})", "Specificity", "ROC AUC"),
        strict=True,
    ):
        if key in validation:
            interval = validation[key]
            low, high = shown(interval["low"], "{:.3f}"), shown(interval["high"], "{:.3f}")
            column.metric(
                name,
                shown(interval["value"], "{:.1%}" if key != "roc_auc" else "{:.3f}"),
                help=f"95% CI {low}–{high} on {validation['n']} validation slices",
            )
    show_lung_heat(snapshot.lung_heat)
    left, right = st.columns(2)
    left.plotly_chart(
        confusion_matrix(validation["confusion_matrix"], card.class_names),
        key="confusion",
        width="stretch",
    )
    with right:
        if st.button("Use on Classify", key="use_model", type="primary"):
            key = resources.add_trained_model(job_id, runs.run_label(settings), model, card)
            st.session_state["pending_model"] = key
            st.switch_page("app_pages/classify/page.py")
        if st.button("Add to Compare", key="add_compare"):
            resources.add_trained_model(job_id, runs.run_label(settings), model, card)
            st.success("Added: it is in the model lists of Compare and Classify.")
        st.download_button(
            "Download the model and its card (.zip)",
            resources.model_bundle(job_id, model, card),
            file_name=f"ctdemo-{settings.arch}-{job_id}.zip",
            mime="application/zip",
            key="download_model",
        )
        other = runs.flipped_split(settings).split
        st.button(
            f"Train the same with a {other} split",
            key="lesson",
            help="The second lesson: how much a random split of slices flatters accuracy.",
            on_click=queue_lesson,
            args=(settings,),
        )


def show_lung_heat(heat) -> None:
    """Where the final model looks over the validation slices, against the lungs' area."""
    if heat is None:
        return
    columns = st.columns(2)
    columns[0].metric(
        "Heat inside the lungs",
        f"{heat.share.mean:.0%}",
        help=f"95% CI {heat.share.low:.0%}–{heat.share.high:.0%} on {heat.share.n} slices",
    )
    columns[1].metric(
        "Lungs' area", f"{heat.lung_area:.0%}", help="What a map blind to anatomy scores"
    )
    st.caption(heat.sentence())


def queue_lesson(settings: TrainSettings) -> None:
    """Repeat the last run with the other split: set the split widget, start on this rerun."""
    st.session_state["set_split"] = runs.flipped_split(settings).split
    st.session_state[LESSON] = True


def show_runs() -> None:
    """Several runs' curves overlaid, and the split lesson when a pair is there."""
    kept = st.session_state.get(RUNS, [])
    if len(kept) < 2:
        return
    st.header("Your runs")
    labels = [f"{index + 1}. {run.label}" for index, run in enumerate(kept)]
    chosen = st.multiselect("Overlay", labels, default=labels[-2:], key="overlay_runs")
    picked = [kept[labels.index(label)] for label in chosen]
    if picked:
        columns = st.columns(2)
        for column, metric in zip(columns, ("loss", "accuracy"), strict=True):
            column.plotly_chart(
                run_overlay([(run.label, run.history) for run in picked], metric),
                key=f"overlay_{metric}",
                width="stretch",
            )
    pair = runs.split_pair(kept)
    if pair is not None:
        grouped, random = pair
        st.subheader("Random against grouped split")
        columns = st.columns(2)
        for column, run in zip(columns, (grouped, random), strict=True):
            accuracy = run.accuracy
            column.metric(
                f"{run.settings.split.capitalize()} split: validation accuracy",
                f"{accuracy['value']:.1%}",
                help=f"95% CI {accuracy['low']:.1%}–{accuracy['high']:.1%}",
            )
        st.markdown(runs.SPLIT_LESSON)


# ------------------------------------------------------------------ page
st.title("Train a model")
st.caption(
    "Train an MLP or a CNN on CT slices and watch it learn, epoch by epoch. The first seed "
    "project asked: did 50% dropout and early stopping make validation loss follow training "
    "loss? Try dropout 0 and 0.5 and overlay the runs. What you train stays in your session."
)
if "set_arch" in st.session_state:  # the widgets hold the settings
    start = train_settings.defaults()
elif SAVED in st.session_state:  # back from another page: Streamlit dropped the widgets' state
    start = st.session_state[SAVED]
else:  # a first visit: the URL may carry shared settings
    start = train_settings.from_query(st.query_params.to_dict())
controls, panel = st.columns([1, 2], gap="large")

with controls:
    chosen = data_choice()
    settings = settings_form(start)
    dataset = show_dataset(chosen[1], settings.size) if chosen and settings else None
    if settings is not None:
        if st.query_params.to_dict() != settings.to_query():  # no URL message when unchanged
            st.query_params.from_dict(settings.to_query())
        st.session_state[SAVED] = settings
    affordable = (
        dataset is not None and cost_line(settings, dataset) and split_ready(settings, dataset)
    )
    attention = attention_picker(settings, dataset) if affordable else None
    active, _, _ = current_job()
    busy = active is not None and not active.finished
    left, right = st.columns(2)
    pressed = left.button(
        "Train", key="train", type="primary", disabled=not affordable or busy, width="stretch"
    )
    if right.button("Stop", key="stop", disabled=not busy, width="stretch"):
        active.stop()
    if affordable and not busy and (pressed or st.session_state.pop(LESSON, False)):
        start_training(settings, dataset, attention)

with panel:
    live_run()
    if RESULT in st.session_state and current_job()[0] is None:
        show_result()
    show_runs()

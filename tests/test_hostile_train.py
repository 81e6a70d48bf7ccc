"""Hostile training settings (issue 20): what a shared link or a command line can make the
server allocate, how long a training may run, and a visitor's folder names on the Train page.

Every case here failed before its fix: the parameter count built the model (1.8 GB for the
widest link), nothing bounded a training's memory or time, `lr=nan` in a URL became the
slider's minimum, the CLI took `--epochs -1` and `--image-size 20000`, and class-folder names
reached Markdown as Markdown.
"""

from __future__ import annotations

import io
import random
import threading
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ctdemo import cli
from ctdemo.app import charts
from ctdemo.app.jobs import JobStatus
from ctdemo.app.queue import TrainingQueue
from ctdemo.app.text import plain
from ctdemo.app.train_settings import (
    BATCH_SIZES,
    IMAGE_SIZES,
    LEARNING_RATES,
    MAX_EPOCHS,
    MAX_MEMBERS,
    defaults,
    from_query,
)
from ctdemo.evaluation import splits
from ctdemo.evaluation.splits import SplitSpec
from ctdemo.io.folders import load_arrays
from ctdemo.models import architectures, experiment
from ctdemo.models.architectures import build_model
from ctdemo.models.specs import PRESETS, Architecture, TrainConfig, parameter_count
from ctdemo.models.training import train
from ctdemo.models.training_cost import SHARED_SERVER, CostLimits, TooCostly, check_cost, estimate

from conftest import ROOT

TINY_MLP = Architecture("mlp", 24, 0.2, hidden_units=(8,))
SPEC = SplitSpec(block_size=4)
WIDEST = {  # what a shared link can ask for: the largest image, the widest layers, 5 members
    "arch": "cnn",
    "size": str(max(IMAGE_SIZES)),
    "layers": ",".join(["1024"] * 5),
    "dense": ",".join(["1024"] * 5),
    "members": str(MAX_MEMBERS),
    "batch": str(max(BATCH_SIZES)),
    "density": "1",
}


@pytest.fixture
def no_model_built(monkeypatch):
    """Fail (and count) any attempt to build a Keras model from an architecture."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was built")

    for name in ("build_model", "_build_cnn", "_build_mlp"):
        monkeypatch.setattr(architectures, name, refuse)
    return calls


# ---------------------------------------------------------------- 1. parameters, counted


def random_architecture(rng: random.Random) -> Architecture:
    kind = rng.choice(["mlp", "cnn"])
    cnn = kind == "cnn"
    return Architecture(
        kind,
        rng.choice([16, 24, 33]),
        rng.choice([0.0, 0.2]),
        hidden_units=tuple(rng.randint(1, 9) for _ in range(rng.randint(0 if cnn else 1, 3))),
        filters=tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) if cnn else (),
        convs_per_block=rng.randint(1, 2),
        batch_norm=rng.random() < 0.5,
        features=rng.choice(
            ["pixels", "pixels+distribution"] if cnn else ["pixels", "distribution"]
        ),
        input_scaling=rng.choice(["fixed", "per-image"]),
        members=rng.randint(1, 3) if cnn else 1,
    )


ARCHITECTURES = {
    **{f"preset-{name}": preset.architecture for name, preset in PRESETS.items()},
    **{f"ensemble-{name}": replace(PRESETS[name].architecture, members=3) for name in ("cnn",)},
    **{f"random-{seed}": random_architecture(random.Random(seed)) for seed in range(10)},
}


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("architecture", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_parameters_are_counted_exactly_without_building(architecture, classes):
    assert (
        parameter_count(architecture, classes) == build_model(architecture, classes).count_params()
    )


def test_the_widest_link_is_counted_without_building_a_model(no_model_built):
    architecture = from_query(WIDEST).architecture()
    assert parameter_count(architecture, 2) > 200_000_000  # 0.8 GB of weights, had it been built
    assert not no_model_built


# ---------------------------------------------------------------- 2. memory and time bounds


def test_the_widest_link_is_refused_with_what_to_lower(no_model_built):
    settings = from_query(WIDEST)
    cost = estimate(settings.config(), 300, 2, settings.val)
    with pytest.raises(TooCostly, match=r"memory.*at most 400 MB.*Lower") as refused:
        check_cost(cost, SHARED_SERVER)
    assert "GB of memory" in str(refused.value) and "Traceback" not in str(refused.value)
    assert not no_model_built


@pytest.mark.parametrize("arch", ["mlp", "cnn", "seed-1-mlp", "seed-2-cnn"])
@pytest.mark.parametrize("slices", [300, 1971])  # the demo set, the full training set
def test_every_page_preset_fits_the_shared_server_on_either_data_set(arch, slices):
    settings = defaults(arch)
    check_cost(estimate(settings.config(), slices, 2, settings.val), SHARED_SERVER)


def test_a_training_estimated_past_the_time_bound_is_refused():
    settings = replace(defaults("seed-2-cnn"), epochs=MAX_EPOCHS)  # about 50 minutes
    cost = estimate(settings.config(), 1971, 2, settings.val)
    assert cost.memory_bytes <= SHARED_SERVER.memory_bytes
    with pytest.raises(TooCostly, match=r"take about .* at most 30 minutes\. Lower the epochs"):
        check_cost(cost, SHARED_SERVER)


def test_the_estimate_grows_with_what_a_training_holds():
    base = defaults("cnn").config()
    cost = estimate(base, 300, 2, 0.2)
    wider = estimate(replace(base, batch_size=128), 300, 2, 0.2)
    assert wider.activation_bytes > 3 * cost.activation_bytes
    assert estimate(base, 3000, 2, 0.2).data_bytes == 10 * cost.data_bytes
    assert cost.memory_bytes < 200 * 2**20  # the page's default: far below the bound


@pytest.fixture
def data(tiny_dataset):
    return load_arrays(tiny_dataset, 24)


def test_the_queue_refuses_a_job_past_its_limits_before_it_waits(data, no_model_built):
    queue = TrainingQueue()
    try:
        widest = from_query(WIDEST).config()
        with pytest.raises(TooCostly, match="memory"):
            queue.submit("mallory", data, widest, SPEC)
        long = TrainConfig(TINY_MLP, epochs=10_000, batch_size=1)
        with pytest.raises(TooCostly, match="take about"):
            queue.submit("mallory", data, long, SPEC)
        assert queue.waiting == 0 and queue.running == 0 and not queue.jobs_of("mallory")
    finally:
        queue.shutdown()
    assert not no_model_built


def test_the_queue_gives_every_job_its_time_limit(data, monkeypatch):
    started = threading.Event()

    def fake_training(dataset, config, spec, name, *, stop_event, **_):
        started.set()
        stop_event.wait(30)
        raise RuntimeError("stopped")

    monkeypatch.setattr(experiment, "train_on_arrays", fake_training)
    queue = TrainingQueue(limits=CostLimits(SHARED_SERVER.memory_bytes, 600))
    try:
        quick = TrainConfig(TINY_MLP, epochs=2, batch_size=8, time_limit_seconds=5)
        assert queue.submit("alice", data, quick, SPEC).config.time_limit_seconds == 5
        started.wait(30)
        queue.forget("alice")
        job = queue.submit("bob", data, replace(quick, time_limit_seconds=None), SPEC)
        assert job.config.time_limit_seconds == 600
    finally:
        queue.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_job_past_its_time_limit_stops_itself_keeps_the_best_epoch_and_says_why(data):
    queue = TrainingQueue()
    try:
        config = TrainConfig(TINY_MLP, epochs=1000, batch_size=8, patience=0, time_limit_seconds=3)
        job = queue.submit("alice", data, config, SPEC)
        assert job.wait(60)
    finally:
        queue.shutdown()
    snapshot = job.snapshot()
    assert snapshot.status == JobStatus.STOPPED and snapshot.stop_reason == "time limit"
    assert "time limit" in snapshot.message and "3 seconds" in snapshot.message
    assert "best epoch so far is kept" in snapshot.message
    assert 1 <= snapshot.epochs_done < 1000 and snapshot.elapsed_seconds < 30
    assert job.model is not None and job.card.stop_reason == "time limit"
    assert 1 <= job.card.best_epoch <= snapshot.epochs_done


@pytest.mark.slow
def test_training_stops_at_its_time_limit(data):
    split = splits.make_split(data, SPEC)
    config = TrainConfig(TINY_MLP, epochs=1000, batch_size=8, patience=0, time_limit_seconds=2)
    result = train(config, split.train, split.val)
    assert result.stop_reason == "time limit" and result.epochs_run < 1000
    assert result.seconds < 20 and result.best_epoch >= 1


# ---------------------------------------------------------------- 3. numbers in a shared URL

NUMERIC_KEYS = ("dropout", "epochs", "lr", "batch", "size", "patience", "val", "seed", "members")
NOT_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "9" * 5000, "", "1e3x"]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=lambda v: v[:12] or "empty")
@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_a_url_number_that_is_not_finite_keeps_the_preset_value(key, value):
    for arch in ("cnn", "mlp"):
        assert from_query({"arch": arch, key: value}) == defaults(arch), (key, value)


WIDGET_ENDS = {  # key: (its widget's lowest value, its highest)
    "dropout": (0.0, 0.8),
    "epochs": (1, MAX_EPOCHS),
    "lr": (defaults().lr, max(LEARNING_RATES)),  # a negative learning rate is ignored
    "batch": (min(BATCH_SIZES), max(BATCH_SIZES)),
    "size": (min(IMAGE_SIZES), max(IMAGE_SIZES)),
    "patience": (1, 20),
    "val": (0.1, 0.4),
    "seed": (0, 2**31 - 1),
    "members": (1, MAX_MEMBERS),
}


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_a_huge_finite_url_number_is_clamped_to_its_widget(key):
    low, high = WIDGET_ENDS[key]
    assert getattr(from_query({key: "9" * 40}), key) == high
    assert getattr(from_query({key: "-" + "9" * 40}), key) == low


def test_lr_nan_or_inf_is_not_the_slider_minimum():
    for value in ("nan", "inf", "-inf", "0", "-0.001"):
        assert from_query({"lr": value}).lr == defaults().lr, value
    assert from_query({"lr": "0.0009"}).lr == 1e-3  # a finite rate still snaps to the nearest


# ---------------------------------------------------------------- 4. the command line's numbers


@pytest.fixture
def cli_training(monkeypatch):
    """The configs the CLI would train (nothing is trained, nothing decoded)."""
    calls = []

    def fake(data_dir, config, spec, name, **kwargs):
        calls.append((config, spec))
        raise RuntimeError("not training in this test")

    monkeypatch.setattr(experiment, "train_on_folder", fake)
    monkeypatch.setattr(experiment, "load_arrays", lambda *a, **k: calls.append("decoded"))
    return calls


def train_args(data, *extra: str) -> list[str]:
    return ["train", "--arch", "cnn", "--data", str(data), "--out", str(data / "m.keras"), *extra]


BAD_NUMBERS = [
    ("--epochs", "-1"),
    ("--epochs", "0"),
    ("--epochs", "1001"),
    ("--epochs", "1e3"),
    ("--image-size", "0"),
    ("--image-size", "7"),
    ("--image-size", "20000"),
    ("--image-size", "9" * 5000),
    ("--batch-size", "-8"),
    ("--batch-size", "0"),
    ("--batch-size", "5000"),
    ("--block-size", "0"),
    ("--val-split", "0"),
    ("--val-split", "1"),
    ("--val-split", "nan"),
    ("--dropout", "1"),
    ("--dropout", "-0.1"),
    ("--dropout", "nan"),
    ("--lr", "0"),
    ("--lr", "-1e-3"),
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--lr", "1e400"),
    ("--patience", "-1"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--members", "0"),
    ("--members", "9"),
]


@pytest.mark.parametrize(("flag", "value"), BAD_NUMBERS, ids=lambda v: str(v)[:14])
def test_a_cli_number_out_of_range_is_one_usage_line_and_exit_2(
    flag, value, tiny_dataset, cli_training, capsys
):
    with pytest.raises(SystemExit) as exited:
        cli.main(train_args(tiny_dataset, f"{flag}={value}"))
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: argument {flag}: give ") and "--help" in lines[0]
    assert "Traceback" not in lines[0] and len(lines[0]) < 400
    assert not cli_training, "nothing is read or trained after a usage error"


def test_build_demo_refuses_a_bundle_of_no_slices(tiny_dataset, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["build-demo", "--data", str(tiny_dataset), "--bundle-size", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --bundle-size: give ")


def test_cli_numbers_in_range_reach_the_training_as_given(tiny_dataset, cli_training, capsys):
    args = ("--epochs", "1000", "--image-size", "8", "--batch-size", "1", "--val-split", "0.5")
    more = ("--dropout", "0", "--lr", "0.5", "--patience", "0", "--seed", "0", "--members", "2")
    assert cli.main(train_args(tiny_dataset, *args, *more, "--block-size", "1")) == 1
    assert "not training in this test" in capsys.readouterr().err
    ((config, spec),) = cli_training
    assert (config.epochs, config.batch_size, config.learning_rate) == (1000, 1, 0.5)
    assert config.architecture.image_size == 8 and config.architecture.dropout == 0.0
    assert config.architecture.members == 2 and config.patience == 0
    assert (spec.val_fraction, spec.block_size, spec.seed) == (0.5, 1, 0)


def test_absurd_cli_training_is_refused_before_any_data_is_decoded(
    tiny_dataset, cli_training, capsys
):
    args = ("--image-size", "256", "--batch-size", "4096", "--members", "8")
    assert cli.main(train_args(tiny_dataset, *args)) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: These settings would need about")
    assert "on this machine" in lines[0] and "GB of memory" in lines[0]
    assert not cli_training


def test_the_cli_bound_is_this_machine_s_memory_not_the_server_s(monkeypatch):
    monkeypatch.setattr(cli.os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**20}.get)
    assert cli.machine_limits().memory_bytes == 0.75 * 4 * 2**30
    assert cli.machine_limits().memory_bytes > SHARED_SERVER.memory_bytes


# ---------------------------------------------------------------- 5. names as Markdown

HOSTILE_CLASSES = ("**bold**", "![x](a.png)", "[y](javascript:alert(1))")


def hostile_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for index, name in enumerate(HOSTILE_CLASSES):
            for number in range(1, 7):
                pixels = np.full((16, 16), 40 * (index + 1) + number, np.uint8)
                image = io.BytesIO()
                Image.fromarray(pixels).save(image, format="PNG")
                bundle.writestr(f"{name}/{name} ({number}).png", image.getvalue())
    return buffer.getvalue()


def open_train(query: dict[str, str], data: str = "Upload a .zip of class folders") -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    for key, value in query.items():
        app.query_params[key] = value
    app.run()
    app.session_state["data"] = data  # chosen before the page first runs
    app.switch_page("app_pages/train/page.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def markdown_shown(app: AppTest) -> list[str]:
    """Every Markdown string the page sent: captions, markdown, errors, image captions."""
    texts = [element.value for element in (*app.caption, *app.markdown, *app.error)]
    for images in app.get("image"):
        texts += images.captions
    return texts


@pytest.mark.slow
def test_class_folder_names_reach_the_train_page_as_text_not_markdown():
    app = open_train({"split": "random"})
    app.file_uploader(key="data_zip").set_value(("names.zip", hostile_zip(), "application/zip"))
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    shown = markdown_shown(app)
    everything = "\n".join(shown)
    for name in HOSTILE_CLASSES:
        assert plain(name) in everything, name
        assert not any(name in text for text in shown), f"{name} reached Markdown raw"
    counts = next(text for text in shown if "18 slices" in text)
    assert all(f"{plain(name)} 6" in counts for name in HOSTILE_CLASSES)
    image_captions = [caption for images in app.get("image") for caption in images.captions]
    assert set(image_captions) >= {plain(name) for name in HOSTILE_CLASSES}


@pytest.mark.slow
def test_the_widest_link_shows_an_error_and_no_train_button_without_building(no_model_built):
    app = open_train(WIDEST, data="Embedded demo set (300 slices)")
    assert not app.exception, [e.value for e in app.exception]
    errors = [error.value for error in app.error]
    assert len(errors) == 1 and "would need about" in errors[0] and "400 MB" in errors[0]
    assert app.button(key="train").disabled
    assert any("parameters" in caption.value for caption in app.caption)
    assert not no_model_built


def test_chart_labels_escape_the_html_plotly_would_render():
    names = ["<b>bold</b>", "<a href='javascript:alert(1)'>y</a>"]
    figures = [
        charts.confusion_matrix([[1, 0], [0, 1]], names),
        charts.confusion_matrices({names[0]: ([[1, 0], [0, 1]], names, names)}),
        charts.probability_bars(dict(zip(names, (0.3, 0.7), strict=True))),
        charts.roc_overlay({names[1]: ([0, 1], [0, 1], 0.5)}),
        charts.run_overlay([(names[0], {"loss": [1.0]})], "loss"),
        charts.reliability_diagram(
            {names[0]: [{"count": 1, "mean_predicted": 0.5, "observed": 1.0}]}
        ),
    ]
    for figure in figures:
        spec = figure.to_json()
        assert "<b>" not in spec and "<a " not in spec and "&lt;" in spec

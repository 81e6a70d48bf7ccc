"""ctdemo.app.jobs, job_runner and queue: the training queue, its workers, live progress, stop,
failures, expiry.

Queue mechanics run a fake training (gated, instant, no TensorFlow work) so that who waits for
whom is decided by the test, not by timing; the end-to-end cases train tiny real models.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from ctdemo.app import job_runner
from ctdemo.app.job_runner import LUNG_HEAT_SLICES
from ctdemo.app.jobs import JobPhase, JobStatus, TrainingJob
from ctdemo.app.queue import AlreadyTraining, QueueFull, TrainingQueue, default_queue
from ctdemo.evaluation.splits import SplitSpec, make_split
from ctdemo.explain import saliency
from ctdemo.io.folders import ArrayDataset, load_arrays
from ctdemo.models import experiment
from ctdemo.models.specs import Architecture, TrainConfig

from conftest import make_image_folder

pytestmark = pytest.mark.timeout(120)

TINY_MLP = Architecture("mlp", 24, 0.2, hidden_units=(8,))
TINY_CNN = Architecture("cnn", 24, 0.1, hidden_units=(8,), filters=(4, 8))
SPEC = SplitSpec(block_size=4)  # tiny files 1-24 per class: groups of 4 consecutive numbers
WAIT = 60  # seconds: a broken queue fails the test instead of hanging it


def config(architecture=TINY_MLP, **changes) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 8, "patience": 0, "learning_rate": 3e-3}
    return TrainConfig(architecture, **{**values, **changes})


@pytest.fixture
def data(tiny_dataset):
    return load_arrays(tiny_dataset, 24)


@pytest.fixture
def queue():
    training = TrainingQueue()
    yield training
    training.shutdown(timeout=WAIT)


class FakeModel:
    pass


class FakeTraining:
    """Stands in for `experiment.train_on_arrays`: each epoch waits until the test opens the
    job's gate (or the job is stopped); a job named "boom..." raises at the end."""

    def __init__(self):
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def gate(self, name: str) -> threading.Event:
        return self.gates.setdefault(name, threading.Event())

    def start_of(self, name: str) -> threading.Event:
        return self.started.setdefault(name, threading.Event())

    def __call__(self, dataset, config, spec, name, *, on_epoch, on_batch, stop_event, **_):
        self.start_of(name).set()
        history: dict[str, list[float]] = {"loss": [], "val_loss": []}
        reason = "completed"
        for epoch in range(1, config.epochs + 1):
            on_batch(1, 2)
            while not self.gate(name).wait(0.005) and not stop_event.is_set():
                pass
            on_batch(2, 2)
            logs = {"loss": 1.0 / epoch, "val_loss": 1.0 / epoch}
            for key, value in logs.items():
                history[key].append(value)
            on_epoch(epoch, logs)
            if stop_event.is_set():
                reason = "stopped"
                break
        if name.startswith("boom"):
            raise RuntimeError("the fake training broke\nwith a second line")
        result = SimpleNamespace(
            model=FakeModel(),
            history=history,
            best_epoch=len(history["loss"]),
            stop_reason=reason,
            message="Stopped on request." if reason == "stopped" else "",
        )
        return result, SimpleNamespace(name=name)


@pytest.fixture
def fake(monkeypatch):
    training = FakeTraining()
    monkeypatch.setattr(experiment, "train_on_arrays", training)
    return training


def wait_for(condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.002)


# ------------------------------------------------------------------------------ real training


@pytest.mark.slow
def test_a_job_trains_to_done_with_live_history(queue, data):
    job = queue.submit("alice", data, config(epochs=6), SPEC, name="live")
    seen = []
    while not job.finished:
        snapshot = job.snapshot()
        if snapshot.status == JobStatus.RUNNING:
            seen.append((snapshot.epochs_done, snapshot.progress, snapshot.eta_seconds))
        time.sleep(0.001)
    assert job.wait(WAIT)
    epochs = sorted({epochs for epochs, _, _ in seen if epochs > 0})
    assert len(epochs) >= 2, f"saw only epochs {epochs} while it ran"
    progress = [fraction for _, fraction, _ in seen]
    assert progress == sorted(progress) and all(0 <= f <= 1 for f in progress)
    assert all(eta is not None and eta >= 0 for done, _, eta in seen if done > 0)
    final = job.snapshot()
    assert final.status == JobStatus.DONE and final.finished and final.progress == 1.0
    assert final.epochs_done == 6 and len(final.epoch_seconds) == 6
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(final.history)
    assert 1 <= final.best_epoch <= 6 and final.stop_reason == "completed"
    assert final.position is None and final.elapsed_seconds > 0 and final.has_model
    assert job.model is not None and job.card is not None and job.result is not None
    assert job.card.history["loss"] == list(final.history["loss"])
    assert job.dataset is None  # released: the arrays are not held by a finished job


@pytest.mark.slow
def test_stop_keeps_what_a_running_job_learned(queue, data):
    job = queue.submit("alice", data, config(epochs=500), SPEC)
    wait_for(lambda: job.snapshot().epochs_done >= 1)
    job.stop()
    assert job.wait(WAIT)
    snapshot = job.snapshot()
    assert snapshot.status == JobStatus.STOPPED and snapshot.stop_reason == "stopped"
    assert 1 <= snapshot.epochs_done < 500 and "best epoch" in snapshot.message
    assert job.model is not None and job.card is not None
    assert job.card.stop_reason == "stopped"


@pytest.mark.slow
def test_a_diverging_run_fails_with_the_explanation(queue, data):
    job = queue.submit("alice", data, config(learning_rate=1e6, weight_averaging=False), SPEC)
    assert job.wait(WAIT)
    snapshot = job.snapshot()
    assert snapshot.status == JobStatus.FAILED and snapshot.stop_reason == "nan"
    assert "NaN" in snapshot.message and "Lower the learning rate" in snapshot.message
    assert job.model is None and not snapshot.has_model


@pytest.mark.slow
def test_the_attention_timeline_has_one_frame_per_epoch(queue, data):
    slices = len(make_split(data, SPEC).val)
    job = queue.submit("alice", data, config(TINY_CNN), SPEC, attention_slice=slices - 1)
    assert job.wait(WAIT)
    snapshot = job.snapshot()
    assert snapshot.status == JobStatus.DONE and snapshot.attention_slice == slices - 1
    assert [frame.epoch for frame in snapshot.frames] == [1, 2, 3]
    for frame in snapshot.frames:
        assert frame.heatmap.dtype == np.uint8 and frame.heatmap.shape == (24, 24)
        assert not frame.heatmap.flags.writeable
        assert 0.0 <= frame.lung_share <= 1.0
    assert len(job.attention_seconds) == 3
    assert 0.05 < snapshot.attention_lung_area < 0.6  # the generated slices' two dark ellipses


@pytest.mark.slow
def test_a_cnn_run_ends_with_the_validation_heat_inside_the_lungs(queue, data):
    validation = make_split(data, SPEC).val
    job = queue.submit("alice", data, config(TINY_CNN, epochs=1), SPEC)
    assert job.wait(WAIT)
    heat = job.snapshot().lung_heat
    assert heat is not None and heat.validation_slices == len(validation)
    assert 0 < heat.share.n <= min(len(validation), LUNG_HEAT_SLICES)
    assert 0.0 <= heat.share.low <= heat.share.mean <= heat.share.high <= 1.0
    assert 0.05 < heat.lung_area < 0.6
    assert f"{heat.share.mean:.0%} of the final model's Grad-CAM heat" in heat.sentence()
    assert "blind to anatomy" in heat.sentence()
    assert job.lung_heat_seconds > 0


def test_the_final_lung_heat_spreads_over_at_most_its_slices_with_lungs(tmp_path, monkeypatch):
    lungs = load_arrays(make_image_folder(tmp_path / "many", per_class=75), 24).x
    x = np.concatenate([lungs, np.zeros((10, *lungs.shape[1:]), dtype=np.float32)])
    y = np.zeros(len(x), dtype=np.int32)
    validation = ArrayDataset(x, y, ["COVID", "non-COVID"], [str(i) for i in y], [], "test")
    explained = []

    def uniform_maps(model, images, labels):
        assert len(images) <= 16
        explained.extend(images)
        return np.ones(images.shape[:3], dtype=np.float32)

    monkeypatch.setattr(saliency, "gradcam_batch", uniform_maps)
    heat = job_runner._lung_heat(FakeModel(), validation, batch_size=16)
    assert len(explained) == heat.share.n and 50 <= heat.share.n <= LUNG_HEAT_SLICES
    assert not any((image == 0).all() for image in explained), "a slice without lungs was read"
    assert heat.share.mean == pytest.approx(heat.lung_area)  # a uniform map scores the area
    assert heat.validation_slices == 160


@pytest.mark.slow
def test_the_batched_grad_cam_draws_the_maps_explain_draws_one_by_one(data):
    import keras

    from ctdemo.explain.saliency import explain, gradcam_batch
    from ctdemo.models.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model(TINY_CNN, 2)
    images, labels = data.x[:5], np.array([0, 1, 1, 0, 1])
    maps = gradcam_batch(model, images, labels)
    assert maps.shape == (5, 24, 24) and (maps.reshape(5, -1).max(axis=1) > 0.99).all()
    for heat, image, label in zip(maps, images, labels, strict=True):
        np.testing.assert_allclose(heat, explain(model, image, "gradcam", int(label)), atol=1e-3)


def test_a_job_that_cannot_work_is_refused_before_it_waits(queue, data):
    with pytest.raises(ValueError, match="convolutional"):
        queue.submit("alice", data, config(TINY_MLP), SPEC, attention_slice=0)
    with pytest.raises(ValueError, match="validation slices"):
        queue.submit("alice", data, config(TINY_CNN), SPEC, attention_slice=10_000)
    with pytest.raises(ValueError, match="no slices for validation"):
        queue.submit("alice", data, config(), SplitSpec(block_size=25))
    assert queue.waiting == 0 and queue.running == 0


# ------------------------------------------------------------------------------ queue mechanics


def test_a_second_owner_waits_in_line_until_the_first_finishes(queue, data, fake):
    first = queue.submit("alice", data, config(), SPEC, name="first")
    second = queue.submit("bob", data, config(), SPEC, name="second")
    assert fake.start_of("first").wait(WAIT)
    assert first.snapshot().status == JobStatus.RUNNING and first.snapshot().position == 0
    waiting = second.snapshot()
    assert waiting.status == JobStatus.QUEUED and waiting.position == 1
    assert waiting.phase == JobPhase.WAITING
    assert waiting.elapsed_seconds == 0 and waiting.eta_seconds is None
    time.sleep(0.05)
    assert not fake.start_of("second").is_set(), "two trainings ran at once"
    fake.gate("first").set()
    assert first.wait(WAIT) and first.snapshot().status == JobStatus.DONE
    assert fake.start_of("second").wait(WAIT)
    fake.gate("second").set()
    assert second.wait(WAIT) and second.snapshot().status == JobStatus.DONE
    assert second.model is not None and second.card.name == "second"


def test_one_active_job_per_owner_and_a_bounded_line(data, fake):
    queue = TrainingQueue(max_waiting=2)
    try:
        running = queue.submit("alice", data, config(), SPEC, name="a")
        assert fake.start_of("a").wait(WAIT)
        with pytest.raises(AlreadyTraining, match="already have a model training"):
            queue.submit("alice", data, config(), SPEC, name="a2")
        queue.submit("bob", data, config(), SPEC, name="b")
        queue.submit("carol", data, config(), SPEC, name="c")
        with pytest.raises(QueueFull, match="2 trainings are already waiting"):
            queue.submit("dave", data, config(), SPEC, name="d")
        assert queue.active_job("alice") is running
        fake.gate("a").set()
        assert running.wait(WAIT) and fake.start_of("b").wait(WAIT)
        again = queue.submit("alice", data, config(), SPEC, name="a3")  # finished: may train again
        assert again.snapshot().position == 2
    finally:
        queue.shutdown(WAIT)


def test_stop_on_a_waiting_job_cancels_it_and_the_line_moves_up(queue, data, fake):
    queue.submit("alice", data, config(), SPEC, name="a")
    assert fake.start_of("a").wait(WAIT)
    middle = queue.submit("bob", data, config(), SPEC, name="b")
    last = queue.submit("carol", data, config(), SPEC, name="c")
    assert last.snapshot().position == 2
    middle.stop()
    assert middle.wait(1)
    snapshot = middle.snapshot()
    assert snapshot.status == JobStatus.CANCELLED and snapshot.position is None
    assert "before it started" in snapshot.message and middle.model is None
    assert last.snapshot().position == 1 and queue.waiting == 1
    assert "b" not in fake.started


def test_an_exception_fails_the_job_and_the_worker_serves_the_next(queue, data, fake):
    fake.gate("boom").set()
    broken = queue.submit("alice", data, config(), SPEC, name="boom")
    assert broken.wait(WAIT)
    snapshot = broken.snapshot()
    assert snapshot.status == JobStatus.FAILED and broken.model is None
    assert snapshot.message == "Training failed (RuntimeError: the fake training broke)."
    fake.gate("next").set()
    following = queue.submit("bob", data, config(), SPEC, name="next")
    assert following.wait(WAIT) and following.snapshot().status == JobStatus.DONE
    assert len([t for t in threading.enumerate() if t.name.startswith("ctdemo-training")]) >= 1


def test_a_stopped_fake_job_keeps_its_model(queue, data, fake):
    job = queue.submit("alice", data, config(epochs=50), SPEC, name="long")
    wait_for(lambda: job.snapshot().batch >= 1)
    job.stop()
    assert job.wait(WAIT)
    assert job.snapshot().status == JobStatus.STOPPED and job.model is not None


def test_finished_jobs_expire_after_their_time_to_live(data, fake):
    now = [1000.0]
    queue = TrainingQueue(ttl_seconds=60, clock=lambda: now[0])
    try:
        fake.gate("a").set()
        job = queue.submit("alice", data, config(), SPEC, name="a")
        assert job.wait(WAIT)
        model = weakref.ref(job.model)
        now[0] += 59
        assert queue.purge() == 0 and queue.get(job.id, "alice") is job
        assert queue.get(job.id, "bob") is None  # not someone else's to collect
        now[0] += 2
        assert queue.get(job.id) is None and queue.jobs_of("alice") == []
        assert job.model is None and job.card is None and job.result is None
        gc.collect()
        assert model() is None, "something still holds the expired model"
    finally:
        queue.shutdown(WAIT)


def test_forget_drops_an_owner_s_jobs_and_stops_a_running_one(queue, data, fake):
    fake.gate("done").set()
    finished = queue.submit("alice", data, config(), SPEC, name="done")
    assert finished.wait(WAIT)
    model = weakref.ref(finished.model)
    assert queue.forget("alice") == 1 and queue.jobs_of("alice") == []
    gc.collect()
    assert model() is None
    running = queue.submit("alice", data, config(epochs=50), SPEC, name="running")
    waiting = queue.submit("bob", data, config(), SPEC, name="bob")
    wait_for(lambda: running.snapshot().batch >= 1)
    assert queue.forget("bob") == 1 and waiting.snapshot().status == JobStatus.CANCELLED
    queue.forget("alice")
    assert running.wait(WAIT) and running.snapshot().status == JobStatus.STOPPED
    wait_for(lambda: queue.get(running.id) is None)
    assert running.model is None


def test_a_snapshot_is_a_copy_that_cannot_change_the_job(data):
    now = [0.0]
    job = TrainingJob("alice", data, config(epochs=10), SPEC, "x", clock=lambda: now[0])
    job.start()
    now[0] = 10.0
    job.on_epoch(1, {"loss": 0.9, "val_loss": 0.8})
    now[0] = 30.0
    job.on_epoch(2, {"loss": 0.7, "val_loss": 0.85})
    job.on_batch(1, 4)
    snapshot = job.snapshot()
    assert snapshot.epoch_seconds == (10.0, 20.0) and snapshot.elapsed_seconds == 30.0
    assert snapshot.best_epoch == 1 and snapshot.batch == 1 and snapshot.batches == 4
    assert snapshot.progress == pytest.approx(2.25 / 10)
    assert snapshot.eta_seconds == pytest.approx(20.0 * (10 - 2.25))  # epoch 1 traced: left out
    with pytest.raises(TypeError):
        snapshot.history["loss"] = (0.0,)
    with pytest.raises(AttributeError):
        snapshot.history["loss"].append(0.0)
    job.on_epoch(3, {"loss": 0.5, "val_loss": 0.5})
    assert snapshot.history["loss"] == (0.9, 0.7) and job.snapshot().best_epoch == 3


def test_the_default_queue_is_one_per_process():
    assert default_queue() is default_queue()
    assert default_queue().slots == 1


def test_a_status_reads_as_its_word_and_knows_whether_the_job_has_finished():
    assert JobStatus.DONE == "done" and JobStatus.STOPPED.capitalize() == "Stopped"
    finished = {status for status in JobStatus if status.finished}
    assert finished == {JobStatus.DONE, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.CANCELLED}

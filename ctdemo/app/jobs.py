"""Training jobs for the Train page: a process-wide queue, background workers, live progress.

A page never trains in its own script thread. It submits a `TrainingJob` to the
`TrainingQueue` (`default_queue()`), which runs at most `slots` trainings at once on daemon
worker threads; the others wait in line (first in, first out) and each knows its place. The
worker writes progress into the job under the job's lock (history so far, batches done in
the current epoch, epoch times, best epoch, attention frames) and the page reads it with
`job.snapshot()`: an immutable copy, cheap enough to take on every poll. No Streamlit here.

`job.stop()` ends a running job at the next batch and keeps what it learned (the best epoch's
weights; status "stopped", with a model and a card); a waiting job is taken out of the line
("cancelled"). The queue's `limits` bound each job: settings estimated past its memory or time
are refused before they wait (`TooCostly`, nothing built), and a running job stops itself at
the time limit the same way as on request, saying so. A job that fails (an exception, a loss
that turns NaN) ends "failed" with a one-line message for a person; the worker goes on to the
next job.

Memory: each job holds one model. Finished jobs are kept for their owner to collect for
`ttl_seconds` and then dropped, their model, card and arrays released (`forget(owner)` does it
at once, for a session that ends). A job's dataset is released as soon as it finishes.

The attention timeline: given `attention_slice` (an index into the run's validation split,
`validation_split(dataset, spec)`), a CNN job computes at the end of every epoch the Grad-CAM
of that slice for its true class on the model as validated, and keeps it as a small uint8
heatmap at the model's input size (30-60 ms per epoch for the 'cnn' preset, 1-2% of an epoch:
`benchmarks/train_bench.py`), with the share of its heat inside the slice's lungs (segmented
once, at the model's input size). When a CNN run ends with a model, the final model's Grad-CAM
of up to LUNG_HEAT_SLICES validation slices (those where lungs were found) gives the mean heat
inside the lungs with a 95% bootstrap interval (`LungHeat`), beside the lungs' mean area: what
a map blind to anatomy would score.
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from ctdemo.app.train_settings import SHARED_SERVER, CostLimits, check_cost, estimate
from ctdemo.evaluation.splits import SplitData, SplitSpec, make_split
from ctdemo.explain.lungs import heat_share, segment_lungs
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.specs import TrainConfig

if TYPE_CHECKING:  # TensorFlow loads when a job runs, not when a page imports this module
    import keras

    from ctdemo.explain.trust import Estimate
    from ctdemo.models.cards import ModelCard
    from ctdemo.models.experiment import ExperimentResult

QUEUED, RUNNING, DONE, STOPPED, FAILED, CANCELLED = (
    "queued",
    "running",
    "done",
    "stopped",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, DONE, STOPPED, FAILED, CANCELLED)
FINISHED = frozenset({DONE, STOPPED, FAILED, CANCELLED})

DEFAULT_SLOTS = 1
"""Trainings at once: on a 2-core server two trainings each run at about half speed."""
DEFAULT_MAX_WAITING = 8
DEFAULT_TTL_SECONDS = 30 * 60
MAX_MESSAGE_CHARS = 300
LUNG_HEAT_SLICES = 60
"""Validation slices the final model explains for the mean heat inside the lungs: the interval
is a few points wide at 60, and each Grad-CAM costs about one attention frame."""


class QueueFull(ValueError):
    """A job the queue will not take now; the message is written for a person."""


class AlreadyTraining(QueueFull):
    """The owner already has a job waiting or running."""


@dataclass(frozen=True)
class AttentionFrame:
    """Where the model looked at the attention slice at the end of one epoch."""

    epoch: int  # 1-based
    heatmap: np.ndarray  # uint8 (size, size), 0-255 for Grad-CAM 0-1; read-only
    lung_share: float | None = None  # the heat inside the slice's lungs; None: lungs not found


@dataclass(frozen=True)
class LungHeat:
    """How much of the final model's Grad-CAM heat (true class) falls inside the lungs."""

    share: Estimate  # mean over the explained validation slices, with its 95% interval
    lung_area: float  # the lungs' mean share of those slices: a map blind to anatomy's score
    validation_slices: int  # in the split; `share.n` of them (lungs found) were explained

    def sentence(self) -> str:
        """The number and its yardstick, for a person."""
        share = self.share
        return (
            f"On {share.n} of the {self.validation_slices} validation slices (those where the "
            f"lungs were found), {share.mean:.0%} of the final model's Grad-CAM heat falls "
            f"inside the lungs (95% CI {share.low:.0%}–{share.high:.0%}). The lungs cover "
            f"{self.lung_area:.0%} of those slices: a map blind to anatomy would put "
            f"{self.lung_area:.0%} there."
        )


@dataclass(frozen=True)
class JobSnapshot:
    """What a page shows of a job at one moment; a copy, safe to keep and read anywhere."""

    id: str
    owner: str
    name: str
    status: str  # one of STATUSES
    phase: str  # "waiting", "preparing", "training", "measuring" (after the last epoch), "finished"
    position: int | None  # 1 = next to start; 0 while running; None when finished
    history: MappingProxyType  # key -> tuple of per-epoch values (loss, val_accuracy, ...)
    epochs_done: int
    epochs_total: int
    batch: int  # batches done in the current epoch
    batches: int  # batches per epoch (0 until the first batch)
    progress: float  # 0-1 over the planned epochs; 1 when finished
    elapsed_seconds: float  # since the job started (0 while it waits)
    eta_seconds: float | None  # median epoch time x epochs left; None before the first epoch
    epoch_seconds: tuple[float, ...]
    best_epoch: int  # 1-based; 0 before a finite validation loss
    early_stop_epoch: int | None  # the last epoch when early stopping ended the run
    stop_reason: str  # training's: "completed", "early stopping", "stopped", "time limit", "nan"
    message: str  # for a person: why it stopped, failed or was cancelled
    attention_slice: int | None
    frames: tuple[AttentionFrame, ...]
    attention_lung_area: float | None  # the lungs' share of the attention slice; None: not found
    lung_heat: LungHeat | None  # once a CNN run has ended with a model
    has_model: bool
    started_at: float | None = None  # wall clock (time.time()) when it started, finished
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class _Progress:
    """The live part of a job; read and written only under the job's lock."""

    status: str = QUEUED
    phase: str = "waiting"
    position: int | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    batch: int = 0
    batches: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    last_mark: float = 0.0  # monotonic time of the run's start or of the last epoch's end
    started: float | None = None  # monotonic
    finished: float | None = None  # monotonic
    started_at: float | None = None  # wall clock, for display
    finished_at: float | None = None
    best_epoch: int = 0
    stop_reason: str = ""
    message: str = ""
    frames: list[AttentionFrame] = field(default_factory=list)
    attention_seconds: list[float] = field(default_factory=list)
    attention_lung_area: float | None = None
    lung_heat: LungHeat | None = None


class TrainingJob:
    """One training run, from the queue to a model (or a reason why not)."""

    def __init__(
        self,
        owner: str,
        dataset: ArrayDataset,
        config: TrainConfig,
        spec: SplitSpec,
        name: str,
        attention_slice: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.name = name
        self.config = config
        self.spec = spec
        self.dataset: ArrayDataset | None = dataset  # released when the job finishes
        self.attention_slice = attention_slice
        self.submitted_at = time.time()
        self.model: keras.Model | None = None
        self.card: ModelCard | None = None
        self.result: ExperimentResult | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._finished_event = threading.Event()
        self._progress = _Progress()
        self._queue: TrainingQueue | None = None
        self._forgotten = False  # set by forget(): dropped as soon as it finishes
        self.lung_heat_seconds = 0.0  # what the final heat-inside-the-lungs cost (benchmark)

    # --- reading --------------------------------------------------------------------------

    @property
    def status(self) -> str:
        with self._lock:
            return self._progress.status

    @property
    def finished(self) -> bool:
        return self._finished_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or `timeout` seconds pass (False)."""
        return self._finished_event.wait(timeout)

    def snapshot(self) -> JobSnapshot:
        now = self._clock()
        with self._lock:
            p = self._progress
            history = MappingProxyType({key: tuple(values) for key, values in p.history.items()})
            epoch_seconds = tuple(p.epoch_seconds)
            frames = tuple(p.frames)
            status, batch, batches = p.status, p.batch, p.batches
            started, finished = p.started, p.finished
            position, phase, best_epoch = p.position, p.phase, p.best_epoch
            stop_reason, message = p.stop_reason, p.message
            started_at, finished_at = p.started_at, p.finished_at
            lung_area, lung_heat = p.attention_lung_area, p.lung_heat
            has_model = self.model is not None
        epochs_done = len(history.get("loss", ()))
        total = self.config.epochs
        within = batch / batches if batches and status == RUNNING else 0.0
        if status in FINISHED:
            progress = 1.0
        else:
            progress = min(1.0, (epochs_done + within) / total) if total else 0.0
        elapsed = 0.0 if started is None else (finished if finished is not None else now) - started
        eta = None
        if status == RUNNING and epoch_seconds:
            typical = epoch_seconds[1:] or epoch_seconds  # the first epoch also traces the graph
            eta = statistics.median(typical) * max(0.0, total - epochs_done - within)
        return JobSnapshot(
            id=self.id,
            owner=self.owner,
            name=self.name,
            status=status,
            phase=phase,
            position=position,
            history=history,
            epochs_done=epochs_done,
            epochs_total=total,
            batch=batch,
            batches=batches,
            progress=progress,
            elapsed_seconds=elapsed,
            eta_seconds=eta,
            epoch_seconds=epoch_seconds,
            best_epoch=best_epoch,
            early_stop_epoch=epochs_done if stop_reason == "early stopping" else None,
            stop_reason=stop_reason,
            message=message,
            attention_slice=self.attention_slice,
            frames=frames,
            attention_lung_area=lung_area,
            lung_heat=lung_heat,
            has_model=has_model,
            started_at=started_at,
            finished_at=finished_at,
        )

    @property
    def attention_seconds(self) -> list[float]:
        """Seconds each attention frame took to compute (for the benchmark)."""
        with self._lock:
            return list(self._progress.attention_seconds)

    # --- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop at the next batch, keeping the best epoch so far; a waiting job is cancelled."""
        if self._queue is not None:
            self._queue._stop(self)
        else:
            self._stop_event.set()

    # --- written by the queue and its worker ----------------------------------------------

    def _set_position(self, position: int | None) -> None:
        with self._lock:
            self._progress.position = position

    def _start(self) -> None:
        with self._lock:
            p = self._progress
            p.status, p.phase, p.position = RUNNING, "preparing", 0
            p.started = p.last_mark = self._clock()
            p.started_at = time.time()

    def _on_batch(self, done: int, total: int) -> None:
        with self._lock:
            p = self._progress
            p.batch, p.batches = done, total
            if p.phase == "preparing":
                p.phase = "training"

    def _on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        now = self._clock()
        with self._lock:
            p = self._progress
            for key, value in logs.items():
                p.history.setdefault(key, []).append(value)
            p.epoch_seconds.append(now - p.last_mark)
            p.last_mark = now
            p.batch = 0
            p.best_epoch = _best_epoch(p.history.get("val_loss", ())) or p.best_epoch
            limit = self.config.time_limit_seconds or math.inf
            out_of_time = p.started is not None and now - p.started >= limit
            if epoch >= self.config.epochs or self._stop_event.is_set() or out_of_time:
                p.phase = "measuring"  # validation metrics and the OOD detector come next

    def _add_frame(self, frame: AttentionFrame, seconds: float) -> None:
        with self._lock:
            self._progress.frames.append(frame)
            self._progress.attention_seconds.append(seconds)

    def _set_attention_lungs(self, lung_area: float | None) -> None:
        with self._lock:
            self._progress.attention_lung_area = lung_area

    def _set_lung_heat(self, lung_heat: LungHeat | None, seconds: float) -> None:
        with self._lock:
            self._progress.lung_heat = lung_heat
        self.lung_heat_seconds = seconds

    def _finish(
        self,
        status: str,
        message: str = "",
        result: ExperimentResult | None = None,
        card: ModelCard | None = None,
    ) -> None:
        with self._lock:
            p = self._progress
            p.status, p.phase, p.position, p.message = status, "finished", None, message
            p.finished = self._clock()
            p.finished_at = time.time()
            if result is not None:
                p.stop_reason = result.stop_reason
                p.history = {key: list(values) for key, values in result.history.items()}
                p.best_epoch = result.best_epoch
            if result is not None and status in (DONE, STOPPED):
                self.result, self.card, self.model = result, card, result.model
            self.dataset = None
        self._finished_event.set()

    def _finished_since(self) -> float | None:
        with self._lock:
            return self._progress.finished

    def _release(self) -> None:
        """Drop the model, its card, result and frames: the job is forgotten."""
        with self._lock:
            self.model = self.card = self.result = None
            self.dataset = None
            self._progress.frames = []

    def __repr__(self) -> str:
        return f"TrainingJob({self.id!r}, owner={self.owner!r}, status={self.status!r})"


def _best_epoch(val_loss) -> int:
    finite = [(value, index) for index, value in enumerate(val_loss) if math.isfinite(value)]
    return min(finite)[1] + 1 if finite else 0


def validation_split(dataset: ArrayDataset, spec: SplitSpec) -> SplitData:
    """The train/validation split a job on `dataset` with `spec` will use (deterministic):
    its `val` slices are the ones an `attention_slice` index points into."""
    return make_split(dataset, spec)


class TrainingQueue:
    """At most `slots` trainings at once; the rest wait in line, at most `max_waiting` of them,
    and an owner has at most one job waiting or running. Each job stays within `limits`.
    Finished jobs are kept `ttl_seconds`."""

    def __init__(
        self,
        slots: int = DEFAULT_SLOTS,
        max_waiting: int = DEFAULT_MAX_WAITING,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limits: CostLimits = SHARED_SERVER,
    ):
        if slots < 1:
            raise ValueError("A training queue needs at least one slot.")
        self.slots = slots
        self.limits = limits
        self.max_waiting = max_waiting
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._condition = threading.Condition()
        self._waiting: collections.deque[TrainingJob] = collections.deque()
        self._running: set[TrainingJob] = set()
        self._jobs: dict[str, TrainingJob] = {}  # every job not yet forgotten, by id
        self._workers: list[threading.Thread] = []
        self._closed = False

    # --- submitting -----------------------------------------------------------------------

    def submit(
        self,
        owner: str,
        dataset: ArrayDataset,
        config: TrainConfig,
        spec: SplitSpec | None = None,
        name: str = "my-model",
        attention_slice: int | None = None,
    ) -> TrainingJob:
        """Put a training in line; raises `QueueFull` (or `AlreadyTraining`) when it cannot
        wait now, `TooCostly` for settings past the queue's limits, `ValueError` for a split
        with an empty side or an attention slice that cannot be drawn."""
        spec = spec or SplitSpec()
        config = self._within_limits(config, dataset, spec)
        _check_split(dataset, config, spec, attention_slice)
        job = TrainingJob(owner, dataset, config, spec, name, attention_slice, self._clock)
        job._queue = self
        with self._condition:
            if self._closed:
                raise QueueFull("The training queue is shut down.")
            self._purge_locked()
            if any(j.owner == owner for j in (*self._waiting, *self._running)):
                raise AlreadyTraining(
                    "You already have a model training or waiting to train: stop it, or wait "
                    "for it to finish, before starting another."
                )
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"{len(self._waiting)} trainings are already waiting for this server; "
                    "please try again in a few minutes."
                )
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._renumber_locked()
            self._start_workers_locked()
            self._condition.notify_all()
        return job

    def _within_limits(
        self, config: TrainConfig, dataset: ArrayDataset, spec: SplitSpec
    ) -> TrainConfig:
        """`config` with the queue's time limit, or `TooCostly` if its estimate is past the
        limits (counted from the settings: no model is built)."""
        cost = estimate(config, len(dataset), len(dataset.class_names), spec.val_fraction)
        check_cost(cost, self.limits)
        limit = min(config.time_limit_seconds or math.inf, self.limits.seconds)
        return replace(config, time_limit_seconds=limit)

    # --- reading --------------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None = None) -> TrainingJob | None:
        """The job with this id (None if unknown, forgotten, or another owner's)."""
        with self._condition:
            self._purge_locked()
            job = self._jobs.get(job_id)
        return job if job is not None and (owner is None or job.owner == owner) else None

    def jobs_of(self, owner: str) -> list[TrainingJob]:
        """An owner's jobs not yet forgotten, oldest first."""
        with self._condition:
            self._purge_locked()
            return [job for job in self._jobs.values() if job.owner == owner]

    def active_job(self, owner: str) -> TrainingJob | None:
        """The owner's job that is waiting or running, if any."""
        with self._condition:
            return next((j for j in (*self._running, *self._waiting) if j.owner == owner), None)

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)

    @property
    def running(self) -> int:
        with self._condition:
            return len(self._running)

    # --- forgetting -----------------------------------------------------------------------

    def forget(self, owner: str) -> int:
        """Stop or cancel the owner's active job and drop all their jobs; returns how many were
        dropped. A running job is dropped when it has stopped (at its next batch)."""
        with self._condition:
            jobs = [job for job in self._jobs.values() if job.owner == owner]
            for job in jobs:
                if job in self._waiting:
                    self._cancel_locked(job)
                elif job in self._running:
                    job._forgotten = True
                    job._stop_event.set()
            for job in jobs:
                if job.finished:
                    self._drop_locked(job)
            return len(jobs)

    def purge(self) -> int:
        """Drop finished jobs older than the time-to-live; returns how many were dropped."""
        with self._condition:
            return self._purge_locked()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Cancel waiting jobs, stop running ones and end the workers (tests, process exit)."""
        with self._condition:
            self._closed = True
            for job in list(self._waiting):
                self._cancel_locked(job)
            for job in self._running:
                job._stop_event.set()
            self._condition.notify_all()
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)

    # --- internals (call with the condition held unless said otherwise) ---------------------

    def _stop(self, job: TrainingJob) -> None:
        with self._condition:
            if job in self._waiting:
                self._cancel_locked(job)
            else:
                job._stop_event.set()

    def _cancel_locked(self, job: TrainingJob) -> None:
        self._waiting.remove(job)
        job._stop_event.set()
        job._finish(CANCELLED, "Cancelled before it started.")
        self._renumber_locked()
        self._condition.notify_all()

    def _renumber_locked(self) -> None:
        for position, job in enumerate(self._waiting, start=1):
            job._set_position(position)

    def _drop_locked(self, job: TrainingJob) -> None:
        self._jobs.pop(job.id, None)
        job._release()

    def _purge_locked(self) -> int:
        now, dropped = self._clock(), 0
        for job in list(self._jobs.values()):
            finished = job._finished_since()
            if finished is not None and now - finished >= self.ttl_seconds:
                self._drop_locked(job)
                dropped += 1
        return dropped

    def _next_expiry_locked(self) -> float | None:
        """Seconds until the oldest finished job expires (None if none is finished)."""
        times = [t for job in self._jobs.values() if (t := job._finished_since()) is not None]
        if not times:
            return None
        return max(0.0, min(times) + self.ttl_seconds - self._clock())

    def _start_workers_locked(self) -> None:
        self._workers = [worker for worker in self._workers if worker.is_alive()]
        while len(self._workers) < self.slots:
            worker = threading.Thread(
                target=self._work, name=f"ctdemo-training-{len(self._workers)}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        """A worker: take the next job, run it, repeat; expire old jobs while idle."""
        while True:
            with self._condition:
                while not self._closed and not self._waiting:
                    self._purge_locked()
                    expiry = self._next_expiry_locked()
                    self._condition.wait(60.0 if expiry is None else min(60.0, expiry + 0.01))
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running.add(job)
                self._renumber_locked()
                job._start()
            try:
                run_job(job)
            except BaseException as error:  # never let a job end the worker
                job._finish(FAILED, _one_line(error))
            finally:
                with self._condition:
                    self._running.discard(job)
                    if job._forgotten:
                        self._drop_locked(job)
                    self._purge_locked()
                    self._condition.notify_all()


def run_job(job: TrainingJob) -> None:
    """Train `job` in this thread, writing progress into it, and finish it (never raises
    for a training that goes wrong: the job ends "failed" with the reason)."""
    from ctdemo.models.experiment import train_on_arrays

    dataset = job.dataset
    if dataset is None:
        job._finish(FAILED, "The job has no data (it was already run or forgotten).")
        return
    try:
        split = validation_split(dataset, job.spec)
        on_epoch_model = _attention_hook(job, split) if job.attention_slice is not None else None
        result, card = train_on_arrays(
            dataset,
            job.config,
            job.spec,
            job.name,
            on_epoch=job._on_epoch,
            on_batch=job._on_batch,
            stop_event=job._stop_event,
            on_epoch_model=on_epoch_model,
        )
    except Exception as error:
        job._finish(FAILED, _one_line(error))
        return
    if result.stop_reason == "nan":
        job._finish(FAILED, result.message, result)
        return
    if job.config.architecture.kind == "cnn" and not job._forgotten:
        started = time.perf_counter()
        heat = _lung_heat(result.model, split.val, job.config.batch_size)
        job._set_lung_heat(heat, time.perf_counter() - started)
    if result.stop_reason in ("stopped", "time limit"):
        job._finish(STOPPED, result.message, result, card)
    else:
        job._finish(DONE, result.message, result, card)


def _attention_hook(job: TrainingJob, split: SplitData) -> Callable[[Any, int], None]:
    """The per-epoch Grad-CAM of the attention slice, for its true class, as a uint8 frame
    with the share of its heat inside the slice's lungs."""
    from ctdemo.explain.saliency import explain

    image = split.val.x[job.attention_slice]
    label = int(split.val.y[job.attention_slice])
    lungs = segment_lungs(image[..., 0])
    job._set_attention_lungs(lungs.area_share if lungs.ok else None)

    def on_epoch_model(model: Any, epoch: int) -> None:
        started = time.perf_counter()
        heatmap = explain(model, image, "gradcam", label)
        frame = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
        frame.flags.writeable = False
        share = heat_share(heatmap, lungs.mask) if lungs.ok else None
        job._add_frame(AttentionFrame(epoch, frame, share), time.perf_counter() - started)

    return on_epoch_model


def _lung_heat(model: keras.Model, validation: ArrayDataset, batch_size: int) -> LungHeat | None:
    """The final model's heat inside the lungs over up to LUNG_HEAT_SLICES validation slices,
    spread over the split, among those where the lungs were found; None where none were.
    Grad-CAM runs `batch_size` slices at once: less memory than a training step of that batch,
    which the job's cost check has allowed."""
    from ctdemo.explain.saliency import gradcam_batch
    from ctdemo.explain.trust import estimate

    masks = [segment_lungs(image[..., 0]) for image in validation.x]
    found = [index for index, lungs in enumerate(masks) if lungs.ok]
    chosen = found[:: max(1, math.ceil(len(found) / LUNG_HEAT_SLICES))]
    if not chosen:
        return None
    shares = []
    for start in range(0, len(chosen), batch_size):
        part = chosen[start : start + batch_size]
        maps = gradcam_batch(model, validation.x[part], validation.y[part])
        shares += [heat_share(heat, masks[i].mask) for heat, i in zip(maps, part, strict=True)]
    share = estimate(shares)
    area = float(np.mean([masks[i].area_share for i in chosen]))
    return LungHeat(share, area, len(validation))


def _check_split(
    dataset: ArrayDataset, config: TrainConfig, spec: SplitSpec, attention_slice: int | None
) -> None:
    """Refuse, before it waits in line, a job whose split or attention slice cannot work."""
    split = validation_split(dataset, spec)
    if len(split.val) == 0 or len(split.train) == 0:
        side = "validation" if len(split.val) == 0 else "training"
        raise ValueError(
            f"This split leaves no slices for {side} ({len(dataset)} slices, {spec.method} "
            "split): add images, change the validation fraction, or choose the random split."
        )
    if attention_slice is None:
        return
    if config.architecture.kind != "cnn":
        raise ValueError(
            "The attention timeline needs a convolutional network (CNN): an MLP has no "
            "convolution for Grad-CAM to read."
        )
    size = len(split.val)
    if not 0 <= attention_slice < size:
        raise ValueError(
            f"The attention slice must be one of the {size} validation slices (0 to {size - 1})."
        )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    if not isinstance(error, ValueError) or not text:  # ours are written for a person
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        text = f"Training failed ({text})."
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


_default_queue: TrainingQueue | None = None
_default_lock = threading.Lock()


def default_queue() -> TrainingQueue:
    """The process-wide queue every session of the app shares."""
    global _default_queue
    with _default_lock:
        if _default_queue is None:
            _default_queue = TrainingQueue()
        return _default_queue

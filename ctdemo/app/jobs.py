"""A training job: one run's live progress, written by its worker and read as snapshots.

The worker (`ctdemo.app.job_runner`, on a thread of `ctdemo.app.queue`) writes progress into
the job under the job's lock: history so far, batches done in the current epoch, epoch times,
best epoch, attention frames, the final heat inside the lungs. A page reads it with
`job.snapshot()`: an immutable copy, cheap enough to take on every poll. No Streamlit here.

`job.stop()` ends a running job at the next batch and keeps what it learned (the best epoch's
weights: `JobStatus.STOPPED`, with a model and a card); a waiting job is taken out of the line
(`JobStatus.CANCELLED`). A job that fails ends `JobStatus.FAILED` with a one-line message for
a person.
"""

from __future__ import annotations

import enum
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from ctdemo.evaluation.shortcut import Shortcut
from ctdemo.evaluation.splits import SplitSpec
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.specs import TrainConfig

if TYPE_CHECKING:  # TensorFlow loads when a job runs, not when a page imports this module
    import keras

    from ctdemo.explain.trust import Estimate
    from ctdemo.models.cards import ModelCard
    from ctdemo.models.experiment import ExperimentResult


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # on request or at the time limit, with the best epoch's model
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped while it waited

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class JobPhase(enum.StrEnum):
    WAITING = "waiting"
    PREPARING = "preparing"
    TRAINING = "training"
    MEASURING = "measuring"  # after the last epoch: validation metrics, the OOD detector
    FINISHED = "finished"


@dataclass(frozen=True)
class AttentionFrame:
    """Where the model looked at the attention slice at the end of one epoch."""

    epoch: int  # 1-based
    heatmap: np.ndarray  # uint8 (size, size), 0-255 for Grad-CAM 0-1; read-only
    lung_share: float | None = None  # the heat inside the slice's lungs; None: lungs not found
    marker_share: float | None = None  # the heat on a planted marker; None: no marker


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
    status: JobStatus
    phase: JobPhase
    position: int | None  # 1 = next to start; 0 while running; None when finished
    history: Mapping[str, tuple[float, ...]]  # read-only: loss, val_accuracy, ... per epoch
    epochs_total: int
    batch: int  # batches done in the current epoch
    batches: int  # batches per epoch (0 until the first batch)
    elapsed_seconds: float  # since the job started (0 while it waits)
    epoch_seconds: tuple[float, ...]
    best_epoch: int  # 1-based; 0 before a finite validation loss
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
        return self.status.finished

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("loss", ()))

    @property
    def early_stop_epoch(self) -> int | None:
        """The last epoch when early stopping ended the run."""
        return self.epochs_done if self.stop_reason == "early stopping" else None

    @property
    def progress(self) -> float:
        """0-1 over the planned epochs, counting the current epoch's batches; 1 when finished."""
        if self.finished:
            return 1.0
        return min(1.0, self._epochs_counted / self.epochs_total) if self.epochs_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """The median epoch time times the epochs left; None before the first epoch."""
        if self.status != JobStatus.RUNNING or not self.epoch_seconds:
            return None
        typical = self.epoch_seconds[1:] or self.epoch_seconds  # the first also traces the graph
        return statistics.median(typical) * max(0.0, self.epochs_total - self._epochs_counted)

    @property
    def _epochs_counted(self) -> float:
        running = self.status == JobStatus.RUNNING and self.batches
        return self.epochs_done + (self.batch / self.batches if running else 0.0)


@dataclass
class _Progress:
    """The live part of a job; read and written only under the job's lock."""

    status: JobStatus = JobStatus.QUEUED
    phase: JobPhase = JobPhase.WAITING
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

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.finished if self.finished is not None else now) - self.started


class TrainingJob:
    """One training run, from the queue to a model (or a reason why not).

    `cancel` is the queue's: it takes the job out of the line if it is still waiting, and says
    whether it did."""

    def __init__(
        self,
        owner: str,
        dataset: ArrayDataset,
        config: TrainConfig,
        spec: SplitSpec,
        name: str,
        attention_slice: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        cancel: Callable[[TrainingJob], bool] | None = None,
        shortcut: Shortcut | None = None,
    ):
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.name = name
        self.config = config
        self.spec = spec
        self.dataset: ArrayDataset | None = dataset  # released when the job finishes
        self.attention_slice = attention_slice
        self.shortcut = shortcut  # a marker planted on copies of the split, or None
        self.submitted_at = time.time()
        self.model: keras.Model | None = None
        self.card: ModelCard | None = None
        self.result: ExperimentResult | None = None
        self.stop_event = threading.Event()  # training checks it at every batch
        self.forgotten = False  # set by forget(): dropped as soon as it finishes
        self.lung_heat_seconds = 0.0  # what the final heat-inside-the-lungs cost (benchmark)
        self._clock = clock
        self._cancel = cancel
        self._lock = threading.Lock()
        self._finished_event = threading.Event()
        self._progress = _Progress()

    # --- reading --------------------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
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
            return JobSnapshot(
                id=self.id,
                owner=self.owner,
                name=self.name,
                status=p.status,
                phase=p.phase,
                position=p.position,
                history=MappingProxyType({key: tuple(values) for key, values in p.history.items()}),
                epochs_total=self.config.epochs,
                batch=p.batch,
                batches=p.batches,
                elapsed_seconds=p.elapsed(now),
                epoch_seconds=tuple(p.epoch_seconds),
                best_epoch=p.best_epoch,
                stop_reason=p.stop_reason,
                message=p.message,
                attention_slice=self.attention_slice,
                frames=tuple(p.frames),
                attention_lung_area=p.attention_lung_area,
                lung_heat=p.lung_heat,
                has_model=self.model is not None,
                started_at=p.started_at,
                finished_at=p.finished_at,
            )

    @property
    def attention_seconds(self) -> list[float]:
        """Seconds each attention frame took to compute (for the benchmark)."""
        with self._lock:
            return list(self._progress.attention_seconds)

    def finished_since(self) -> float | None:
        """The clock's time when the job finished; None while it waits or runs."""
        with self._lock:
            return self._progress.finished

    # --- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop at the next batch, keeping the best epoch so far; a waiting job is cancelled."""
        if self._cancel is None or not self._cancel(self):
            self.stop_event.set()

    def forget(self) -> None:
        """Stop at the next batch, to be dropped as soon as the job has finished."""
        self.forgotten = True
        self.stop_event.set()

    # --- written by the queue and its worker ----------------------------------------------

    def set_position(self, position: int | None) -> None:
        with self._lock:
            self._progress.position = position

    def start(self) -> None:
        with self._lock:
            p = self._progress
            p.status, p.phase, p.position = JobStatus.RUNNING, JobPhase.PREPARING, 0
            p.started = p.last_mark = self._clock()
            p.started_at = time.time()

    def on_batch(self, done: int, total: int) -> None:
        with self._lock:
            p = self._progress
            p.batch, p.batches = done, total
            if p.phase == JobPhase.PREPARING:
                p.phase = JobPhase.TRAINING

    def on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        now = self._clock()
        with self._lock:
            p = self._progress
            for key, value in logs.items():
                p.history.setdefault(key, []).append(value)
            p.epoch_seconds.append(now - p.last_mark)
            p.last_mark = now
            p.batch = 0
            p.best_epoch = _best_epoch(p.history.get("val_loss", ())) or p.best_epoch
            out_of_time = p.elapsed(now) >= (self.config.time_limit_seconds or math.inf)
            if epoch >= self.config.epochs or self.stop_event.is_set() or out_of_time:
                p.phase = JobPhase.MEASURING

    def add_frame(self, frame: AttentionFrame, seconds: float) -> None:
        with self._lock:
            self._progress.frames.append(frame)
            self._progress.attention_seconds.append(seconds)

    def set_attention_lungs(self, lung_area: float | None) -> None:
        with self._lock:
            self._progress.attention_lung_area = lung_area

    def set_lung_heat(self, lung_heat: LungHeat | None, seconds: float) -> None:
        with self._lock:
            self._progress.lung_heat = lung_heat
        self.lung_heat_seconds = seconds

    def finish(
        self,
        status: JobStatus,
        message: str = "",
        result: ExperimentResult | None = None,
        card: ModelCard | None = None,
    ) -> None:
        """End the job: keep the model and card of a run that is done or stopped."""
        with self._lock:
            p = self._progress
            p.status, p.phase, p.position, p.message = status, JobPhase.FINISHED, None, message
            p.finished = self._clock()
            p.finished_at = time.time()
            if result is not None:
                p.stop_reason = result.stop_reason
                p.history = {key: list(values) for key, values in result.history.items()}
                p.best_epoch = result.best_epoch
            if result is not None and status in (JobStatus.DONE, JobStatus.STOPPED):
                self.result, self.card, self.model = result, card, result.model
            self.dataset = None
        self._finished_event.set()

    def release(self) -> None:
        """Drop the model, its card, result and frames: the job is forgotten."""
        with self._lock:
            self.model = self.card = self.result = None
            self.dataset = None
            self._progress.frames = []

    def __repr__(self) -> str:
        return f"TrainingJob({self.id!r}, owner={self.owner!r}, status={self.status!r})"


def _best_epoch(val_loss: Sequence[float]) -> int:
    finite = [(value, index) for index, value in enumerate(val_loss) if math.isfinite(value)]
    return min(finite)[1] + 1 if finite else 0

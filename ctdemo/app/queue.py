"""The process-wide training queue: the line of jobs, the workers that run them, expiry.

A page never trains in its own script thread. It submits a `TrainingJob` to the
`TrainingQueue` (`default_queue()`), which runs at most `slots` trainings at once on daemon
worker threads (`job_runner.run_job`); the others wait in line (first in, first out) and each
knows its place. No Streamlit here.

The queue's `limits` bound each job: settings estimated past its memory or time are refused
before they wait (`TooCostly`, nothing built), and a running job stops itself at the time
limit the same way as on request, saying so. A job that fails ends failed and the worker goes
on to the next job.

Memory: each job holds one model. Finished jobs are kept for their owner to collect for
`ttl_seconds` and then dropped, their model, card and arrays released (`forget(owner)` does it
at once, for a session that ends). A job's dataset is released as soon as it finishes.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ctdemo.app.job_runner import check_runnable, failure_message, run_job
from ctdemo.app.jobs import JobStatus, TrainingJob
from ctdemo.evaluation.shortcut import Shortcut
from ctdemo.evaluation.splits import SplitSpec
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.specs import TrainConfig
from ctdemo.models.training_cost import SHARED_SERVER, CostLimits, check_cost, estimate

DEFAULT_SLOTS = 1
"""Trainings at once: on a 2-core server two trainings each run at about half speed."""
DEFAULT_MAX_WAITING = 8
DEFAULT_TTL_SECONDS = 30 * 60


class QueueFull(ValueError):
    """A job the queue will not take now; the message is written for a person."""


class AlreadyTraining(QueueFull):
    """The owner already has a job waiting or running."""


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
        shortcut: Shortcut | None = None,
    ) -> TrainingJob:
        """Put a training in line; raises `QueueFull` (or `AlreadyTraining`) when it cannot
        wait now, `TooCostly` for settings past the queue's limits, `ValueError` for a split
        with an empty side or an attention slice that cannot be drawn."""
        spec = spec or SplitSpec()
        config = self._within_limits(config, dataset, spec, shortcut is not None)
        check_runnable(dataset, config, spec, attention_slice, shortcut)
        job = TrainingJob(
            owner, dataset, config, spec, name, attention_slice, self._clock, self._cancel, shortcut
        )
        with self._condition:
            self._refuse_locked(owner)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._renumber_locked()
            self._start_workers_locked()
            self._condition.notify_all()
        return job

    def _within_limits(
        self, config: TrainConfig, dataset: ArrayDataset, spec: SplitSpec, shortcut: bool
    ) -> TrainConfig:
        """`config` with the queue's time limit, or `TooCostly` if its estimate is past the
        limits (counted from the settings: no model is built)."""
        classes = len(dataset.class_names)
        cost = estimate(config, len(dataset), classes, spec.val_fraction, shortcut)
        check_cost(cost, self.limits)
        limit = min(config.time_limit_seconds or math.inf, self.limits.seconds)
        return replace(config, time_limit_seconds=limit)

    def _refuse_locked(self, owner: str) -> None:
        """Raise `QueueFull` if the queue cannot take another job of `owner` now."""
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
                    job.forget()
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
                job.stop_event.set()
            self._condition.notify_all()
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)

    # --- internals (call with the condition held unless said otherwise) ---------------------

    def _cancel(self, job: TrainingJob) -> bool:
        """Take `job` out of the line if it is waiting (the job's `stop` asks); True if it was."""
        with self._condition:
            if job not in self._waiting:
                return False
            self._cancel_locked(job)
            return True

    def _cancel_locked(self, job: TrainingJob) -> None:
        self._waiting.remove(job)
        job.stop_event.set()
        job.finish(JobStatus.CANCELLED, "Cancelled before it started.")
        self._renumber_locked()
        self._condition.notify_all()

    def _renumber_locked(self) -> None:
        for position, job in enumerate(self._waiting, start=1):
            job.set_position(position)

    def _drop_locked(self, job: TrainingJob) -> None:
        self._jobs.pop(job.id, None)
        job.release()

    def _purge_locked(self) -> int:
        now, dropped = self._clock(), 0
        for job in list(self._jobs.values()):
            finished = job.finished_since()
            if finished is not None and now - finished >= self.ttl_seconds:
                self._drop_locked(job)
                dropped += 1
        return dropped

    def _next_expiry_locked(self) -> float | None:
        """Seconds until the oldest finished job expires (None if none is finished)."""
        times = [t for job in self._jobs.values() if (t := job.finished_since()) is not None]
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
        while (job := self._next_job()) is not None:
            try:
                run_job(job)
            except BaseException as error:  # never let a job end the worker
                job.finish(JobStatus.FAILED, failure_message(error))
            finally:
                with self._condition:
                    self._running.discard(job)
                    if job.forgotten:
                        self._drop_locked(job)
                    self._purge_locked()
                    self._condition.notify_all()

    def _next_job(self) -> TrainingJob | None:
        """Wait for the next job in line and start it; None once the queue is shut down."""
        with self._condition:
            while not self._closed and not self._waiting:
                self._purge_locked()
                expiry = self._next_expiry_locked()
                self._condition.wait(60.0 if expiry is None else min(60.0, expiry + 0.01))
            if self._closed:
                return None
            job = self._waiting.popleft()
            self._running.add(job)
            self._renumber_locked()
            job.start()
            return job


_default_queue: TrainingQueue | None = None
_default_lock = threading.Lock()


def default_queue() -> TrainingQueue:
    """The process-wide queue every session of the app shares."""
    global _default_queue
    with _default_lock:
        if _default_queue is None:
            _default_queue = TrainingQueue()
        return _default_queue

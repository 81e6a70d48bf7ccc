"""Training runs a visitor keeps in their session: curves to overlay and the split lesson.

A run is small (its history, a few numbers and its settings); the model itself lives in the
session's model list (`ctdemo.app.resources`). Pure data, no Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ctdemo.app.jobs import JobSnapshot, JobStatus
from ctdemo.app.train_settings import TrainSettings
from ctdemo.models.cards import ModelCard

MAX_RUNS = 8
"""Runs kept per session: enough to compare, and a bound on what a session holds."""

SPLIT_LESSON = (
    "The two runs differ only in how the slices were split. The random split scatters each "
    "patient's slices over both sides, so the model is graded on near-copies of slices it "
    "trained on: its validation accuracy measures memory of those patients, not what it "
    "would do for a new one. The grouped split keeps whole patients (blocks of consecutive "
    "file numbers) on one side, which is what a new patient looks like to the model. The "
    "gap between the two numbers is the leak; it is why many published accuracies on this "
    "dataset do not hold on new patients."
)


@dataclass(frozen=True)
class RunRecord:
    id: str
    label: str
    settings: TrainSettings
    history: dict[str, tuple[float, ...]]
    best_epoch: int
    early_stop_epoch: int | None
    status: JobStatus
    accuracy: dict | None  # the card's validation accuracy interval, when measured


def record(
    job_id: str, settings: TrainSettings, snapshot: JobSnapshot, card: ModelCard | None
) -> RunRecord:
    """A run's record from its job's final snapshot and card."""
    accuracy = card.validation.get("accuracy") if card is not None else None
    return RunRecord(
        id=job_id,
        label=run_label(settings),
        settings=settings,
        history={key: tuple(values) for key, values in snapshot.history.items()},
        best_epoch=snapshot.best_epoch,
        early_stop_epoch=snapshot.early_stop_epoch,
        status=snapshot.status,
        accuracy=accuracy,
    )


def run_label(settings: TrainSettings) -> str:
    ensemble = f" ×{settings.members}" if settings.is_cnn and settings.members > 1 else ""
    density = " + density" if settings.is_cnn and settings.density else ""
    shortcut = settings.shortcut()
    marker = f" · {shortcut.kind} on {shortcut.fraction:.0%} {shortcut.carrier}" if shortcut else ""
    return (
        f"{settings.arch}{ensemble}{density} · dropout {settings.dropout:g} · "
        f"{settings.split} split · seed {settings.seed}{marker}"
    )


def keep(runs: tuple[RunRecord, ...], run: RunRecord) -> tuple[RunRecord, ...]:
    """The session's runs with `run` added (replacing one with the same id), newest last,
    at most MAX_RUNS."""
    kept = (*(existing for existing in runs if existing.id != run.id), run)
    return kept[-MAX_RUNS:]


def flipped_split(settings: TrainSettings) -> TrainSettings:
    """The same run with the other split: the second lesson, one click away."""
    return replace(settings, split="random" if settings.split == "grouped" else "grouped")


def split_pair(runs: tuple[RunRecord, ...]) -> tuple[RunRecord, RunRecord] | None:
    """The newest (grouped, random) pair of measured runs that differ only in the split."""
    measured = [run for run in runs if run.accuracy]
    for newer_index in range(len(measured) - 1, 0, -1):
        newer = measured[newer_index]
        for older in reversed(measured[:newer_index]):
            if older.settings == flipped_split(newer.settings):
                pair = (older, newer) if older.settings.split == "grouped" else (newer, older)
                return pair
    return None

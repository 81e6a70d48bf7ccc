"""What a training job runs on its worker thread: the training, the attention timeline, and the
final model's heat inside the lungs. No Streamlit here.

The attention timeline: given `attention_slice` (an index into the run's validation split,
`make_split(dataset, spec).val`), a CNN job computes at the end of every epoch the Grad-CAM of
that slice for its true class on the model as validated, and keeps it as a small uint8 heatmap
at the model's input size (30-60 ms per epoch for the 'cnn' preset, 1-2% of an epoch:
`benchmarks/train_bench.py`), with the share of its heat inside the slice's lungs (segmented
once, at the model's input size). When a CNN run ends with a model, the final model's Grad-CAM
of up to LUNG_HEAT_SLICES validation slices (those where lungs were found) gives the mean heat
inside the lungs with a 95% bootstrap interval (`LungHeat`), beside the lungs' mean area: what
a map blind to anatomy would score.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ctdemo.app.jobs import AttentionFrame, JobStatus, LungHeat, TrainingJob
from ctdemo.evaluation.shortcut import Shortcut, carrier_index, marked, marker_mask
from ctdemo.evaluation.splits import SplitData, SplitSpec, make_split
from ctdemo.explain.lungs import heat_share, segment_lungs
from ctdemo.io.folders import ArrayDataset
from ctdemo.models.specs import TrainConfig

if TYPE_CHECKING:  # TensorFlow loads when a job runs, not when a page imports this module
    import keras

MAX_MESSAGE_CHARS = 300
LUNG_HEAT_SLICES = 60
"""Validation slices the final model explains for the mean heat inside the lungs: the interval
is a few points wide at 60, and each Grad-CAM costs about one attention frame."""


def check_runnable(
    dataset: ArrayDataset,
    config: TrainConfig,
    spec: SplitSpec,
    attention_slice: int | None,
    shortcut: Shortcut | None = None,
) -> None:
    """Refuse, before it waits in line, a job whose split, attention slice or shortcut cannot
    work."""
    if shortcut is not None:
        carrier_index(shortcut, dataset.class_names)
    split = make_split(dataset, spec)
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


def run_job(job: TrainingJob) -> None:
    """Train `job` in this thread, writing progress into it, and finish it (never raises
    for a training that goes wrong: the job ends failed, with the reason)."""
    from ctdemo.models.experiment import train_on_arrays

    dataset = job.dataset
    if dataset is None:
        job.finish(JobStatus.FAILED, "The job has no data (it was already run or forgotten).")
        return
    try:
        split = make_split(dataset, job.spec)
        on_epoch_model = _attention_hook(job, split) if job.attention_slice is not None else None
        result, card = train_on_arrays(
            dataset,
            job.config,
            job.spec,
            job.name,
            on_epoch=job.on_epoch,
            on_batch=job.on_batch,
            stop_event=job.stop_event,
            on_epoch_model=on_epoch_model,
            shortcut=job.shortcut,
        )
    except Exception as error:
        job.finish(JobStatus.FAILED, failure_message(error))
        return
    if result.stop_reason == "nan":
        job.finish(JobStatus.FAILED, result.message, result)
        return
    if job.config.architecture.kind == "cnn" and not job.forgotten:
        started = time.perf_counter()
        heat = _lung_heat(result.model, split.val, job.config.batch_size)
        job.set_lung_heat(heat, time.perf_counter() - started)
    stopped = result.stop_reason in ("stopped", "time limit")
    job.finish(JobStatus.STOPPED if stopped else JobStatus.DONE, result.message, result, card)


def _attention_hook(job: TrainingJob, split: SplitData) -> Callable[[Any, int], None]:
    """The per-epoch Grad-CAM of the attention slice, for its true class, as a uint8 frame
    with the share of its heat inside the slice's lungs."""
    from ctdemo.explain.saliency import explain

    image = split.val.x[job.attention_slice]
    label = int(split.val.y[job.attention_slice])
    lungs = segment_lungs(image[..., 0])
    job.set_attention_lungs(lungs.area_share if lungs.ok else None)
    marker = None
    if job.shortcut is not None:  # the slice is watched with the marker burned in
        marker = marker_mask(job.shortcut, image.shape[0])
        image = marked(image[np.newaxis], marker)[0]

    def on_epoch_model(model: Any, epoch: int) -> None:
        started = time.perf_counter()
        heatmap = explain(model, image, "gradcam", label)
        frame = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
        frame.flags.writeable = False
        share = heat_share(heatmap, lungs.mask) if lungs.ok else None
        on_marker = heat_share(heatmap, marker) if marker is not None else None
        seconds = time.perf_counter() - started
        job.add_frame(AttentionFrame(epoch, frame, share, on_marker), seconds)

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


def failure_message(error: BaseException) -> str:
    """One line for a person: our own ValueErrors as written, anything else named."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    if not isinstance(error, ValueError) or not text:  # ours are written for a person
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        text = f"Training failed ({text})."
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"

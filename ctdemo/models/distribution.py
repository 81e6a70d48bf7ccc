"""Training on several devices or machines with TensorFlow's own distribution strategies.

`train --distribute mirrored` copies the model onto every local GPU (or, with none, every
logical CPU); `multi-worker` runs MultiWorkerMirroredStrategy, today with one worker only
(Keras 3 cannot fit across machines: docs/distributed.md). Each step averages the gradients
of all replicas. `--batch-size` stays the *global* batch (each replica takes
global / replicas) and the learning rate is not scaled: a step then averages as many slices as
a plain run's, so the same settings mean the same optimisation (docs/distributed.md).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

LOGICAL_CPUS = "CTDEMO_LOGICAL_CPUS"
"""Split the CPU into this many logical devices before TensorFlow starts (a test's stand-in for
several GPUs); read only with `--distribute`."""
MAX_LOGICAL_CPUS = 64
LEARNING_RATE_SCALING = (
    "none: --batch-size is the global batch (each replica takes an equal share), so a step "
    "averages as many slices as a plain run's and the same learning rate applies"
)


def split_cpu(text: str) -> int:
    """Configure `text` (a whole number, 1-64) logical CPU devices; must run before TensorFlow
    initialises its devices. Returns the count; raises ValueError with a sentence otherwise."""
    count = int(text) if text.strip().isdigit() else 0
    if not 1 <= count <= MAX_LOGICAL_CPUS:
        raise ValueError(f"{LOGICAL_CPUS} must be a whole number from 1 to 64, not {text!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    configs = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    try:
        tf.config.set_logical_device_configuration(cpu, configs)
    except RuntimeError as error:  # TensorFlow's devices already started
        raise ValueError(f"{LOGICAL_CPUS} came too late: {error}") from None
    return count


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called `name`, created before any model or dataset."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi-worker":
        if workers_named() > 1:
            raise ValueError(
                "TF_CONFIG names several workers, and Keras 3 cannot fit across machines yet: "
                "its step averages scalar logs along an axis they lack (tensorflow#72388)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r} (mirrored or multi-worker).")


def workers_named() -> int:
    """How many workers (chief included) the `TF_CONFIG` environment variable names."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def record(strategy: tf.distribute.Strategy, global_batch: int) -> dict:
    """What the card's `training["distribution"]` says of a distributed run."""
    replicas = strategy.num_replicas_in_sync
    per_replica = global_batch / replicas
    return {
        "strategy": (
            "multi-worker"
            if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else "mirrored"
        ),
        "replicas": replicas,
        "workers": max(1, workers_named()),
        "global_batch": global_batch,
        "per_replica_batch": int(per_replica) if per_replica.is_integer() else per_replica,
        "learning_rate_scaling": LEARNING_RATE_SCALING,
    }


def check_batch(batch: int, slices: int, replicas: int) -> None:
    """Refuse a global batch that does not split evenly over the replicas, or that exceeds
    the training slices. Under a strategy each epoch keeps its full batches only: Keras 3
    averages the replicas' shares of a fit's first batch to build the model, which fails
    when they differ in size (keras-team/keras#19246), and an empty share breaks batch norm."""
    if batch % replicas or batch > slices:
        raise ValueError(
            f"--batch-size {batch} must be a multiple of the {replicas} replicas and at most "
            f"the {slices} training slices."
        )


def validation_batch(batch: int, slices: int, replicas: int) -> int:
    """The largest batch up to `batch`, a multiple of the replicas, whose last batch gives
    every replica a share (see `check_batch`): every validation slice counts."""
    for size in range(min(batch, slices) // replicas * replicas, 0, -replicas):
        if slices % size == 0 or slices % size >= replicas:
            return size
    raise ValueError(f"{slices} validation slices cannot be shared among {replicas} replicas.")


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Each worker reads its share of the slices (arrays in memory have no files to shard)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)

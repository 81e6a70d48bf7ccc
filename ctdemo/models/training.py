"""Fit a model on cached arrays, reporting every epoch (and progress within it) to a caller.

Files are decoded once (`ctdemo.io.folders.load_arrays`); an epoch only reads arrays. Light
augmentation (horizontal flip, small rotation, shift and zoom) runs in the input pipeline, so
the saved model holds no augmentation layers. With weight averaging on (the default), the
weights validated, kept and saved are an exponential moving average of the training weights.
Early stopping watches validation loss and the best epoch's weights are restored however the
run ends; a stop event and a time limit are honoured at the next batch; a loss that turns NaN
ends the run with an explanation. An epoch hook (`on_epoch_model`) may look at the model as
validated at the end of each epoch, e.g. to draw where it looks as it learns. Given a
`tf.distribute` strategy (`ctdemo.models.distribution`), the model is built, compiled and
fitted under it, and the model returned is a plain single-device copy of the fitted weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ctdemo.io.folders import ArrayDataset
from ctdemo.models.architectures import build_model
from ctdemo.models.distribution import check_batch, shard_by_data, validation_batch
from ctdemo.models.specs import MEMBER_LOGITS, VALIDATION_BATCH, TrainConfig, duration

EpochCallback = Callable[[int, dict[str, float]], None]
BatchCallback = Callable[[int, int], None]  # (batches done in this epoch, batches per epoch)
ModelCallback = Callable[[keras.Model, int], None]  # (the model as validated, 1-based epoch)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int  # 1-based; the epoch whose weights the model holds
    epochs_run: int
    stop_reason: str  # "completed", "early stopping", "stopped", "time limit", "nan"
    seconds: float
    message: str = ""
    epoch_seconds: list[float] = field(default_factory=list)


EMA_MOMENTUM = 0.99
"""Weight averaging over the last ~100 steps: on unseen patients, a small CNN's accuracy can
swing by 10 points from one epoch to the next; the average of recent weights swings less."""


MAX_ROTATION = 0.1  # radians, about 6 degrees
MAX_SHIFT = 0.06  # fraction of the side
ZOOM = 0.1  # scale in [1 - ZOOM, 1 + ZOOM]


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random horizontal flip, rotation, shift and zoom of each image, as one affine warp.

    Stateless random ops keyed by `seed` (shape (2,)), so a run is reproducible."""
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def uniform(index: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform((batch,), seeds[index], low, high)

    flip = tf.where(uniform(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
    angle = uniform(1, -MAX_ROTATION, MAX_ROTATION)
    scale = uniform(2, 1.0 - ZOOM, 1.0 + ZOOM)
    shift_x = uniform(3, -MAX_SHIFT, MAX_SHIFT) * width
    shift_y = uniform(4, -MAX_SHIFT, MAX_SHIFT) * height
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    # Output pixel (x, y) samples the input at A @ (x, y) + b (flip, rotate, zoom about the centre).
    a0, a1 = tf.cos(angle) * flip / scale, -tf.sin(angle) / scale
    b0, b1 = tf.sin(angle) * flip / scale, tf.cos(angle) / scale
    a2 = centre_x - a0 * centre_x - a1 * centre_y + shift_x
    b2 = centre_y - b0 * centre_x - b1 * centre_y + shift_y
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def input_pipeline(
    data: ArrayDataset,
    batch_size: int,
    seed: int,
    training: bool,
    augment: bool,
    full_batches: bool = False,
) -> tf.data.Dataset:
    pipeline = tf.data.Dataset.from_tensor_slices((data.x, data.y))
    if training:
        pipeline = pipeline.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size, drop_remainder=full_batches)
    if training and augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        pipeline = tf.data.Dataset.zip(pipeline, seeds).map(
            lambda batch, seed_pair: (augment_batch(batch[0], seed_pair), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return pipeline.prefetch(tf.data.AUTOTUNE)


class _Reporter(keras.callbacks.Callback):
    """Passes progress to the caller, honours the stop event and the deadline (a
    `time.perf_counter()` value), and catches NaN losses."""

    def __init__(
        self,
        steps: int,
        on_epoch: EpochCallback | None,
        on_batch: BatchCallback | None,
        stop_event: threading.Event | None,
        on_epoch_model: ModelCallback | None = None,
        shown_model: keras.Model | None = None,
        deadline: float = math.inf,
        probes: dict[str, ArrayDataset] | None = None,
    ):
        super().__init__()
        self.probes = probes or {}
        self.probe_history: dict[str, list[float]] = {
            f"{name}_accuracy": [] for name in self.probes
        }
        self.deadline = deadline
        self.shown_model = shown_model  # given to on_epoch_model; the fitted model by default
        self.steps = steps
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self.stop_event = stop_event
        self.on_epoch_model = on_epoch_model
        self.stop_reason = ""
        self.epoch_started = 0.0
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stop_reason = "nan"
            self.model.stop_training = True
        elif self.stop_event is not None and self.stop_event.is_set():
            self.stop_reason = "stopped"
            self.model.stop_training = True
        elif time.perf_counter() >= self.deadline:
            self.stop_reason = "time limit"
            self.model.stop_training = True
        if self.on_batch is not None:
            self.on_batch(batch + 1, self.steps)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        shown = self.shown_model or self.model
        if self.on_epoch_model is not None:  # before on_epoch: epoch N's extras precede its point
            self.on_epoch_model(shown, epoch + 1)
        values = {key: float(value) for key, value in (logs or {}).items()}
        for name, data in self.probes.items():
            predicted = np.argmax(predict_logits(shown, data.x, VALIDATION_BATCH), axis=-1)
            values[f"{name}_accuracy"] = float(np.mean(predicted == data.y))
            self.probe_history[f"{name}_accuracy"].append(values[f"{name}_accuracy"])
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, values)


class _SwapAveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras's swap of the training and the averaged weights around validation and at epoch
    ends, done by one compiled function. Keras swaps variable by variable in eager mode: about
    12 ms a swap on 2 cores, four swaps an epoch, 50 ms or a tenth of an 'mlp'-preset epoch;
    compiled, under 1 ms. The swap is exact (Keras adds and subtracts, which rounds)."""

    def __init__(self):
        super().__init__(swap_on_epoch=True)
        self._swaps: dict[int, Callable[[], None]] = {}

    def _tf_swap_variables(self, optimizer):
        swap = self._swaps.get(id(optimizer))
        if swap is None:
            pairs = [
                (_tf_variable(variable), _tf_variable(average))
                for variable, average in zip(
                    self.model.trainable_variables,
                    optimizer._model_variables_moving_average,
                    strict=True,
                )
            ]

            @tf.function(autograph=False)
            def swap():
                for variable, average in pairs:
                    held = tf.identity(variable)
                    variable.assign(average)
                    average.assign(held)

            self._swaps[id(optimizer)] = swap
        swap()


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


class _RestoreBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest validation loss and restores them
    at the end, however the run ends (early stopping, stop event, last epoch)."""

    def __init__(self):
        super().__init__()
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch + 1
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def fitted_part(model: keras.Model) -> keras.Model:
    """What training fits: the model itself, or for an ensemble its per-member logits (sharing
    every weight with it), so that each member learns from its own loss."""
    if MEMBER_LOGITS not in [layer.name for layer in model.layers]:
        return model
    return keras.Model(model.input, model.get_layer(MEMBER_LOGITS).output, name=model.name)


def member_cross_entropy(labels: tf.Tensor, member_logits: tf.Tensor) -> tf.Tensor:
    """Each member's cross-entropy, averaged: member m's gradient depends on its logits only,
    as if trained alone (a loss on the averaged logits would make members co-adapt)."""
    labels = keras.ops.broadcast_to(
        keras.ops.reshape(labels, (-1, 1)), keras.ops.shape(member_logits)[:2]
    )
    losses = keras.losses.sparse_categorical_crossentropy(labels, member_logits, from_logits=True)
    return keras.ops.mean(losses, axis=-1)


def ensemble_accuracy(labels: tf.Tensor, member_logits: tf.Tensor) -> tf.Tensor:
    """Accuracy of the averaged logits, what the ensemble predicts."""
    averaged = keras.ops.mean(member_logits, axis=1)
    return keras.metrics.sparse_categorical_accuracy(keras.ops.reshape(labels, (-1,)), averaged)


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.05
    )
    optimizer = keras.optimizers.AdamW(
        schedule,
        weight_decay=config.weight_decay,
        use_ema=config.weight_averaging,
        ema_momentum=EMA_MOMENTUM,
    )
    if len(model.output_shape) == 3:  # an ensemble's (batch, members, classes) logits
        loss = member_cross_entropy
        accuracy = keras.metrics.MeanMetricWrapper(ensemble_accuracy, name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
    # Built now, the optimiser's slots exist before the first step, so TensorFlow traces the
    # training step once, not twice (once more to create variables): the first step of the
    # 'cnn' preset takes about 1.3 s instead of 2.7 s on 2 cores.
    optimizer.build(model.trainable_variables)


def _pipelines(
    config: TrainConfig,
    train_data: ArrayDataset,
    val_data: ArrayDataset,
    strategy: tf.distribute.Strategy | None,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and validation pipelines; under a strategy, sharded by slice, training in
    full batches only and validation in batches every replica has a share of (`check_batch`)."""
    if strategy is None:
        return (
            input_pipeline(train_data, config.batch_size, config.seed, True, config.augment),
            input_pipeline(val_data, VALIDATION_BATCH, config.seed, False, False),
        )
    replicas = strategy.num_replicas_in_sync
    check_batch(config.batch_size, len(train_data), replicas)
    val_batch = validation_batch(VALIDATION_BATCH, len(val_data), replicas)
    training = input_pipeline(
        train_data, config.batch_size, config.seed, True, config.augment, full_batches=True
    )
    validation = input_pipeline(val_data, val_batch, config.seed, False, False)
    return shard_by_data(training), shard_by_data(validation)


def train(
    config: TrainConfig,
    train_data: ArrayDataset,
    val_data: ArrayDataset,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    stop_event: threading.Event | None = None,
    on_epoch_model: ModelCallback | None = None,
    probes: dict[str, ArrayDataset] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Train a fresh model of `config.architecture` and return it with its history.

    `on_epoch_model(model, epoch)` is called at the end of every epoch with the weights the
    validation saw (the averaged ones when weight averaging is on); it must not change them.
    Each of `probes` (e.g. clean and marked validation) is measured at every epoch's end with
    those weights, as `<name>_accuracy` in the epoch's logs and the history. With a
    `strategy`, `config.batch_size` is the global batch, split among the replicas."""
    keras.utils.set_random_seed(config.seed)
    steps = math.ceil(len(train_data) / config.batch_size)
    if strategy is not None:  # full batches only (`_pipelines`)
        steps = len(train_data) // config.batch_size
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(config.architecture, len(train_data.class_names))
        fitted = fitted_part(model)
        compile_model(fitted, config, steps)
    started = time.perf_counter()
    limit = config.time_limit_seconds
    deadline = math.inf if limit is None else started + limit
    reporter = _Reporter(
        steps, on_epoch, on_batch, stop_event, on_epoch_model, model, deadline, probes
    )
    restore = _RestoreBest()
    callbacks: list[keras.callbacks.Callback] = [reporter, restore]
    if config.weight_averaging:  # first, so the others see the averaged weights at epoch end
        callbacks.insert(0, _SwapAveragedWeights())
    early_stopping = None
    if config.patience > 0:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=False
        )
        callbacks.append(early_stopping)
    training, validation = _pipelines(config, train_data, val_data, strategy)
    fit = fitted.fit(
        training,
        validation_data=validation,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles, reproducibly
        verbose=0,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    history |= reporter.probe_history
    epochs_run = len(history.get("loss", []))
    reason, message = "completed", ""
    if reporter.stop_reason == "nan":
        reason = "nan"
        message = (
            "The loss became NaN (not a number): training diverged. "
            "Lower the learning rate (try a tenth of it) and train again."
        )
    elif reporter.stop_reason == "stopped":
        reason, message = "stopped", "Stopped on request; the best epoch so far is kept."
    elif reporter.stop_reason == "time limit":
        reason = "time limit"
        message = (
            f"Stopped at the time limit: one training may run {duration(limit)} here. "
            "The best epoch so far is kept."
        )
    elif early_stopping is not None and early_stopping.stopped_epoch > 0:
        reason = "early stopping"
        message = f"Validation loss did not improve for {config.patience} epochs."
    return TrainResult(
        model=model if strategy is None else single_device_copy(model, config, train_data),
        history=history,
        best_epoch=restore.best_epoch or epochs_run,
        epochs_run=epochs_run,
        stop_reason=reason,
        seconds=time.perf_counter() - started,
        message=message,
        epoch_seconds=reporter.epoch_seconds,
    )


def single_device_copy(
    model: keras.Model, config: TrainConfig, train_data: ArrayDataset
) -> keras.Model:
    """A model built outside any strategy holding `model`'s weights: what a distributed run
    returns, so that measuring, explaining and saving it run as after a plain run."""
    copy = build_model(config.architecture, len(train_data.class_names))
    copy.set_weights(model.get_weights())
    return copy


def predict_logits(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for model inputs, in compiled batches (no per-call data-adapter overhead).

    A model built under a multi-replica strategy is called directly: its `predict_on_batch`
    gives every replica the whole batch and returns each row once per replica."""
    predict = model.predict_on_batch
    if model.distribute_strategy.num_replicas_in_sync > 1:
        predict = functools.partial(model, training=False)
    outputs = [
        np.asarray(predict(x[start : start + batch_size])) for start in range(0, len(x), batch_size)
    ]
    if not outputs:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.concatenate(outputs)

"""Is this a chest CT slice? An out-of-distribution check that runs before any verdict.

A classifier answers "COVID" or "non-COVID" for anything it is given: a holiday photo, a chest
X-ray or a screenshot all get a confident-looking probability. This module measures how far an
image is from the CT slices the model learned from, so the Classify page can warn and show no
verdict instead.

The score (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
samples"): the Mahalanobis distance of the image's activations in one layer of the model to
those of the TRAINING slices,

    distance(f) = sqrt((f - mean)^T  precision  (f - mean)),

where `mean` is the training slices' mean activation and `precision` the inverse of their
covariance, shrunk toward a multiple of the identity by the Ledoit-Wolf formula (scikit-learn's,
in numpy: see `ledoit_wolf`), so 64 to 128 correlated features estimated from ~1,600 slices
still give a stable inverse. The threshold is set on the VALIDATION slices (unseen patients, who
sit further out than the training slices the model was fitted to): their 99.5th percentile times
a margin of 1.25. Measured on the shipped CNN, held-out halves of the validation patients then
pass 99.98% of the time on average (the 99.5th percentile alone: 98.9%), and the nearest
generated non-CT image (a smooth colour gradient, seen in grey) is still 1.5 times the threshold
away.

The layer: a CNN's "features" layer (global average pooling of the last convolution, 128
channel means in the shipped CNN), not the input of the logits layer. The dense head in between
keeps only what separates COVID from non-COVID; on the shipped CNN its 64 features put a colour
gradient (28.5) and a synthetic chest X-ray (29.8) inside the validation slices' spread (max
28.8), while the 128 channel means put them at 38.6 and 51.0 against a validation maximum of
22.5. A model without that layer (an MLP) uses the input of its last Dense layer; measured on
the shipped MLP that representation cannot tell CT from non-CT (a blank page lands closer to
the mean than most slices), so for an MLP the two cues below do most of the work, and a page
may prefer the CNN's detector to guard any model.

Two cheap cues that need no model, checked first:
- colour: every one of the 1,971 slices of the SARS-CoV-2 CT dataset is grey (red, green and
  blue never differ by more than 1/255), so a file in which more than 5% of the pixels are
  clearly coloured (channels spread by more than 0.15) is a photo or a screenshot;
- blank: an image of almost one grey level (pixel standard deviation under 0.02; real slices
  have 0.09 or more) has no structure for a model to read: its answer would be its biases.

Limits: "far from the training slices" is not "not a CT slice". Real CT slices exported
differently (another hospital's crop, window or scanner) may be flagged; a picture that mimics
these slices closely may pass. The figures above are from one dataset.

Files: the detector of `weights/cnn.keras` is `weights/cnn.ood.npz` (`ood_path`), a small
numpy archive read with `allow_pickle=False`. It records a digest of the model's weights, so a
detector is never used with a model it was not fitted for.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ctdemo.io.slices import PICTURE_FORMATS, decode_slice, is_dicom, to_model_input

if TYPE_CHECKING:  # TensorFlow is imported only when features are extracted
    import keras

    from ctdemo.io.folders import ArrayDataset
    from ctdemo.models.cards import ModelCard

OOD_SUFFIX = ".ood.npz"
FEATURES_LAYER = "features"
"""A CNN's global-average-pooling layer (`ctdemo.models.architectures.build_cnn`): the
detector's layer."""

VALIDATION_QUANTILE = 0.995
THRESHOLD_MARGIN = 1.25
"""Threshold = the validation distances' 99.5th percentile x 1.25 (see the module's text)."""

COLOUR_SPREAD = 0.15
"""A pixel is coloured when its red, green and blue differ by more than this (of full scale)."""
COLOUR_FRACTION = 0.05
"""More than this fraction of coloured pixels: a colour picture, not a CT slice."""
COLOUR_SIDE = 256
"""The colour cue looks at the picture shrunk to at most this many pixels a side."""
BLANK_STD = 0.02
"""Model inputs with a pixel standard deviation under this are blank (real slices: >= 0.09)."""

FORMAT_VERSION = 1
MAX_DETECTOR_BYTES = 16 * 1024 * 1024
"""Largest detector file read (decompressed): the shipped CNN's is about 0.1 MB."""

METHOD = (
    "Mahalanobis distance of the {layer!r} activations to the training slices "
    "(Ledoit-Wolf shrinkage covariance); threshold = validation {quantile:.1%} quantile "
    "x {margin:g}; plus colour and blank-image checks"
)


class OODLoadError(ValueError):
    """A detector file we cannot use; the message is written for a person."""


def ood_path(model_path: Path | str) -> Path:
    """`weights/cnn.keras` -> `weights/cnn.ood.npz` (like `ctdemo.models.cards.card_path`)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + OOD_SUFFIX)


# --- Features ---------------------------------------------------------------------------------


def penultimate_layer_input(model: keras.Model):
    """The tensor entering the model's last Dense layer ("logits" in ours)."""
    import keras

    if "logits" in [layer.name for layer in model.layers]:
        return model.get_layer("logits").input
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"Model {model.name!r} has no Dense layer to take features before.")
    return dense[-1].input


def detector_layer(model: keras.Model) -> str | None:
    """The layer the detector reads: FEATURES_LAYER when the model has it (our CNNs), else
    None, meaning the input of the last Dense layer (see the module's text for why)."""
    return FEATURES_LAYER if FEATURES_LAYER in [layer.name for layer in model.layers] else None


def feature_extractor(model: keras.Model, layer: str | None = None) -> keras.Model:
    """The sub-model from the model's input to a representation sharing its weights.

    By default the penultimate representation: the input of the final "logits" Dense layer
    (for other models, of the last Dense layer). With `layer`, that layer's output."""
    import keras

    output = penultimate_layer_input(model) if layer is None else model.get_layer(layer).output
    return keras.Model(model.inputs, output, name=f"{model.name}_features")


def extract_features(extractor: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Features (n, d) as float64 for model inputs (n, size, size, channels), in batches."""
    outputs = [
        np.asarray(extractor.predict_on_batch(x[start : start + batch_size]))
        for start in range(0, len(x), batch_size)
    ]
    if not outputs:
        return np.zeros((0, int(np.prod(extractor.output_shape[1:]))), dtype=np.float64)
    features = np.concatenate(outputs).astype(np.float64)
    return features.reshape(len(features), -1)


def model_digest(model: keras.Model) -> str:
    """A digest of the model's weights: ties a detector to the model it was fitted for."""
    digest = hashlib.blake2b(digest_size=16)
    for weights in model.get_weights():
        array = np.ascontiguousarray(weights)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


# --- The maths --------------------------------------------------------------------------------


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of `features` (n, d) and its shrinkage in [0, 1].

    (1 - a) S + a mu I, with S the sample covariance (divided by n), mu = trace(S) / d, and
    the a that minimises the expected squared error (Ledoit and Wolf 2004, "A well-conditioned
    estimator for large-dimensional covariance matrices"). It is the formula of scikit-learn's
    `LedoitWolf` and agrees with it (tests/test_ood.py); scikit-learn is not a dependency
    because importing it costs the server about 15 MB beside TensorFlow and 145 MB before
    (benchmarks/sklearn_memory.py) for these few lines."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError("A covariance needs at least two slices.")
    x = x - x.mean(axis=0)
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    if not np.isfinite(mu) or mu <= 0:
        raise ValueError("The features are constant (or not finite): nothing to measure from.")
    delta = float(np.sum((sample - mu * np.eye(d)) ** 2)) / d
    squares = x**2
    beta = float(np.sum(squares.T @ squares / n - sample**2)) / (d * n)
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """sqrt((f - mean)^T precision (f - mean)) for each row f of `features` (n, d)."""
    centred = np.asarray(features, dtype=np.float64) - mean
    squared = np.einsum("ij,jk,ik->i", centred, precision, centred)
    return np.sqrt(np.maximum(squared, 0.0))


# --- Image cues -------------------------------------------------------------------------------

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def colour_fraction(data: bytes) -> float:
    """Fraction of a picture's (opaque) pixels that are clearly coloured, from the file's bytes.

    0 for grey files, DICOM and anything unreadable (decoding reports those itself). Looks at
    every n-th pixel so that at most COLOUR_SIDE remain a side (about 7 ms for a 300 x 300 PNG,
    most of it decoding)."""
    if not data or is_dicom(data):
        return 0.0
    try:
        with Image.open(io.BytesIO(data), formats=PICTURE_FORMATS) as image:
            if image.mode in _GREY_MODES:
                return 0.0
            image.draft("RGB", (COLOUR_SIDE, COLOUR_SIDE))  # JPEG: decode at a fraction
            step = max(1, -(-max(image.size) // COLOUR_SIDE))
            size = (-(-image.width // step), -(-image.height // step))
            sampled = image.resize(size, Image.Resampling.NEAREST)  # no full-size RGBA copy
            rgba = sampled if sampled.mode in ("RGB", "RGBA") else sampled.convert("RGBA")
            pixels = np.asarray(rgba)
    except Exception:  # Pillow raises many types on hostile files; decode_slice explains
        return 0.0
    spread = pixels[..., :3].max(axis=-1) - pixels[..., :3].min(axis=-1)
    if pixels.shape[-1] == 4:
        spread = spread[pixels[..., 3] > 0]
    if spread.size == 0:
        return 0.0
    return float(np.mean(spread > COLOUR_SPREAD * 255))


# --- Results and the detector -----------------------------------------------------------------


@dataclass
class OODResult:
    """The check of one image: is it like the CT slices the model learned from?"""

    distance: float  # Mahalanobis distance to the training slices
    threshold: float  # distances above this are out of distribution
    flagged: bool  # True: not like the training slices; show no verdict
    reason: str  # one sentence for a person
    cue: str | None = None  # what flagged it: "colour", "blank", "features"; None if accepted
    colour_fraction: float = 0.0

    def to_dict(self) -> dict:
        return {
            "distance": round(self.distance, 3),
            "threshold": round(self.threshold, 3),
            "flagged": self.flagged,
            "reason": self.reason,
            "cue": self.cue,
            "colour_fraction": round(self.colour_fraction, 4),
        }


@dataclass
class OODDetector:
    """Mean and shrunk inverse covariance of training features, and a validation threshold."""

    mean: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d), inverse of the Ledoit-Wolf covariance
    threshold: float
    layer: str | None = None  # None: the input of the last Dense layer
    shrinkage: float = 0.0
    quantile: float = VALIDATION_QUANTILE
    margin: float = THRESHOLD_MARGIN
    train_slices: int = 0
    validation_slices: int = 0
    validation_acceptance: float = float("nan")  # of the validation slices, by distance
    model_digest: str = ""  # of the model fitted for; "" when not tied to one
    validation_distances: dict[str, float] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def method(self) -> str:
        layer = self.layer or "penultimate"
        return METHOD.format(layer=layer, quantile=self.quantile, margin=self.margin)

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        val_features: np.ndarray,
        quantile: float = VALIDATION_QUANTILE,
        margin: float = THRESHOLD_MARGIN,
        layer: str | None = None,
        model_digest: str = "",
    ) -> OODDetector:
        """Mean and precision from the training features; the threshold from the validation
        features: `margin` x their `quantile`."""
        train_features = np.asarray(train_features, dtype=np.float64)
        val_features = np.asarray(val_features, dtype=np.float64)
        if not (np.all(np.isfinite(train_features)) and np.all(np.isfinite(val_features))):
            raise ValueError("The features are not finite (did training diverge?).")
        if len(val_features) == 0:
            raise ValueError("The threshold needs at least one validation slice.")
        if not 0 < quantile <= 1 or margin < 1:
            raise ValueError("Use a quantile in (0, 1] and a margin of at least 1.")
        covariance, shrinkage = ledoit_wolf(train_features)
        precision = np.linalg.inv(covariance)
        precision = (precision + precision.T) / 2
        mean = train_features.mean(axis=0)
        distances = mahalanobis(val_features, mean, precision)
        threshold = float(np.quantile(distances, quantile)) * margin
        return cls(
            mean=mean,
            precision=precision,
            threshold=threshold,
            layer=layer,
            shrinkage=float(shrinkage),
            quantile=quantile,
            margin=margin,
            train_slices=len(train_features),
            validation_slices=len(val_features),
            validation_acceptance=float(np.mean(distances <= threshold)),
            model_digest=model_digest,
            validation_distances=_describe(distances),
        )

    def score(self, features: np.ndarray) -> np.ndarray | float:
        """Mahalanobis distance of each row of `features` (n, d); a float for one (d,)."""
        features = np.asarray(features, dtype=np.float64)
        if features.shape[-1] != self.dim:
            raise ValueError(f"Expected {self.dim} features, got {features.shape[-1]}.")
        if features.ndim == 1:
            return float(mahalanobis(features[np.newaxis], self.mean, self.precision)[0])
        return mahalanobis(features, self.mean, self.precision)

    def assess(
        self,
        features: np.ndarray,
        pixel_std: np.ndarray | None = None,
        colour: np.ndarray | None = None,
    ) -> list[OODResult]:
        """One result per row of `features` (n, d). `pixel_std`: each model input's pixel
        standard deviation (blank check); `colour`: each file's `colour_fraction`."""
        distances = np.atleast_1d(self.score(np.atleast_2d(features)))
        count = len(distances)
        pixel_std = np.full(count, np.inf) if pixel_std is None else np.atleast_1d(pixel_std)
        colour = np.zeros(count) if colour is None else np.atleast_1d(colour)
        return [
            self._result(float(d), float(s), float(c))
            for d, s, c in zip(distances, pixel_std, colour, strict=True)
        ]

    def check(
        self, features: np.ndarray, pixel_std: float | None = None, colour: float = 0.0
    ) -> OODResult:
        """The result for one image's features (d,)."""
        stds = None if pixel_std is None else np.array([pixel_std])
        return self.assess(np.asarray(features)[np.newaxis], stds, np.array([colour]))[0]

    def is_out_of_distribution(
        self,
        features: np.ndarray,
        pixel_std: np.ndarray | None = None,
        colour: np.ndarray | None = None,
    ) -> np.ndarray:
        """Boolean (n,): True where an image is unlike the training slices (see `assess`)."""
        return np.array([r.flagged for r in self.assess(features, pixel_std, colour)], dtype=bool)

    def _result(self, distance: float, pixel_std: float, colour: float) -> OODResult:
        limit = self.threshold

        def flagged(cue: str, reason: str) -> OODResult:
            return OODResult(distance, limit, True, reason, cue, colour)

        if colour > COLOUR_FRACTION:
            return flagged(
                "colour",
                f"This is a colour picture ({colour:.0%} of its pixels are coloured) and CT "
                "slices are grey, so it looks like a photo or a screenshot: no verdict is shown.",
            )
        if pixel_std < BLANK_STD:
            return flagged(
                "blank",
                "This image is blank (almost a single grey level), so there is nothing for the "
                "model to read: no verdict is shown.",
            )
        if not np.isfinite(distance) or distance > limit:
            return flagged(
                "features",
                f"This image does not look like the chest CT slices the model learned from "
                f"(distance {distance:.1f}, limit {limit:.1f}): it may be a photo, an X-ray, a "
                "screenshot, another kind of scan, or a CT slice framed unlike the training "
                "slices (which are cropped to the body), so no verdict is shown.",
            )
        return OODResult(
            distance,
            limit,
            False,
            f"This image looks like the chest CT slices the model learned from (distance "
            f"{distance:.1f}, within the limit of {limit:.1f}).",
            None,
            colour,
        )

    def summary(self) -> dict:
        """What a model card records about its detector."""
        return {
            "method": self.method,
            "layer": self.layer or "input of the last Dense layer",
            "feature_dim": self.dim,
            "shrinkage": round(self.shrinkage, 5),
            "threshold": round(self.threshold, 4),
            "quantile": self.quantile,
            "margin": self.margin,
            "train_slices": self.train_slices,
            "validation_slices": self.validation_slices,
            "validation_acceptance": round(self.validation_acceptance, 4),
            "validation_distances": self.validation_distances,
        }

    def save(self, path: Path | str) -> Path:
        """Write a small .npz (no pickled objects), atomically."""
        path = Path(path)
        arrays = {
            "format_version": np.array(FORMAT_VERSION),
            "mean": self.mean.astype(np.float64),
            "precision": self.precision.astype(np.float64),
            "threshold": np.array(self.threshold),
            "layer": np.array(self.layer or ""),
            "shrinkage": np.array(self.shrinkage),
            "quantile": np.array(self.quantile),
            "margin": np.array(self.margin),
            "train_slices": np.array(self.train_slices),
            "validation_slices": np.array(self.validation_slices),
            "validation_acceptance": np.array(self.validation_acceptance),
            "model_digest": np.array(self.model_digest),
            "validation_distance_names": np.array(list(self.validation_distances), dtype=str),
            "validation_distance_values": np.array(
                list(self.validation_distances.values()), dtype=np.float64
            ),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez_compressed(stream, **arrays)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from the app's user
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path | str) -> OODDetector:
        """Read a detector written by `save`; `OODLoadError` for anything else."""
        path = Path(path)
        if not path.is_file():
            raise OODLoadError(f"No detector file at {path}.")
        try:
            with zipfile.ZipFile(path) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
            if unpacked > MAX_DETECTOR_BYTES:
                raise OODLoadError(f"{path.name} unpacks to {unpacked / 2**20:.0f} MB; refused.")
            with np.load(path, allow_pickle=False) as archive:
                values = {key: archive[key] for key in archive.files}
            detector = cls._from_arrays(values)
        except OODLoadError:
            raise
        except Exception as error:  # zip, numpy and key errors: all mean "not our file"
            raise OODLoadError(f"{path.name} is not a valid detector file ({error}).") from None
        return detector

    @classmethod
    def _from_arrays(cls, values: dict[str, np.ndarray]) -> OODDetector:
        if int(values["format_version"]) != FORMAT_VERSION:
            raise OODLoadError(f"Detector format {int(values['format_version'])} is unknown.")
        mean = values["mean"].astype(np.float64)
        precision = values["precision"].astype(np.float64)
        threshold = float(values["threshold"])
        if mean.ndim != 1 or precision.shape != (mean.size, mean.size):
            raise OODLoadError("The detector's mean and precision do not fit together.")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(precision))) or not (
            np.isfinite(threshold) and threshold > 0
        ):
            raise OODLoadError("The detector holds values that are not finite numbers.")
        names = [str(name) for name in values["validation_distance_names"]]
        return cls(
            mean=mean,
            precision=precision,
            threshold=threshold,
            layer=str(values["layer"]) or None,
            shrinkage=float(values["shrinkage"]),
            quantile=float(values["quantile"]),
            margin=float(values["margin"]),
            train_slices=int(values["train_slices"]),
            validation_slices=int(values["validation_slices"]),
            validation_acceptance=float(values["validation_acceptance"]),
            model_digest=str(values["model_digest"]),
            validation_distances=dict(
                zip(names, map(float, values["validation_distance_values"]), strict=True)
            ),
        )


def _describe(distances: np.ndarray) -> dict[str, float]:
    return {
        "median": round(float(np.median(distances)), 3),
        "p99": round(float(np.quantile(distances, 0.99)), 3),
        "max": round(float(np.max(distances)), 3),
    }


# --- Fitting and using it with a model --------------------------------------------------------


def fit_detector(
    model: keras.Model,
    train_x: np.ndarray,
    val_x: np.ndarray,
    layer: str | None = "auto",
    quantile: float = VALIDATION_QUANTILE,
    margin: float = THRESHOLD_MARGIN,
) -> OODDetector:
    """Fit a detector for `model` on its training and validation inputs (n, size, size, c).

    `layer="auto"` takes `detector_layer(model)`; None the input of the last Dense layer."""
    layer = detector_layer(model) if layer == "auto" else layer
    extractor = feature_extractor(model, layer)
    return OODDetector.fit(
        extract_features(extractor, train_x),
        extract_features(extractor, val_x),
        quantile,
        margin,
        layer=layer,
        model_digest=model_digest(model),
    )


def fit_detector_from_card(
    model: keras.Model, card: ModelCard, dataset: ArrayDataset, **kwargs
) -> OODDetector:
    """Fit a detector for an already trained model: validation = the files its card lists,
    training = every other file of `dataset` (the data it trained on, at its input size)."""
    validation = set(card.validation.get("files", []))
    if not validation:
        raise ValueError(f"The card of {card.name!r} lists no validation files.")
    is_val = np.array([file in validation for file in dataset.files])
    missing = len(validation) - int(is_val.sum())
    if missing:
        raise ValueError(
            f"{missing} of the card's {len(validation)} validation files are not in the data: "
            "it is not the data this model was trained on."
        )
    if dataset.x.shape[1] != card.image_size:
        raise ValueError(
            f"The data is at {dataset.x.shape[1]} px; the model takes {card.image_size}."
        )
    x = dataset.x if card.channels == 1 else np.repeat(dataset.x, card.channels, axis=-1)
    return fit_detector(model, x[~is_val], x[is_val], **kwargs)


def load_detector(model_path: Path | str, model: keras.Model | None = None) -> OODDetector | None:
    """The detector beside a model file, or None when there is none. With `model`, refuses
    (`OODLoadError`) a detector fitted for other weights."""
    path = ood_path(model_path)
    if not path.is_file():
        return None
    detector = OODDetector.load(path)
    if model is not None and detector.model_digest and detector.model_digest != model_digest(model):
        raise OODLoadError(
            f"{path.name} was fitted for other weights than {Path(model_path).name}; "
            "fit it again (training writes it)."
        )
    return detector


def check_file(
    data: bytes,
    extractor: keras.Model,
    detector: OODDetector,
    image_size: int,
    channels: int = 1,
    filename: str | None = None,
    scale: float = 1.0,
) -> OODResult:
    """Check one uploaded file through the one preprocessing path (`decode_slice`,
    `to_model_input`, times `scale`: the card's input scale). `extractor` is
    `feature_extractor(model, detector.layer)`, built once per model. Raises
    `ctdemo.io.slices.SliceError` for files that are not images."""
    decoded = decode_slice(data, filename)
    x = to_model_input(decoded.pixels, image_size, channels)[np.newaxis]
    pixel_std = float(x.std())
    features = extract_features(extractor, x if scale == 1.0 else x * np.float32(scale))[0]
    return detector.check(features, pixel_std, colour_fraction(data))

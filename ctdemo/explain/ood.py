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

The layer the detector reads, and the model side (features, fitting, the file beside a model),
are in `ctdemo.explain.ood_model`.

Two cheap cues that need no model, checked first:
- colour: every one of the 1,971 slices of the SARS-CoV-2 CT dataset is grey (red, green and
  blue never differ by more than 1/255), so a file in which more than 5% of the pixels are
  clearly coloured (`DecodedSlice.colour_fraction`, measured as the file is decoded) is a
  photo or a screenshot;
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

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OOD_SUFFIX = ".ood.npz"

VALIDATION_QUANTILE = 0.995
THRESHOLD_MARGIN = 1.25
"""Threshold = the validation distances' 99.5th percentile x 1.25 (see the module's text)."""

COLOUR_FRACTION = 0.05
"""More than this fraction of coloured pixels: a colour picture, not a CT slice."""
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
        standard deviation (blank check); `colour`: each slice's `DecodedSlice.colour_fraction`."""
        distances = np.atleast_1d(self.score(np.atleast_2d(features)))
        count = len(distances)
        pixel_std = np.full(count, np.inf) if pixel_std is None else np.atleast_1d(pixel_std)
        colour = np.zeros(count) if colour is None else np.atleast_1d(colour)
        return [
            self._result(float(d), float(s), float(c))
            for d, s, c in zip(distances, pixel_std, colour, strict=True)
        ]

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

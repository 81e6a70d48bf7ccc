"""Bring your own model: load a visitor's Keras classifier safely and make it work like ours.

`read_uploaded_model` refuses anything that could run code before Keras sees the file: the
architecture (the `.keras` zip's `config.json`, or the `.h5` file's `model_config` attribute) is
read and checked first, and only Keras built-in layers and objects pass; no `Lambda`, nothing
registered as a custom object, no module outside Keras. `check_cost` then propagates shapes
through that architecture, still without building anything, and refuses a model too big to
build or run here (layers, weights, activations or operations per slice; bounds below). Only
then is the file loaded, in Keras safe mode, from a private temporary copy that is always
deleted.

`adapt_uploaded_model` turns the loaded model into one of ours: a functional model with every
layer at the top level (so Grad-CAM finds the last convolution), a (size, size, channels) input
and one logit per class, with a `ModelCard`. A model that expects 0-255 pixels keeps its own
rescaling; the card's `input["scale"]` says to multiply our [0, 1] input by 255 first.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path, PurePath
from typing import Any

import keras
import numpy as np

from ctdemo.models import cards, saving
from ctdemo.models.cards import (
    ModelCard,
    ModelLoadError,
    default_positive_class,
    preprocessing_spec,
)
from ctdemo.models.cost import (
    MAX_UNPACKED_FACTOR,
    MODEL_CLASSES,
    ModelCost,
    check_cost,
    check_image_shape,
)
from ctdemo.models.features import OWN_LAYERS
from ctdemo.models.inference import BATCH_SIZE

SUFFIXES = (".keras", ".h5")
MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""Largest architecture description we parse (a ResNet-50's is about 0.2 MB)."""
KERAS_ZIP_ENTRIES = frozenset({"config.json", "metadata.json", "model.weights.h5"})
OUTPUT_KINDS = ("probabilities", "logits")
CUSTOM_REFUSAL = "custom objects are refused: they would run code from the file"
PROBABILITY_FLOOR = 1e-7
"""Probabilities are clipped to [floor, 1] before their log when logits cannot be recovered."""

_ACTIVATIONS = ("softmax", "sigmoid", "linear")
_SERIALISATION_MARKERS = frozenset(
    {
        "__keras_tensor__",
        "__tensor__",
        "__numpy__",
        "__bytes__",
        "__ellipsis__",
        "__slice__",
        "__tuple__",
        "TensorShape",
    }
)
_REFUSED_BUILTINS = {
    "TFSMLayer": "loads a TensorFlow SavedModel from the server's disk",
    "TorchModuleWrapper": "unpickles a PyTorch module, which runs code",
    "JaxLayer": "wraps arbitrary JAX functions",
    "FlaxLayer": "wraps arbitrary Flax modules",
    "StringLookup": "can read a vocabulary file from the server's disk",
    "IntegerLookup": "can read a vocabulary file from the server's disk",
    "TextVectorization": "can read a vocabulary file from the server's disk",
    "TypeSpec": "names TensorFlow type specifications, which image classifiers do not need",
    "CompositeTensor": "names TensorFlow composite tensors, which image classifiers do not need",
    "__typespec__": "names TensorFlow type specifications, which image classifiers do not need",
}
_CONTROL_FLOW = ("Map", "Scan", "AssociativeScan", "Switch", "WhileLoop", "ForiLoop", "Cond")
_REFUSED_BUILTINS.update(
    dict.fromkeys((*_CONTROL_FLOW, "VectorizedMap"), "is control flow that calls functions")
)


@dataclass(frozen=True)
class UploadedModelInfo:
    """What an uploaded model is, as far as its file tells: shown to the visitor before use."""

    filename: str
    file_format: str  # "keras" or "h5"
    image_size: int
    channels: int  # 1 or 3
    expects_0_255: bool  # rescales by 1/255 (or 1/127.5) itself near its input
    last_conv: str | None  # where Grad-CAM looks; None without a Conv2D
    output_units: int
    output_activation: str  # "softmax", "sigmoid" or "linear"
    parameters: int
    is_sequential: bool
    cost: ModelCost | None = None  # from the architecture, before loading

    @property
    def suggested_outputs(self) -> str:
        """What the model most likely outputs: logits after a linear last layer, otherwise
        probabilities."""
        return "logits" if self.output_activation == "linear" else "probabilities"


# --- reading -------------------------------------------------------------------------------------


def read_uploaded_model(data: bytes, filename: str) -> tuple[keras.Model, UploadedModelInfo]:
    """Check, load and describe an uploaded `.keras` or `.h5` classifier.

    Raises `ModelLoadError` (a message for a person) for anything we will not or cannot use."""
    suffix = _check_upload(data, filename)
    filename = PurePath(filename).name
    if suffix == ".keras":
        config = _keras_zip_config(data, filename)
    else:
        config = _h5_model_config(data, filename)
    check_architecture(config, filename)
    cost = check_cost(config, filename)
    model = _load(data, suffix, filename)
    return model, describe_model(model, filename, suffix.lstrip("."), cost)


def _check_upload(data: bytes, filename: str) -> str:
    name = PurePath(filename or "").name or "The upload"
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelLoadError(
            f"{name} is not a .keras or .h5 file; save the model with "
            "model.save('model.keras') and upload that file."
        )
    if not data:
        raise ModelLoadError(f"{name} is empty (0 bytes); upload the saved model file again.")
    limit = cards.MAX_MODEL_BYTES
    if len(data) > limit:
        raise ModelLoadError(
            f"{name} is {_size(len(data))}; models over {_size(limit)} are refused, so upload "
            "a smaller model."
        )
    return suffix


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.1f} KB"


def _keras_zip_config(data: bytes, filename: str) -> dict:
    """The architecture from a `.keras` zip, read in memory with bounded sizes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ModelLoadError(
            f"{filename} is not a Keras file (a .keras file is a zip archive); save the model "
            "with model.save('model.keras') and upload that file."
        ) from None
    with archive:
        entries = archive.infolist()
        names = [entry.filename for entry in entries]
        if "config.json" not in names or "model.weights.h5" not in names:
            raise ModelLoadError(
                f"{filename} is a zip archive but not a Keras model (it has no config.json and "
                "model.weights.h5); save the model with model.save('model.keras')."
            )
        unexpected = sorted(set(names) - KERAS_ZIP_ENTRIES)
        if unexpected or len(names) != len(set(names)):
            shown = ", ".join(unexpected[:5]) or "duplicate entries"
            raise ModelLoadError(
                f"{filename} holds more than a Keras model ({shown}); upload a file written by "
                "model.save('model.keras') with no assets."
            )
        unpacked = sum(entry.file_size for entry in entries)
        if unpacked > MAX_UNPACKED_FACTOR * cards.MAX_MODEL_BYTES:
            raise ModelLoadError(
                f"{filename} would unpack to {_size(unpacked)}; upload a smaller model."
            )
        try:
            with archive.open("config.json") as stream:
                raw = stream.read(MAX_CONFIG_BYTES + 1)
            with archive.open("model.weights.h5") as stream:
                _check_hdf5(stream, filename)
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError) as error:
            raise ModelLoadError(
                f"{filename} is damaged ({error}); save the model again and upload the new file."
            ) from None
    return _parse_config(raw, filename)


def _h5_model_config(data: bytes, filename: str) -> dict:
    """The architecture stored in a legacy `.h5` model, read in memory with h5py."""
    import h5py

    if not data.startswith(b"\x89HDF\r\n\x1a\n"):
        raise ModelLoadError(
            f"{filename} is not an HDF5 file; save the model with model.save('model.h5') "
            "or, better, model.save('model.keras')."
        )
    try:
        with h5py.File(io.BytesIO(data), "r") as file:
            raw = file.attrs.get("model_config")
            has_weights = "model_weights" in file
        _check_hdf5(io.BytesIO(data), filename)
    except ModelLoadError:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, ValueError on damaged files
        raise ModelLoadError(
            f"{filename} is a damaged HDF5 file ({error}); save the model again and upload it."
        ) from None
    if raw is None:
        raise ModelLoadError(
            f"{filename} holds weights but no model architecture; save the whole model with "
            "model.save('model.keras'), not model.save_weights()."
        )
    if not has_weights:
        raise ModelLoadError(
            f"{filename} describes a model but holds no weights; save it with model.save()."
        )
    if hasattr(raw, "tobytes") and not isinstance(raw, bytes | str):
        raw = raw.tobytes()
    return _parse_config(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw), filename)


def _check_hdf5(stream: Any, filename: str) -> None:
    """Refuse HDF5 weights that reach outside the file (external or soft links, external
    storage, virtual datasets: Keras would read the server's files as weights) or that declare
    far more data than an upload can hold (a memory bomb). Reads no data, only the layout."""
    import h5py

    problems: list[str] = []
    declared = 0

    with h5py.File(stream, "r") as file:

        def visit(name: str, link: object) -> None:
            nonlocal declared
            if not isinstance(link, h5py.HardLink):
                problems.append(f"a link named {name!r}")
                return
            item = file.get(name)
            if isinstance(item, h5py.Dataset):
                if item.is_virtual or item.id.get_create_plist().get_external_count():
                    problems.append(f"the dataset {name!r}, stored outside the file")
                declared += int(item.size) * item.dtype.itemsize

        file.visititems_links(visit)
    if problems:
        raise ModelLoadError(
            f"{filename} has weights that point outside the file ({problems[0]}); upload a "
            "model saved by Keras's model.save()."
        )
    if declared > MAX_UNPACKED_FACTOR * cards.MAX_MODEL_BYTES:
        raise ModelLoadError(
            f"{filename} declares {_size(declared)} of weights; upload a smaller model."
        )


def _parse_config(raw: bytes, filename: str) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"The architecture in {filename} is over {MAX_CONFIG_BYTES // 2**20} MB of JSON; "
            "upload a smaller model."
        )
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise ModelLoadError(
            f"The architecture in {filename} is not valid JSON; save the model again with "
            "model.save() and upload the new file."
        ) from None
    if not isinstance(config, dict) or config.get("class_name") not in MODEL_CLASSES:
        raise ModelLoadError(
            f"{filename} does not hold a Keras Sequential or functional model; subclassed "
            "models cannot be checked, so rebuild it with the functional API."
        )
    return config


# --- the static check --------------------------------------------------------------------------


def check_architecture(config: dict, filename: str = "The model") -> None:
    """Refuse, without deserialising anything, an architecture that could run code when loaded:
    a `Lambda`, a registered custom object, an object from a module outside Keras, a function
    that is not a Keras activation, loss or metric, or one of the few built-ins that load
    outside code or files. Walks every nested config (Sequential inside functional, etc.)."""
    stack: list[Any] = [config]
    top = True
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str):
                _check_object(item, filename)
            for key, value in item.items():
                # The top-level compile_config is dropped unread by load_model(compile=False).
                if not (top and key == "compile_config"):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and item in _registered_names():
            raise ModelLoadError(
                f"{filename} refers to the registered custom object {item!r}; {CUSTOM_REFUSAL}."
            )
        top = False


def _check_object(item: dict, filename: str) -> None:
    class_name = item["class_name"]
    module = item.get("module")
    registered = item.get("registered_name")
    inner = item.get("config")
    label = inner.get("name") if isinstance(inner, dict) else None
    called = f"{class_name} layer {label!r}" if label else repr(class_name)
    if class_name in ("Lambda", "__lambda__"):
        raise ModelLoadError(
            f"{filename} contains a Lambda layer{f' ({label!r})' if label else ''}, which would "
            "run Python code stored in the file; rebuild the model with built-in Keras layers."
        )
    if class_name in _REFUSED_BUILTINS:
        raise ModelLoadError(
            f"{filename} uses {called}, which {_REFUSED_BUILTINS[class_name]}; rebuild the model "
            "without it."
        )
    if class_name in _SERIALISATION_MARKERS:
        return
    if (module, class_name) in OWN_LAYERS.get(registered, ()):
        return  # our own layer: its code is ours, its config numbers
    custom = (
        ">" in class_name
        or registered not in (None, class_name, "function")
        or (isinstance(module, str) and not _is_keras_module(module, class_name))
        or (module is not None and not isinstance(module, str))
    )
    if class_name == "function":
        if custom or not _is_builtin_function(inner):
            raise ModelLoadError(
                f"{filename} refers to the function {inner!r}"
                f"{f' from {module}' if module else ''}, which is not a Keras activation, loss "
                f"or metric; {CUSTOM_REFUSAL}."
            )
        return
    if custom or class_name not in _builtin_class_names():
        source = f" (from {module})" if isinstance(module, str) and module else ""
        raise ModelLoadError(
            f"{filename} uses {called}{source}, which is not a Keras built-in; {CUSTOM_REFUSAL}."
        )


def _is_keras_module(module: str, class_name: str) -> bool:
    if class_name == "function" and module == "builtins":
        return True  # Keras's own name for its built-in activations, losses and metrics
    return module == "keras" or module.startswith("keras.")


def _is_builtin_function(name: object) -> bool:
    if not isinstance(name, str) or name.startswith("_"):
        return False
    namespaces = (keras.activations, keras.losses, keras.metrics)
    return any(callable(getattr(namespace, name, None)) for namespace in namespaces)


@cache
def _builtin_class_names() -> frozenset[str]:
    """Public classes of the Keras namespaces a model's architecture is made of."""
    namespaces = (
        keras.layers,
        keras.initializers,
        keras.regularizers,
        keras.constraints,
        keras.dtype_policies,
        keras.optimizers,
        keras.optimizers.schedules,
        keras.losses,
        keras.metrics,
    )
    names = {
        name
        for namespace in namespaces
        for name, value in vars(namespace).items()
        if isinstance(value, type) and not name.startswith("_")
    }
    names |= _operation_class_names()
    return frozenset((names | MODEL_CLASSES) - set(_REFUSED_BUILTINS) - {"Lambda"})


def _operation_class_names() -> set[str]:
    """`keras.ops` calls in a functional graph are saved as operation classes (Multiply,
    Softmax, ...) of the `keras.src.ops` modules: stateless maths, safe to rebuild."""
    import sys

    from keras.src.ops.operation import Operation

    modules = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("keras.src.ops.") and not name.endswith("_test") and module
    ]
    return {
        name
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, Operation) and not name.startswith("_")
    }


def _registered_names() -> frozenset[str]:
    """Names of objects registered in this process: a config string naming one would load it."""
    return frozenset(keras.saving.get_custom_objects()) - OWN_LAYERS.keys()


# --- loading -----------------------------------------------------------------------------------


def _load(data: bytes, suffix: str, filename: str) -> keras.Model:
    """Load from a private temporary copy (Keras reads paths), deleted whatever happens."""
    try:
        with tempfile.TemporaryDirectory(prefix="ctdemo-upload-") as folder:
            path = Path(folder) / f"uploaded{suffix}"
            path.write_bytes(data)
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ModelLoadError(f"{filename} could not be loaded as a Keras model: {reason}") from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{filename} does not hold a Keras model.")
    return model


# --- describing --------------------------------------------------------------------------------


def describe_model(
    model: keras.Model, filename: str, file_format: str, cost: ModelCost | None = None
) -> UploadedModelInfo:
    """Input geometry, head and size of a loaded model; `ModelLoadError` for one we cannot use."""
    size, channels = _image_input(model, filename)
    units = _output_units(model, filename)
    try:
        flat = _flatten(model)
    except Exception as error:  # a layer whose config does not rebuild it, a subclassed model
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ModelLoadError(
            f"{filename} loaded, but its layers could not be laid out for explanations: {reason}"
        ) from None
    from ctdemo.explain.saliency import last_conv_layer

    return UploadedModelInfo(
        filename=filename,
        file_format=file_format,
        image_size=size,
        channels=channels,
        expects_0_255=_rescales_0_255(flat),
        last_conv=last_conv_layer(flat),
        output_units=units,
        output_activation=output_activation(model),
        parameters=int(model.count_params()),
        is_sequential=isinstance(model, keras.Sequential),
        cost=cost,
    )


def _image_input(model: keras.Model, filename: str) -> tuple[int, int]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ModelLoadError(
            f"{filename} does not declare its input shape; build it with keras.Input(shape=...) "
            "and save it again."
        )
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{filename} takes {len(inputs)} inputs; upload a model that takes one image."
        )
    return check_image_shape(tuple(inputs[0].shape)[1:], filename)


def _output_units(model: keras.Model, filename: str) -> int:
    if len(model.outputs) != 1:
        raise ModelLoadError(
            f"{filename} has {len(model.outputs)} outputs; upload a classifier with one output."
        )
    shape = tuple(model.outputs[0].shape)[1:]
    if len(shape) != 1 or shape[0] is None or shape[0] < 1:
        raise ModelLoadError(
            f"{filename} outputs shape {shape}, not one score per class; upload a classifier "
            "whose last layer is a Dense layer."
        )
    return int(shape[0])


def output_activation(model: keras.Model) -> str:
    """The last layer's activation: "softmax", "sigmoid" or "linear" (anything else).

    A separate `Activation` or `Softmax` last layer counts too."""
    return _activation_of(_head_layer(model))


def _activation_of(layer: object) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if _is_activation_operation(layer):
        return type(layer).__name__.lower()
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return name if name in _ACTIVATIONS else "linear"


def _is_activation_operation(op: object) -> bool:
    """`keras.ops.softmax` or `keras.ops.sigmoid` applied in a functional graph."""
    return type(op).__module__.startswith("keras.src.ops") and type(op).__name__ in (
        "Softmax",
        "Sigmoid",
    )


def _is_separate_activation(op: object) -> bool:
    """A last step that only applies the activation: dropping it leaves the logits."""
    return isinstance(op, keras.layers.Activation | keras.layers.Softmax) or (
        _is_activation_operation(op)
    )


def _head_layer(model: keras.Model) -> object:
    """The innermost operation that produces the model's output (descending nested models)."""
    head: object = model
    while isinstance(head, keras.Model):
        if isinstance(head, keras.Sequential):
            head = head.layers[-1]
        else:
            head = head.outputs[0]._keras_history.operation
    return head


def _rescales_0_255(flat: keras.Model, within: int = 3) -> bool:
    """True when one of the first layers is a Rescaling by 1/255 (to [0, 1]) or 1/127.5
    (to [-1, 1]): the model was trained on raw 0-255 pixels."""
    layers = [layer for layer in flat.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in layers[:within]:
        if isinstance(layer, keras.layers.Rescaling):
            scales = layer.scale if isinstance(layer.scale, list | tuple) else [layer.scale]
            try:
                values = [float(scale) * 255.0 for scale in scales]
            except (TypeError, ValueError):
                return False
            return all(math.isclose(v, 1.0, rel_tol=1e-3) for v in values) or all(
                math.isclose(v, 2.0, rel_tol=1e-3) for v in values
            )
    return False


# --- flattening --------------------------------------------------------------------------------


class _Flattener:
    """Replays a (possibly nested) model's graph on a new input with fresh copies of its leaf
    layers, so every layer is at the top level and has one call: tf-keras-vis reads
    `layer.output`, which a layer called in two graphs does not have unambiguously."""

    def __init__(self, model: keras.Model, head: object, head_mode: str) -> None:
        self.head = head
        self.head_mode = head_mode  # "keep", "strip" (drop it) or "linear" (drop its activation)
        self.copies: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]] = {}
        self.names = _unique_names(_leaf_layers(model))

    def run(self, model: keras.Model, inputs: Any) -> Any:
        if isinstance(model, keras.Sequential):
            x = inputs
            for layer in model.layers:
                x = self.operation(layer)(x)
            return x
        if not hasattr(model, "_run_through_graph"):
            raise ValueError(f"Cannot rebuild the subclassed model {model.name!r}.")
        # Functional models replay their graph through `operation_fn` (Keras's own mechanism).
        return model._run_through_graph(inputs, operation_fn=self.operation)

    def operation(self, op: object) -> Any:
        if isinstance(op, keras.Model):
            return lambda inputs, *args, **kwargs: self.run(op, inputs)
        if op is self.head and self.head_mode == "strip":
            return lambda inputs, *args, **kwargs: inputs
        if isinstance(op, keras.layers.Layer):
            return self.copy(op)
        return op  # a stateless keras.ops operation

    def copy(self, layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) not in self.copies:
            config = layer.get_config()
            config["name"] = self.names.get(id(layer), layer.name)
            if layer is self.head and self.head_mode == "linear":
                config["activation"] = "linear"
            self.copies[id(layer)] = (layer, type(layer).from_config(config))
        return self.copies[id(layer)][1]

    def copy_weights(self) -> None:
        for original, copy in self.copies.values():
            if copy.built:
                copy.set_weights(original.get_weights())


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves: list[keras.layers.Layer] = []
    seen: set[int] = set()
    for layer in model.layers:
        found = _leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]
        for leaf in found:
            if id(leaf) not in seen and not isinstance(leaf, keras.layers.InputLayer):
                seen.add(id(leaf))
                leaves.append(leaf)
    return leaves


def _unique_names(layers: list[keras.layers.Layer]) -> dict[int, str]:
    """Layers of different sub-models may share a name; at the top level they cannot."""
    taken: set[str] = set()
    names: dict[int, str] = {}
    for layer in layers:
        name, number = layer.name, 1
        while name in taken:
            number += 1
            name = f"{layer.name}_{number}"
        taken.add(name)
        names[id(layer)] = name
    return names


def _flat_graph(
    model: keras.Model, head_mode: str
) -> tuple[keras.KerasTensor, keras.KerasTensor, _Flattener]:
    """A new input, the model's output replayed from it with fresh layers, and the replayer
    (whose `copy_weights` must run once the graph is built)."""
    flattener = _Flattener(model, _head_layer(model), head_mode)
    original = model.inputs[0]
    input_name = getattr(original._keras_history.operation, "name", None)
    if input_name in flattener.names.values():
        input_name = None
    inputs = keras.Input(shape=tuple(original.shape)[1:], dtype="float32", name=input_name)
    return inputs, flattener.run(model, inputs), flattener


def _flatten(model: keras.Model) -> keras.Model:
    """The model as one functional graph with every layer at the top level, same weights."""
    inputs, outputs, flattener = _flat_graph(model, "keep")
    flat = keras.Model(inputs, outputs, name=model.name)
    flattener.copy_weights()
    return flat


# --- adapting ----------------------------------------------------------------------------------


def adapt_uploaded_model(
    model: keras.Model,
    info: UploadedModelInfo,
    class_names: list[str],
    outputs: str | None = None,
    positive_class: str | None = None,
    input_range_0_255: bool | None = None,
    name: str | None = None,
) -> tuple[keras.Model, ModelCard]:
    """A functional model giving one logit per class, softmax of which is the uploaded
    model's class probabilities, with every layer at the top level, and its card.

    `outputs` is what the uploaded model outputs: "probabilities" (softmax or sigmoid) or
    "logits" (default: guessed from its last layer). A single output unit separates two
    classes: `positive_class` is the one its high values mean. `input_range_0_255` (default:
    `info.expects_0_255`) records in the card that inputs are multiplied by 255 before the
    model sees them. Raises `ValueError` when the classes do not fit the model's outputs."""
    class_names = _checked_class_names(class_names)
    outputs = outputs or info.suggested_outputs
    _check_head(info, class_names, outputs)
    positive = _positive_class(class_names, positive_class, info.output_units)
    if input_range_0_255 is None:
        input_range_0_255 = info.expects_0_255
    scale = 255.0 if input_range_0_255 else 1.0

    exact = outputs == "probabilities" and info.output_activation != "linear"
    head_mode = "keep"
    if exact:
        head_mode = "strip" if _is_separate_activation(_head_layer(model)) else "linear"
    inputs, scores, flattener = _flat_graph(model, head_mode)
    if outputs == "probabilities" and not exact:
        scores = _log_probabilities(scores, info.output_units)
    two_class = None
    if info.output_units == 1:
        taken = set(flattener.names.values())
        two_class = keras.layers.Dense(
            2, use_bias=False, trainable=False, name=_free_name("logits", taken)
        )
        scores = two_class(scores)
    adapted = keras.Model(inputs, scores, name=f"uploaded_{model.name}")
    flattener.copy_weights()
    if two_class is not None:
        kernel = [[0.0, 0.0]]
        kernel[0][class_names.index(positive)] = 1.0
        two_class.set_weights([np.asarray(kernel, dtype=np.float32)])

    from ctdemo.explain.saliency import last_conv_layer

    card = ModelCard(
        name=name or PurePath(info.filename).stem or "uploaded",
        class_names=class_names,
        positive_class=positive,
        input={
            **preprocessing_spec(info.image_size, info.channels),
            "in_model": "whatever the uploaded model does (unknown to us)",
            "scale": scale,
        },
        architecture={
            "kind": "uploaded",
            "source_file": info.filename,
            "format": info.file_format,
            "last_conv": last_conv_layer(adapted),
            "outputs": outputs,
            "output_activation": info.output_activation,
            "output_units": info.output_units,
            "slices_per_batch": info.cost.slices_per_batch if info.cost else BATCH_SIZE,
        },
        output=_output_description(info, outputs, exact, class_names, positive),
        parameters=info.parameters,
        versions=saving.library_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return adapted, card


def _checked_class_names(class_names: list[str]) -> list[str]:
    names = [str(name).strip() for name in class_names]
    if len(names) < 2:
        raise ValueError(f"Name at least two classes (got {len(names)}).")
    if any(not name for name in names):
        raise ValueError("Class names cannot be empty.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must differ from each other (got {names}).")
    return names


def _check_head(info: UploadedModelInfo, class_names: list[str], outputs: str) -> None:
    units, activation, count = info.output_units, info.output_activation, len(class_names)
    if outputs not in OUTPUT_KINDS:
        raise ValueError(f"outputs must be 'probabilities' or 'logits', not {outputs!r}.")
    if outputs == "logits" and activation != "linear":
        raise ValueError(
            f"The model's last layer applies {activation}, so it outputs probabilities, not "
            "logits; choose 'probabilities'."
        )
    if units == 1:
        if count != 2:
            raise ValueError(
                f"The model has one output unit, which separates two classes; name exactly two "
                f"classes, not {count}."
            )
        if activation == "softmax":
            raise ValueError(
                "The model ends in a softmax over one unit, which is always 1 whatever the "
                "image; it cannot be used as a classifier."
            )
        return
    if units != count:
        raise ValueError(
            f"The model has {units} output units but {count} class names were given; name one "
            "class per output unit, in the model's order."
        )
    if activation == "sigmoid":
        raise ValueError(
            f"The model ends in {units} independent sigmoid units (multi-label yes/no scores), "
            "not one probability per class; upload a model with a softmax or a single sigmoid "
            "output."
        )


def _positive_class(class_names: list[str], positive_class: str | None, units: int) -> str | None:
    if positive_class is not None and positive_class not in class_names:
        raise ValueError(
            f"The positive class {positive_class!r} is not one of the classes {class_names}."
        )
    if units == 1 and positive_class is None:
        raise ValueError(
            "The model has one output unit: name the class its high values mean "
            f"(positive_class, one of {class_names})."
        )
    return positive_class if positive_class is not None else default_positive_class(class_names)


def _log_probabilities(probabilities: keras.KerasTensor, units: int) -> keras.KerasTensor:
    """Logits from probabilities when the pre-activation is out of reach: log p (softmax of
    which is p again), or for one unit the log-odds log p - log(1 - p)."""
    ops = keras.ops
    p = ops.clip(probabilities, PROBABILITY_FLOOR, 1.0)
    if units > 1:
        return ops.log(p)
    return ops.log(p) - ops.log(ops.clip(1.0 - probabilities, PROBABILITY_FLOOR, 1.0))


def _output_description(
    info: UploadedModelInfo, outputs: str, exact: bool, class_names: list[str], positive: str
) -> str:
    text = "logits: one per class, softmax gives probabilities"
    if exact:
        source = f"the uploaded model's output before its {info.output_activation}"
    elif outputs == "probabilities":
        source = "the log of the uploaded model's probabilities"
    else:
        source = "the uploaded model's logits"
    if info.output_units == 1:
        other = next(name for name in class_names if name != positive)
        return f"{text} ({source} for {positive}, 0 for {other})"
    return f"{text} ({source})"


def _free_name(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate

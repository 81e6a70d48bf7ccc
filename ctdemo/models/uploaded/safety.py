"""The allow-list an uploaded architecture must pass before Keras deserialises any of it.

Only Keras built-in layers and objects (and our own layers, whose code is ours) pass: no
`Lambda`, nothing registered as a custom object, no module outside Keras, no function that is
not a Keras activation, loss or metric, and none of the few built-ins that load outside code or
files. Anything else would run code, or read the server's files, when the model is loaded.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import keras

# Private, but the one place Keras defines what a `keras.ops` step in a saved graph is.
from keras.src.ops.operation import Operation

from ctdemo.models.cards import ModelLoadError
from ctdemo.models.features import OWN_LAYERS
from ctdemo.models.uploaded.cost import MODEL_CLASSES

CUSTOM_REFUSAL = "custom objects are refused: they would run code from the file"

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
_TYPE_SPECS = "names TensorFlow type specifications, which image classifiers do not need"
_VOCABULARY = "can read a vocabulary file from the server's disk"
_CONTROL_FLOW = "is control flow that calls functions"
_REFUSED_BUILTINS = {
    "TFSMLayer": "loads a TensorFlow SavedModel from the server's disk",
    "TorchModuleWrapper": "unpickles a PyTorch module, which runs code",
    "JaxLayer": "wraps arbitrary JAX functions",
    "FlaxLayer": "wraps arbitrary Flax modules",
    "StringLookup": _VOCABULARY,
    "IntegerLookup": _VOCABULARY,
    "TextVectorization": _VOCABULARY,
    "TypeSpec": _TYPE_SPECS,
    "CompositeTensor": "names TensorFlow composite tensors, which image classifiers do not need",
    "__typespec__": _TYPE_SPECS,
    **dict.fromkeys(
        ("Map", "Scan", "AssociativeScan", "Switch", "WhileLoop", "ForiLoop", "Cond"),
        _CONTROL_FLOW,
    ),
    "VectorizedMap": _CONTROL_FLOW,
}


def check_architecture(config: dict, filename: str = "The model") -> None:
    """Refuse, without deserialising anything, an architecture that could run code when loaded.
    Walks every nested config (Sequential inside functional, etc.) without recursion."""
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
    """One serialised object (`class_name`, `module`, `registered_name`, `config`)."""
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
    if class_name in _SERIALISATION_MARKERS or (module, class_name) in OWN_LAYERS.get(
        registered, ()
    ):
        return  # a tensor or a constant; or our own layer: its code is ours, its config numbers
    custom = _names_custom_code(class_name, module, registered)
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


def _names_custom_code(class_name: str, module: object, registered: object) -> bool:
    """A registered name ("package>Class"), or a module outside Keras."""
    return (
        ">" in class_name
        or registered not in (None, class_name, "function")
        or (isinstance(module, str) and not _is_keras_module(module, class_name))
        or (module is not None and not isinstance(module, str))
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

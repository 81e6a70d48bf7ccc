"""A loaded model's graph, replayed flat: every layer at the top level, with one call each.

tf-keras-vis reads `layer.output`, which a layer of a nested model (called in two graphs) does
not have unambiguously, and Grad-CAM looks for the last convolution among `model.layers`. So a
model is rebuilt on a new input from fresh copies of its leaf layers, through Keras's own replay
of a functional graph (`Functional._run_through_graph` with `operation_fn`, a private method:
Keras has no public one). The head, the operation that gives the output, can be kept, dropped,
or kept without its activation, which is how an uploaded model's logits are recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import keras

HeadMode = Literal["keep", "strip", "linear"]
"""What becomes of the head: kept, dropped (a separate activation), or made linear."""
ACTIVATIONS = ("softmax", "sigmoid", "linear")


def head_layer(model: keras.Model) -> object:
    """The innermost operation that produces the model's output (descending nested models)."""
    head: object = model
    while isinstance(head, keras.Model):
        if isinstance(head, keras.Sequential):
            head = head.layers[-1]
        else:
            head = head.outputs[0]._keras_history.operation
    return head


def output_activation(model: keras.Model) -> str:
    """The last layer's activation: "softmax", "sigmoid" or "linear" (anything else).

    A separate `Activation` or `Softmax` last layer counts too."""
    layer = head_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if _is_activation_operation(layer):
        return type(layer).__name__.lower()
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return name if name in ACTIVATIONS else "linear"


def is_separate_activation(op: object) -> bool:
    """A last step that only applies the activation: dropping it leaves the logits."""
    return isinstance(op, keras.layers.Activation | keras.layers.Softmax) or (
        _is_activation_operation(op)
    )


def _is_activation_operation(op: object) -> bool:
    """`keras.ops.softmax` or `keras.ops.sigmoid` applied in a functional graph."""
    return type(op).__module__.startswith("keras.src.ops") and type(op).__name__ in (
        "Softmax",
        "Sigmoid",
    )


@dataclass(frozen=True)
class FlatGraph:
    """A new input and the model's output replayed from it with fresh layers; `copy_weights`
    must run once a model is built on them."""

    inputs: keras.KerasTensor
    outputs: keras.KerasTensor
    layer_names: frozenset[str]  # taken at the top level
    copy_weights: Callable[[], None]


def flat_graph(model: keras.Model, head_mode: HeadMode) -> FlatGraph:
    """The model's graph with every layer at the top level; its head as `head_mode` says."""
    flattener = _Flattener(model, head_layer(model), head_mode)
    original = model.inputs[0]
    input_name = getattr(original._keras_history.operation, "name", None)
    if input_name in flattener.names.values():
        input_name = None
    inputs = keras.Input(shape=tuple(original.shape)[1:], dtype="float32", name=input_name)
    outputs = flattener.run(model, inputs)
    return FlatGraph(inputs, outputs, frozenset(flattener.names.values()), flattener.copy_weights)


def flatten(model: keras.Model) -> keras.Model:
    """The model as one functional graph with every layer at the top level, same weights."""
    graph = flat_graph(model, "keep")
    flat = keras.Model(graph.inputs, graph.outputs, name=model.name)
    graph.copy_weights()
    return flat


class _Flattener:
    """Replays a (possibly nested) model's graph with fresh copies of its leaf layers."""

    def __init__(self, model: keras.Model, head: object, head_mode: HeadMode) -> None:
        self.head = head
        self.head_mode = head_mode
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
        names[id(layer)] = free_name(layer.name, taken)
        taken.add(names[id(layer)])
    return names


def free_name(name: str, taken: set[str] | frozenset[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... whichever is not taken yet."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate

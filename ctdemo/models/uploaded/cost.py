"""What a bring-your-own model costs, worked out from its architecture before Keras builds it.

    cost = check_cost(config, "model.keras")   # ModelLoadError past a bound, else ModelCost

A `.keras` or `.h5` file small on disk can still describe a graph of 60,000 layers, gigabytes
of activations or a trillion operations per slice. `check_cost` walks the architecture JSON
(nested models included, without recursion), propagates one slice's shape layer by layer
(`layer_rules`) and tallies weights, float32 activations and floating-point operations,
stopping at the first bound (`limits`) it crosses. A layer whose size it cannot work out is
refused, not guessed.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ctdemo.models.cards import ModelLoadError
from ctdemo.models.uploaded.layer_rules import BROADCASTING, RULES
from ctdemo.models.uploaded.limits import (
    ModelCost,
    check_image_shape,
    check_layer_count,
    check_nesting,
    check_within_limits,
)
from ctdemo.models.uploaded.shapes import Shape, ShapeError, Step, positive_int

MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
"""Keras classes that hold a graph of layers (a nested model is one of them)."""


def check_cost(config: dict, filename: str = "The model") -> ModelCost:
    """Refuse, from the architecture alone and before Keras builds anything, a model too large
    to load or to run here: too many layers, weights, activations or operations per slice."""
    layers = _count_layers(config)
    check_layer_count(layers, filename)
    try:
        return _CostEstimate(filename, layers).run(config)
    except ShapeError as error:
        raise ModelLoadError(
            f"{filename} declares an input no image has ({error}); save the model again."
        ) from None


def _count_layers(config: dict) -> int:
    """Layers of a model and of every model nested in it, without recursion."""
    count, stack = 0, [config]
    while stack:
        item = stack.pop()
        inner = item.get("config") if isinstance(item, dict) else None
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if isinstance(layers, list):
            count += len(layers)
            stack.extend(layers)
    return count


class _CostEstimate:
    """Propagates shapes through a model's config, layer by layer, tallying the cost."""

    def __init__(self, filename: str, layers: int) -> None:
        self.filename = filename
        self.cost = ModelCost(layers, parameters=0, activation_bytes=0, flops=0)

    def run(self, config: dict) -> ModelCost:
        declared = _declared_inputs(config)
        if len(declared) > 1:
            raise ModelLoadError(
                f"{self.filename} takes {len(declared)} inputs; upload a model that takes one "
                "image."
            )
        if not declared or declared[0] is None:
            raise ModelLoadError(
                f"{self.filename} does not declare its input shape; build it with "
                "keras.Input(shape=...) and save it again."
            )
        check_image_shape(declared[0], self.filename)
        self.model(config, [declared[0]], 0)
        return self.cost

    def model(self, config: dict, inputs: list[Shape], depth: int) -> list[Shape]:
        """A (nested) model called on `inputs`: Keras builds it for the inputs it declares."""
        check_nesting(depth, self.filename)
        inner = config.get("config")
        if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
            raise ModelLoadError(f"{self.filename} describes a model without its layers.")
        declared = _declared_inputs(config)
        if len(declared) != len(inputs) or not all(
            shape is None or _fits((None, *shape), given)
            for shape, given in zip(declared, inputs, strict=True)
        ):
            raise ModelLoadError(
                f"{self.filename} calls the nested model {_layer_name(config)!r} on inputs of "
                f"shape {inputs}, not the {declared} it is built for; save the model again."
            )
        if config.get("class_name") == "Sequential":
            return [self.sequential(inner["layers"], inputs[0], depth)]
        return self.functional(inner, inputs, depth)

    def sequential(self, layers: list, shape: Shape, depth: int) -> Shape:
        for layer in layers:
            if _class_name(layer) != "InputLayer":
                shape = self.layer(layer, [shape], depth)
        return shape

    def functional(self, config: dict, inputs: list[Shape], depth: int) -> list[Shape]:
        layers = [layer for layer in config["layers"] if isinstance(layer, dict)]
        input_refs = _refs(config.get("input_layers"))
        output_refs = _refs(config.get("output_layers"))
        tensors: dict[tuple, Shape] = dict(zip(input_refs, inputs, strict=True))
        pending = [
            (layer, index, node)
            for layer in layers
            if _class_name(layer) != "InputLayer"
            for index, node in enumerate(layer.get("inbound_nodes") or [])
        ]
        while pending:
            waiting = []
            for layer, index, node in pending:
                refs, constants = _node_inputs(node)
                if all(ref in tensors for ref in refs):
                    shapes = [tensors[ref] for ref in refs]
                    output = self.layer(layer, shapes, depth, constants, first_call=index == 0)
                    tensors[(_layer_name(layer), index, 0)] = output
                else:
                    waiting.append((layer, index, node))
            if len(waiting) == len(pending):
                raise ModelLoadError(
                    f"{self.filename} has layers whose inputs are missing or form a loop; save "
                    "the model again with model.save()."
                )
            pending = waiting
        missing = [ref for ref in output_refs if ref not in tensors]
        if missing or not output_refs:
            raise ModelLoadError(f"{self.filename} names outputs that no layer produces.")
        return [tensors[ref] for ref in output_refs]

    def layer(
        self,
        layer: dict,
        shapes: list[Shape],
        depth: int,
        constants: bool = False,
        first_call: bool = True,
    ) -> Shape:
        """One call of one layer: its output shape, with its cost added to the tally."""
        class_name, config = _class_name(layer), layer.get("config")
        name = _layer_name(layer)
        if class_name in MODEL_CLASSES:
            outputs = self.model(layer, shapes, depth + 1)
            if len(outputs) != 1:
                raise ModelLoadError(
                    f"{self.filename} nests the model {name!r} with {len(outputs)} outputs; "
                    "only nested models with one output are supported."
                )
            return outputs[0]
        rule = RULES.get(class_name)
        try:
            if rule is None or not isinstance(config, dict) or not shapes:
                raise ShapeError("it is not one of the layers whose size we can work out")
            if constants and class_name not in BROADCASTING:
                raise ShapeError("it is called with constants")
            if first_call:
                _check_built_shape(layer, shapes)
            step = rule(config, shapes)
        except (ShapeError, TypeError, ValueError, KeyError, IndexError) as error:
            reason = str(error) if isinstance(error, ShapeError) else "its settings do not fit"
            raise ModelLoadError(
                f"{self.filename} uses the {class_name} layer {name!r}, whose size cannot be "
                f"worked out before building it ({reason}); rebuild the model from common "
                "image layers (convolutions, pooling, normalisation, Dense) and save it again."
            ) from None
        self.add(step)
        return step.shape

    def add(self, step: Step) -> None:
        self.cost = replace(
            self.cost,
            parameters=self.cost.parameters + step.parameters,
            activation_bytes=self.cost.activation_bytes + 4 * math.prod(step.shape),
            flops=self.cost.flops + step.flops,
        )
        check_within_limits(self.cost, self.filename)


def _class_name(layer: object) -> str:
    return layer.get("class_name", "") if isinstance(layer, dict) else ""


def _layer_name(layer: dict) -> str:
    config = layer.get("config")
    return str(layer.get("name") or (config.get("name") if isinstance(config, dict) else ""))


def _refs(value: object) -> list[tuple]:
    """`input_layers` / `output_layers`: one [name, node, tensor] or a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [tuple(value)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


def _node_inputs(node: object) -> tuple[list[tuple], bool]:
    """The tensors one call reads, in order (Keras 3's {"args", "kwargs"} or Keras 2's list of
    [name, node, tensor, kwargs]), and whether its args also hold anything but tensors."""
    if isinstance(node, list):
        return [tuple(ref[:3]) for ref in node if isinstance(ref, list) and len(ref) >= 3], False
    if not isinstance(node, dict):
        return [], False
    refs: list[tuple] = []
    constants = False
    stack: list[tuple[object, bool]] = [(node.get("kwargs"), False), (node.get("args"), True)]
    while stack:
        item, in_args = stack.pop()
        if isinstance(item, dict) and item.get("class_name") == "__keras_tensor__":
            history = (item.get("config") or {}).get("keras_history")
            refs.append(tuple(history) if isinstance(history, list) else ("?",))
        elif isinstance(item, list):
            stack.extend((value, in_args) for value in reversed(item))
        elif isinstance(item, dict) and not in_args:
            stack.extend((value, False) for value in item.values())
        elif in_args and item is not None:
            constants = True
    return refs, constants


def _declared_inputs(config: dict) -> list[Shape | None]:
    """The per-slice input shapes a model declares, one per input (None where it does not)."""
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    layers = [layer for layer in inner.get("layers") or [] if isinstance(layer, dict)]
    if config.get("class_name") == "Sequential":
        first = layers[0] if layers else {}
        built = config.get("build_config")
        return [_declared_shape(first) or _declared_shape({"config": built})]
    by_name = {_layer_name(layer): layer for layer in layers}
    return [_declared_shape(by_name.get(ref[0], {})) for ref in _refs(inner.get("input_layers"))]


def _declared_shape(layer: dict) -> Shape | None:
    """An InputLayer's shape (Keras 3 `batch_shape`, Keras 2 `batch_input_shape`, a build
    config's `input_shape`), without its batch axis."""
    config = layer.get("config") if isinstance(layer, dict) else None
    if not isinstance(config, dict):
        return None
    shape = (
        config.get("batch_shape") or config.get("batch_input_shape") or config.get("input_shape")
    )
    if not isinstance(shape, list) or not shape:
        return None
    return tuple(
        size if size is None else positive_int(size, "an input size") for size in shape[1:]
    )


def _fits(declared: object, shape: Shape) -> bool:
    """A declared shape (batch axis first, None for any size) matches one slice's shape."""
    return (
        isinstance(declared, list | tuple)
        and len(declared) == len(shape) + 1
        and all(
            size is None or size == given for size, given in zip(declared[1:], shape, strict=True)
        )
    )


def _check_built_shape(layer: dict, shapes: list[Shape]) -> None:
    """Keras builds each layer, allocating its weights, for the input shape its file declares
    before calling it: that shape must be the one its inputs give."""
    build = layer.get("build_config")
    declared = build.get("input_shape") if isinstance(build, dict) else None
    if declared is None:
        return
    several = isinstance(declared, list) and bool(declared) and isinstance(declared[0], list)
    listed = declared if several else [declared]
    if len(listed) != len(shapes) or not all(map(_fits, listed, shapes)):
        raise ShapeError(f"the file builds it for inputs {declared}, not the {shapes} it gets")

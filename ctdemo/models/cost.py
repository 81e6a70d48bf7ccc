"""What a bring-your-own model costs, worked out from its architecture before Keras builds it.

    cost = check_cost(config, "model.keras")   # ModelLoadError past a bound, else ModelCost

A `.keras` or `.h5` file small on disk can still describe a graph of 60,000 layers, gigabytes
of activations or a trillion operations per slice. `check_cost` walks the architecture JSON
(nested models included, without recursion), propagates one slice's shape layer by layer and
tallies weights, float32 activations and floating-point operations, stopping at the first bound
it crosses. A layer whose size it cannot work out is refused, not guessed. The bounds below
say what each admits among well-known architectures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ctdemo.models import cards
from ctdemo.models.cards import ModelLoadError
from ctdemo.models.inference import BATCH_SIZE

MAX_UNPACKED_FACTOR = 4
"""A `.keras` zip may unpack to at most this many times `cards.MAX_MODEL_BYTES`."""
MAX_INPUT_SIDE = 1024
"""Largest input side accepted: a CT slice is 512 x 512, and everything runs on a CPU."""
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
"""Keras classes that hold a graph of layers (a nested model is one of them)."""
MAX_LAYERS = 2_000
"""Layers (keras.ops steps and nested models' layers included): EfficientNetB7, the deepest
keras.applications model, has 813; Keras took 141 s to load a graph of 60,000."""
MAX_PARAMETERS = MAX_UNPACKED_FACTOR * cards.MAX_MODEL_BYTES // 4
"""Weights Keras allocates while it builds the layers, before it reads the file's weights:
at most as many float32 numbers as an accepted file can unpack to."""
MAX_ACTIVATION_BYTES = 256 * 2**20
"""The float32 outputs of every layer for one slice, summed: what a gradient tape keeps for
Grad-CAM and saliency. ResNet50 at 224 pixels needs 141 MB, Xception at 299 needs 239 MB,
ResNet50 at 512 needs over 700 MB (refused)."""
BATCH_ACTIVATION_BYTES = 512 * 2**20
"""What a batch of slices may hold in layer outputs at once (the server has about 1 GB for
everyone): an uploaded model predicts and explains in batches sized to stay below it."""
MAX_GIGAFLOPS = 32
"""Floating-point operations for one slice: ResNet50 at 224 pixels needs 7.8 billion, VGG16
31, ResNet50 at 512 pixels 41 (refused). SmoothGrad runs the model 20 times and Score-CAM 17."""
MAX_NESTING = 8
"""Models inside models: keras.applications models nest once, inside a classifier."""

Shape = tuple[int, ...]
"""One tensor's shape for one slice: no batch axis."""


@dataclass(frozen=True)
class ModelCost:
    """What a model costs to build and to run on one slice, worked out from its architecture."""

    layers: int
    parameters: int
    activation_bytes: int
    flops: int

    @property
    def slices_per_batch(self) -> int:
        """Slices to run at once so that every layer output of the batch fits the budget."""
        fitting = BATCH_ACTIVATION_BYTES // max(self.activation_bytes, 1)
        return max(1, min(BATCH_SIZE, fitting))


class _CostError(ValueError):
    """A layer whose output we cannot work out from its config and its input shapes."""


class _Step(NamedTuple):
    shape: Shape
    flops: int = 0
    parameters: int = 0


def check_cost(config: dict, filename: str = "The model") -> ModelCost:
    """Refuse, from the architecture alone and before Keras builds anything, a model too large
    to load or to run here: too many layers, weights, activations or operations per slice."""
    layers = count_layers(config)
    if layers > MAX_LAYERS:
        raise ModelLoadError(
            f"{filename} has {layers:,} layers; models of more than {MAX_LAYERS:,} are refused, "
            "because loading them alone takes minutes (the deepest Keras application has 813)."
        )
    try:
        return _CostEstimate(filename).run(config)
    except _CostError as error:
        raise ModelLoadError(
            f"{filename} declares an input no image has ({error}); save the model again."
        ) from None


def count_layers(config: dict) -> int:
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

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.parameters = self.activation_bytes = self.flops = 0

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
        return ModelCost(count_layers(config), self.parameters, self.activation_bytes, self.flops)

    def model(self, config: dict, inputs: list[Shape], depth: int) -> list[Shape]:
        """A (nested) model called on `inputs`: Keras builds it for the inputs it declares."""
        if depth > MAX_NESTING:
            raise ModelLoadError(
                f"{self.filename} nests models more than {MAX_NESTING} deep; rebuild it flat."
            )
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
        rule = _RULES.get(class_name)
        try:
            if rule is None or not isinstance(config, dict) or not shapes:
                raise _CostError("it is not one of the layers whose size we can work out")
            if constants and class_name not in _BROADCASTING:
                raise _CostError("it is called with constants")
            if first_call:
                _check_built_shape(layer, shapes)
            step = rule(config, shapes)
        except (_CostError, TypeError, ValueError, KeyError, IndexError) as error:
            reason = str(error) if isinstance(error, _CostError) else "its settings do not fit"
            raise ModelLoadError(
                f"{self.filename} uses the {class_name} layer {name!r}, whose size cannot be "
                f"worked out before building it ({reason}); rebuild the model from common "
                "image layers (convolutions, pooling, normalisation, Dense) and save it again."
            ) from None
        self.add(step)
        return step.shape

    def add(self, step: _Step) -> None:
        self.parameters += step.parameters
        self.activation_bytes += 4 * math.prod(step.shape)
        self.flops += step.flops
        if self.parameters > MAX_PARAMETERS:
            raise ModelLoadError(
                f"{self.filename} declares over {MAX_PARAMETERS / 1e6:.0f} million weights, "
                "more than an accepted file can hold; upload a smaller model."
            )
        if self.activation_bytes > MAX_ACTIVATION_BYTES:
            raise ModelLoadError(
                f"{self.filename} would need over {MAX_ACTIVATION_BYTES // 2**20} MB of memory "
                "for the outputs of its layers on one slice, more than this shared server gives "
                "one visitor; upload a smaller model or one with a smaller input."
            )
        if self.flops > MAX_GIGAFLOPS * 10**9:
            raise ModelLoadError(
                f"{self.filename} would take over {MAX_GIGAFLOPS} billion operations per slice "
                "(ResNet50 takes 8), too slow for this shared server; upload a smaller model or "
                "one with a smaller input."
            )


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
    return tuple(size if size is None else _whole(size, "an input size") for size in shape[1:])


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
        raise _CostError(f"the file builds it for inputs {declared}, not the {shapes} it gets")


# --- shape rules: (layer config, input shapes) -> output shape, operations, weights ---------------


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _zipped(*sequences: tuple) -> zip:
    """`zip` for sequences already checked to be of one length."""
    return zip(*sequences, strict=True)


def _one(shapes: list[Shape]) -> Shape:
    if len(shapes) != 1:
        raise _CostError(f"it takes one input, not {len(shapes)}")
    return shapes[0]


def _whole(value: object, what: str = "a size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _CostError(f"{what} {value!r} is not a positive whole number")
    return value


def _tuple(value: object, rank: int, what: str) -> tuple[int, ...]:
    values = [value] * rank if isinstance(value, int) else value
    if not isinstance(values, list | tuple) or len(values) != rank:
        raise _CostError(f"{what} {value!r} does not have {rank} values")
    return tuple(_whole(item, what) for item in values)


def _axis(value: object, rank: int) -> int:
    """A Keras axis (counting the batch axis as 0) as an index into a per-slice shape."""
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        raise _CostError(f"axis {value!r} is not an axis of one slice")
    index = value - 1 if value > 0 else rank + value
    if not 0 <= index < rank:
        raise _CostError(f"axis {value} is outside a tensor of rank {rank + 1}")
    return index


def _axes(value: object, rank: int) -> list[int]:
    return [_axis(item, rank) for item in (value if isinstance(value, list) else [value])]


def _split_channels(shape: Shape, config: dict, rank: int) -> tuple[Shape, int, bool]:
    if len(shape) != rank + 1:
        raise _CostError(f"it needs inputs of rank {rank + 2}, not {len(shape) + 1}")
    first = config.get("data_format") == "channels_first"
    return (shape[1:], shape[0], first) if first else (shape[:-1], shape[-1], first)


def _join_channels(spatial: Shape, channels: int, first: bool) -> Shape:
    return (channels, *spatial) if first else (*spatial, channels)


def _window_length(length: int, size: int, stride: int, dilation: int, padding: object) -> int:
    span = dilation * (size - 1) + 1
    if padding == "valid":
        out = (length - span) // stride + 1
    elif padding in ("same", "causal"):
        out = -(-length // stride)
    else:
        raise _CostError(f"padding {padding!r} is not 'valid' or 'same'")
    if out < 1:
        raise _CostError("its input is smaller than its window")
    return out


def _transposed_length(
    length: int, size: int, stride: int, dilation: int, padding: object, extra: object
) -> int:
    span = dilation * (size - 1) + 1
    if padding not in ("valid", "same"):
        raise _CostError(f"padding {padding!r} is not 'valid' or 'same'")
    if extra is None:
        return length * stride + (max(span - stride, 0) if padding == "valid" else 0)
    pad = span // 2 if padding == "same" else 0
    return max((length - 1) * stride + span - 2 * pad + int(extra), 1)


def _conv_rule(rank: int, kind: str) -> Callable[[dict, list[Shape]], _Step]:
    """Conv, ConvTranspose, DepthwiseConv and SeparableConv in 1, 2 or 3 dimensions."""

    def rule(config: dict, shapes: list[Shape]) -> _Step:
        spatial, channels, first = _split_channels(_one(shapes), config, rank)
        kernel = _tuple(config.get("kernel_size"), rank, "kernel_size")
        strides = _tuple(config.get("strides", 1), rank, "strides")
        dilation = _tuple(config.get("dilation_rate", 1), rank, "dilation_rate")
        padding = config.get("padding", "valid")
        if kind == "transpose":
            extras = config.get("output_padding")
            extras = [extras] * rank if extras is None or isinstance(extras, int) else extras
            out = tuple(
                _transposed_length(*sizes, padding, extra)
                for sizes, extra in zip(
                    _zipped(spatial, kernel, strides, dilation), extras, strict=True
                )
            )
        else:
            out = tuple(
                _window_length(*sizes, padding)
                for sizes in _zipped(spatial, kernel, strides, dilation)
            )
        taps, bias = math.prod(kernel), bool(config.get("use_bias", True))
        if kind in ("depthwise", "separable"):
            inner = channels * _whole(config.get("depth_multiplier", 1), "depth_multiplier")
            filters = _whole(config["filters"], "filters") if kind == "separable" else inner
            pointwise = inner * filters if kind == "separable" else 0
            macs = math.prod(out) * (taps * inner + pointwise)
            weights = taps * inner + pointwise + bias * filters
        else:
            filters = _whole(config.get("filters"), "filters")
            groups = _whole(config.get("groups", 1), "groups")
            if channels % groups or filters % groups:
                raise _CostError(f"{groups} groups do not divide its channels")
            weights = taps * (channels // groups) * filters + bias * filters
            positions = math.prod(spatial if kind == "transpose" else out)
            macs = positions * taps * (channels // groups) * filters
        return _Step(_join_channels(out, filters, first), 2 * macs, weights)

    return rule


def _pool_rule(rank: int) -> Callable[[dict, list[Shape]], _Step]:
    def rule(config: dict, shapes: list[Shape]) -> _Step:
        spatial, channels, first = _split_channels(_one(shapes), config, rank)
        pool = _tuple(config.get("pool_size", 2), rank, "pool_size")
        strides = _tuple(config.get("strides") or pool, rank, "strides")
        padding = config.get("padding", "valid")
        out = tuple(
            _window_length(n, p, s, 1, padding) for n, p, s in _zipped(spatial, pool, strides)
        )
        shape = _join_channels(out, channels, first)
        return _Step(shape, math.prod(shape) * math.prod(pool))

    return rule


def _global_pool_rule(rank: int) -> Callable[[dict, list[Shape]], _Step]:
    def rule(config: dict, shapes: list[Shape]) -> _Step:
        shape = _one(shapes)
        _, channels, first = _split_channels(shape, config, rank)
        kept = _join_channels((1,) * rank, channels, first)
        return _Step(kept if config.get("keepdims") else (channels,), math.prod(shape))

    return rule


def _elementwise(weights: Callable[[dict, Shape], int] | None = None, cost: int = 1):
    """A layer or operation that keeps its input's shape (activations, dropout, scaling,
    normalisation), with its weights (normalisation's scale and offset, PReLU's slopes)."""

    def rule(config: dict, shapes: list[Shape]) -> _Step:
        shape = _one(shapes)
        return _Step(shape, cost * math.prod(shape), weights(config, shape) if weights else 0)

    return rule


def _normalised_size(config: dict, shape: Shape, default: object = -1) -> int:
    return math.prod(shape[axis] for axis in _axes(config.get("axis", default), len(shape)))


def _batch_norm_weights(config: dict, shape: Shape) -> int:
    return 4 * _normalised_size(config, shape)


def _layer_norm_weights(config: dict, shape: Shape) -> int:
    kept = bool(config.get("center", True)) + bool(config.get("scale", True))
    return kept * _normalised_size(config, shape)


def _normalization_weights(config: dict, shape: Shape) -> int:
    return 2 * _normalised_size(config, shape) + 1


def _prelu_weights(config: dict, shape: Shape) -> int:
    shared = set(_axes(config.get("shared_axes") or [], len(shape)))
    return math.prod(1 if axis in shared else size for axis, size in enumerate(shape))


def _broadcast(shapes: list[Shape]) -> Shape:
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + shape for shape in shapes]
    out = []
    for sizes in _zipped(*padded):
        wide = {size for size in sizes if size != 1}
        if len(wide) > 1:
            raise _CostError(f"its inputs' shapes {shapes} do not broadcast")
        out.append(wide.pop() if wide else 1)
    return tuple(out)


def _merge(config: dict, shapes: list[Shape]) -> _Step:
    shape = _broadcast(shapes)
    return _Step(shape, len(shapes) * math.prod(shape))


def _concatenate(config: dict, shapes: list[Shape]) -> _Step:
    rank = len(shapes[0])
    if any(len(shape) != rank for shape in shapes):
        raise _CostError("its inputs differ in rank")
    axis = _axis(config.get("axis", -1), rank)
    rest = {shape[:axis] + shape[axis + 1 :] for shape in shapes}
    if len(rest) != 1:
        raise _CostError(f"its inputs' shapes {shapes} differ off the joined axis")
    out = list(shapes[0])
    out[axis] = sum(shape[axis] for shape in shapes)
    return _Step(tuple(out), math.prod(out))


def _dense(config: dict, shapes: list[Shape]) -> _Step:
    shape = _one(shapes)
    units = _whole(config.get("units"), "units")
    weights = shape[-1] * units + bool(config.get("use_bias", True)) * units
    return _Step((*shape[:-1], units), 2 * math.prod(shape) * units, weights)


def _einsum_dense(config: dict, shapes: list[Shape]) -> _Step:
    """EinsumDense without an ellipsis ("bmi,miu->bmu") or with a leading one ("...i,iu->...u")."""
    shape = (1, *_one(shapes))  # a batch of one slice
    try:
        left, output = str(config["equation"]).split("->")
        given, kernel = left.split(",")
    except ValueError:
        raise _CostError("its equation is not 'input,kernel->output'") from None
    wanted = config.get("output_shape")
    wanted = [wanted] if isinstance(wanted, int) else list(wanted or [])
    sizes: dict[str, int] = {}
    elided: Shape = ()
    if given.startswith("...") and output.startswith("..."):
        given, output = given[3:], output[3:]
        elided, shape = shape[: len(shape) - len(given)], shape[len(shape) - len(given) :]
        named = list(output)
    elif "." not in given + output:
        named = list(output[1:])
    else:
        raise _CostError("its equation places '...' where we cannot follow it")
    if len(given) != len(shape) or len(named) != len(wanted):
        raise _CostError("its equation does not fit its input or output_shape")
    sizes.update(_zipped(given, shape))
    for letter, size in _zipped(named, wanted):
        sizes.setdefault(letter, _whole(size, "output_shape") if size is not None else 0)
    if any(letter not in sizes or not sizes[letter] for letter in kernel + output):
        raise _CostError("its equation names a size it does not give")
    out = elided + tuple(sizes[letter] for letter in output)
    bias_axes = config.get("bias_axes")
    bias = math.prod(sizes[letter] for letter in bias_axes) if bias_axes else 0
    weights = math.prod(sizes[letter] for letter in kernel) + bias
    return _Step(out[1:], 2 * math.prod(elided) * math.prod(sizes.values()), weights)


def _flatten(config: dict, shapes: list[Shape]) -> _Step:
    return _Step((math.prod(_one(shapes)),))


def _reshaped(shape: Shape, target: list) -> Shape:
    size, free = math.prod(shape), [i for i, value in enumerate(target) if value in (-1, None)]
    known = math.prod(_whole(value, "a target size") for value in target if value not in (-1, None))
    if len(free) > 1 or (free and size % known) or (not free and known != size):
        raise _CostError(f"{shape} cannot be reshaped to {target}")
    return tuple(size // known if value in (-1, None) else value for value in target)


def _reshape(config: dict, shapes: list[Shape]) -> _Step:
    shape = _one(shapes)
    if "newshape" in config:  # keras.ops.reshape: the batch axis comes first
        target = list(config["newshape"])
        if not target or target[0] not in (-1, None):
            raise _CostError("it reshapes across the batch axis")
        return _Step(_reshaped(shape, target[1:]))
    return _Step(_reshaped(shape, list(config.get("target_shape"))))


def _permute(config: dict, shapes: list[Shape]) -> _Step:
    shape, dims = _one(shapes), list(config.get("dims"))
    if sorted(dims) != list(range(1, len(shape) + 1)):
        raise _CostError(f"dims {dims} are not a permutation of its axes")
    return _Step(tuple(shape[dim - 1] for dim in dims), math.prod(shape))


def _transpose(config: dict, shapes: list[Shape]) -> _Step:
    shape, axes = _one(shapes), config.get("axes")
    if axes is None:
        raise _CostError("it would move the batch axis")
    if list(axes)[:1] != [0] or sorted(axes) != list(range(len(shape) + 1)):
        raise _CostError(f"axes {axes} keep the batch axis first")
    return _Step(tuple(shape[axis - 1] for axis in axes[1:]), math.prod(shape))


def _tile(config: dict, shapes: list[Shape]) -> _Step:
    shape = _one(shapes)
    repeats = _tuple(config.get("repeats"), len(shape) + 1, "repeats")
    if repeats[0] != 1:
        raise _CostError("it repeats the batch axis")
    out = tuple(size * repeat for size, repeat in _zipped(shape, repeats[1:]))
    return _Step(out, math.prod(out))


def _repeat_vector(config: dict, shapes: list[Shape]) -> _Step:
    shape = _one(shapes)
    if len(shape) != 1:
        raise _CostError("it repeats vectors, not tensors of higher rank")
    out = (_whole(config.get("n"), "n"), shape[0])
    return _Step(out, math.prod(out))


def _reduce(config: dict, shapes: list[Shape]) -> _Step:
    shape = _one(shapes)
    if config.get("axis") is None:
        raise _CostError("it reduces across the batch")
    axes = set(_axes(config["axis"], len(shape)))
    keep = bool(config.get("keepdims"))
    out = tuple(1 if i in axes else n for i, n in enumerate(shape) if keep or i not in axes)
    return _Step(out, math.prod(shape))


def _upsampling_rule(rank: int) -> Callable[[dict, list[Shape]], _Step]:
    def rule(config: dict, shapes: list[Shape]) -> _Step:
        spatial, channels, first = _split_channels(_one(shapes), config, rank)
        factors = _tuple(config.get("size", 2), rank, "size")
        shape = _join_channels(tuple(n * f for n, f in _zipped(spatial, factors)), channels, first)
        return _Step(shape, 4 * math.prod(shape))

    return rule


def _padding_rule(rank: int, sign: int, key: str) -> Callable[[dict, list[Shape]], _Step]:
    """ZeroPadding (sign 1) and Cropping (sign -1) in 1, 2 or 3 dimensions."""

    def rule(config: dict, shapes: list[Shape]) -> _Step:
        spatial, channels, first = _split_channels(_one(shapes), config, rank)
        value = config.get(key, 1)
        sides = [value] * rank if isinstance(value, int) else list(value)
        if rank == 1 and len(sides) == 2 and all(isinstance(side, int) for side in sides):
            sides = [sides]
        if len(sides) != rank:
            raise _CostError(f"{key} {value!r} does not have {rank} values")
        totals = [side * 2 if isinstance(side, int) else sum(side) for side in sides]
        if any(not isinstance(total, int) or total < 0 for total in totals):
            raise _CostError(f"{key} {value!r} is not whole numbers")
        out = tuple(n + sign * total for n, total in _zipped(spatial, totals))
        if min(out) < 1:
            raise _CostError("it crops away its whole input")
        shape = _join_channels(out, channels, first)
        return _Step(shape, math.prod(shape))

    return rule


def _resize(config: dict, shapes: list[Shape]) -> _Step:
    _, channels, first = _split_channels(_one(shapes), config, 2)
    out = (_whole(config.get("height"), "height"), _whole(config.get("width"), "width"))
    shape = _join_channels(out, channels, first)
    return _Step(shape, 4 * math.prod(shape))


def _quantiles(config: dict, shapes: list[Shape]) -> _Step:
    """Our IntensityEdgeQuantiles: it sorts every pixel and every edge strength of the slice."""
    size = math.prod(_one(shapes))
    quantiles = _whole(config.get("quantiles", 128), "quantiles")
    return _Step((2 * quantiles,), 8 * size * max(size, 2).bit_length())


_ACTIVATION_OPS = _names(
    "Relu Relu6 Sigmoid HardSigmoid Silu Swish HardSilu HardSwish Gelu Elu Selu Celu LeakyRelu "
    "Softplus Softsign Softmax LogSoftmax LogSigmoid Tanh Abs Absolute Negative Exp Expm1 Log "
    "Log1p Sqrt Rsqrt Square Sign Floor Ceil Round Clip Cast Erf Sin Cos Reciprocal StopGradient"
)
_BROADCASTING = _names("Add Subtract Multiply Divide TrueDivide Maximum Minimum Power Average")
_SHAPE_KEEPING = _names(
    "Activation ReLU LeakyReLU ELU Softmax Dropout SpatialDropout1D SpatialDropout2D "
    "SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Identity "
    "Masking Rescaling UnitNormalization RandomFlip RandomRotation RandomZoom RandomTranslation "
    "RandomContrast RandomBrightness"
)


def _spatial_rules() -> dict[str, Callable[[dict, list[Shape]], _Step]]:
    """Convolution, pooling, resampling and padding in 1, 2 and 3 dimensions, with aliases."""
    rules = {}
    for rank in (1, 2, 3):
        pool, global_pool = _pool_rule(rank), _global_pool_rule(rank)
        rules.update(
            {
                f"Conv{rank}D": _conv_rule(rank, "conv"),
                f"Convolution{rank}D": _conv_rule(rank, "conv"),
                f"Conv{rank}DTranspose": _conv_rule(rank, "transpose"),
                f"Convolution{rank}DTranspose": _conv_rule(rank, "transpose"),
                **dict.fromkeys((f"MaxPooling{rank}D", f"MaxPool{rank}D"), pool),
                **dict.fromkeys((f"AveragePooling{rank}D", f"AvgPool{rank}D"), pool),
                **dict.fromkeys(
                    (f"GlobalAveragePooling{rank}D", f"GlobalAvgPool{rank}D"), global_pool
                ),
                **dict.fromkeys((f"GlobalMaxPooling{rank}D", f"GlobalMaxPool{rank}D"), global_pool),
                f"UpSampling{rank}D": _upsampling_rule(rank),
                f"ZeroPadding{rank}D": _padding_rule(rank, 1, "padding"),
                f"Cropping{rank}D": _padding_rule(rank, -1, "cropping"),
            }
        )
    for rank in (1, 2):
        rules[f"DepthwiseConv{rank}D"] = _conv_rule(rank, "depthwise")
        rules.update(
            dict.fromkeys(
                (f"SeparableConv{rank}D", f"SeparableConvolution{rank}D"),
                _conv_rule(rank, "separable"),
            )
        )
    return rules


_RULES: dict[str, Callable[[dict, list[Shape]], _Step]] = {
    **dict.fromkeys((*_SHAPE_KEEPING, *_ACTIVATION_OPS), _elementwise()),
    **dict.fromkeys(_BROADCASTING, _merge),
    "BatchNormalization": _elementwise(_batch_norm_weights, 4),
    "LayerNormalization": _elementwise(_layer_norm_weights, 8),
    "RMSNormalization": _elementwise(_layer_norm_weights, 6),
    "GroupNormalization": _elementwise(_layer_norm_weights, 8),
    "Normalization": _elementwise(_normalization_weights, 2),
    "PReLU": _elementwise(_prelu_weights, 2),
    "Concatenate": _concatenate,
    "Dense": _dense,
    "EinsumDense": _einsum_dense,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "Transpose": _transpose,
    "Tile": _tile,
    "RepeatVector": _repeat_vector,
    **dict.fromkeys(("Mean", "Sum", "Max", "Min"), _reduce),
    "Resizing": _resize,
    "CenterCrop": _resize,
    "IntensityEdgeQuantiles": _quantiles,
}
_RULES.update(_spatial_rules())


def check_image_shape(shape: tuple, filename: str) -> tuple[int, int]:
    """(side, channels) of a model input of per-slice `shape`, or `ModelLoadError` when it is
    not a fixed square grey or RGB image we can afford."""
    if len(shape) != 3:
        raise ModelLoadError(
            f"{filename} takes inputs of shape {shape}, not images (height, width, channels); "
            "upload an image classifier."
        )
    height, width, channels = shape
    if height is None or width is None:
        raise ModelLoadError(
            f"{filename} accepts images of any size {shape}; save it with a fixed square input, "
            "such as keras.Input(shape=(224, 224, 3))."
        )
    if height != width:
        raise ModelLoadError(
            f"{filename} takes {height} x {width} images; only square inputs are supported, "
            "because slices are padded to a square."
        )
    if channels not in (1, 3):
        raise ModelLoadError(
            f"{filename} takes images with {channels} channels; only grey (1) or RGB (3) "
            "inputs are supported."
        )
    if height > MAX_INPUT_SIDE:
        raise ModelLoadError(
            f"{filename} takes {height} x {width} images; inputs over {MAX_INPUT_SIDE} pixels "
            "a side are too slow here, so upload a smaller model."
        )
    return int(height), int(channels)

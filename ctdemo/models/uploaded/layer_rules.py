"""How big each kind of layer is, from its config and its input shapes: one rule per class name.

A rule takes (layer config, per-slice input shapes) and returns a `Step`: the output shape,
the floating-point operations and the weights of one call. `RULES` holds every layer and
`keras.ops` step we can size before building it; anything else is refused, not guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ctdemo.models.uploaded.shapes import (
    Shape,
    ShapeError,
    Step,
    broadcast,
    ints,
    join_channels,
    one_input,
    positive_int,
    reshaped,
    slice_axes,
    slice_axis,
    split_channels,
    transposed_length,
    window_length,
    zipped,
)

Rule = Callable[[dict, list[Shape]], Step]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _conv_rule(rank: int, kind: str) -> Rule:
    """Conv, ConvTranspose, DepthwiseConv and SeparableConv in 1, 2 or 3 dimensions."""

    def rule(config: dict, shapes: list[Shape]) -> Step:
        spatial, channels, first = split_channels(one_input(shapes), config, rank)
        kernel = ints(config.get("kernel_size"), rank, "kernel_size")
        out = _conv_output(config, spatial, kernel, transposed=kind == "transpose")
        taps, bias = math.prod(kernel), bool(config.get("use_bias", True))
        if kind in ("depthwise", "separable"):
            inner = channels * positive_int(config.get("depth_multiplier", 1), "depth_multiplier")
            filters = positive_int(config["filters"], "filters") if kind == "separable" else inner
            pointwise = inner * filters if kind == "separable" else 0
            macs = math.prod(out) * (taps * inner + pointwise)
            weights = taps * inner + pointwise + bias * filters
        else:
            filters = positive_int(config.get("filters"), "filters")
            groups = positive_int(config.get("groups", 1), "groups")
            if channels % groups or filters % groups:
                raise ShapeError(f"{groups} groups do not divide its channels")
            weights = taps * (channels // groups) * filters + bias * filters
            positions = math.prod(spatial if kind == "transpose" else out)
            macs = positions * taps * (channels // groups) * filters
        return Step(join_channels(out, filters, first), 2 * macs, weights)

    return rule


def _conv_output(config: dict, spatial: Shape, kernel: Shape, transposed: bool) -> Shape:
    """The spatial sizes a convolution (or a transposed one) gives."""
    rank = len(spatial)
    strides = ints(config.get("strides", 1), rank, "strides")
    dilation = ints(config.get("dilation_rate", 1), rank, "dilation_rate")
    padding = config.get("padding", "valid")
    sizes = zipped(spatial, kernel, strides, dilation)
    if not transposed:
        return tuple(window_length(*size, padding) for size in sizes)
    extras = config.get("output_padding")
    extras = [extras] * rank if extras is None or isinstance(extras, int) else extras
    return tuple(
        transposed_length(*size, padding, extra) for size, extra in zip(sizes, extras, strict=True)
    )


def _pool_rule(rank: int) -> Rule:
    def rule(config: dict, shapes: list[Shape]) -> Step:
        spatial, channels, first = split_channels(one_input(shapes), config, rank)
        pool = ints(config.get("pool_size", 2), rank, "pool_size")
        strides = ints(config.get("strides") or pool, rank, "strides")
        padding = config.get("padding", "valid")
        out = tuple(
            window_length(n, p, s, 1, padding) for n, p, s in zipped(spatial, pool, strides)
        )
        shape = join_channels(out, channels, first)
        return Step(shape, math.prod(shape) * math.prod(pool))

    return rule


def _global_pool_rule(rank: int) -> Rule:
    def rule(config: dict, shapes: list[Shape]) -> Step:
        shape = one_input(shapes)
        _, channels, first = split_channels(shape, config, rank)
        kept = join_channels((1,) * rank, channels, first)
        return Step(kept if config.get("keepdims") else (channels,), math.prod(shape))

    return rule


def _elementwise(weights: Callable[[dict, Shape], int] | None = None, cost: int = 1) -> Rule:
    """A layer or operation that keeps its input's shape (activations, dropout, scaling,
    normalisation), with its weights (normalisation's scale and offset, PReLU's slopes)."""

    def rule(config: dict, shapes: list[Shape]) -> Step:
        shape = one_input(shapes)
        return Step(shape, cost * math.prod(shape), weights(config, shape) if weights else 0)

    return rule


def _normalised_size(config: dict, shape: Shape, default: object = -1) -> int:
    return math.prod(shape[axis] for axis in slice_axes(config.get("axis", default), len(shape)))


def _batch_norm_weights(config: dict, shape: Shape) -> int:
    return 4 * _normalised_size(config, shape)


def _layer_norm_weights(config: dict, shape: Shape) -> int:
    kept = bool(config.get("center", True)) + bool(config.get("scale", True))
    return kept * _normalised_size(config, shape)


def _normalization_weights(config: dict, shape: Shape) -> int:
    return 2 * _normalised_size(config, shape) + 1


def _prelu_weights(config: dict, shape: Shape) -> int:
    shared = set(slice_axes(config.get("shared_axes") or [], len(shape)))
    return math.prod(1 if axis in shared else size for axis, size in enumerate(shape))


def _merge(config: dict, shapes: list[Shape]) -> Step:
    shape = broadcast(shapes)
    return Step(shape, len(shapes) * math.prod(shape))


def _concatenate(config: dict, shapes: list[Shape]) -> Step:
    rank = len(shapes[0])
    if any(len(shape) != rank for shape in shapes):
        raise ShapeError("its inputs differ in rank")
    axis = slice_axis(config.get("axis", -1), rank)
    rest = {shape[:axis] + shape[axis + 1 :] for shape in shapes}
    if len(rest) != 1:
        raise ShapeError(f"its inputs' shapes {shapes} differ off the joined axis")
    out = list(shapes[0])
    out[axis] = sum(shape[axis] for shape in shapes)
    return Step(tuple(out), math.prod(out))


def _dense(config: dict, shapes: list[Shape]) -> Step:
    shape = one_input(shapes)
    units = positive_int(config.get("units"), "units")
    weights = shape[-1] * units + bool(config.get("use_bias", True)) * units
    return Step((*shape[:-1], units), 2 * math.prod(shape) * units, weights)


def _einsum_dense(config: dict, shapes: list[Shape]) -> Step:
    """EinsumDense without an ellipsis ("bmi,miu->bmu") or with a leading one ("...i,iu->...u")."""
    shape = (1, *one_input(shapes))  # a batch of one slice
    try:
        left, output = str(config["equation"]).split("->")
        given, kernel = left.split(",")
    except ValueError:
        raise ShapeError("its equation is not 'input,kernel->output'") from None
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
        raise ShapeError("its equation places '...' where we cannot follow it")
    if len(given) != len(shape) or len(named) != len(wanted):
        raise ShapeError("its equation does not fit its input or output_shape")
    sizes.update(zipped(given, shape))
    for letter, size in zipped(named, wanted):
        sizes.setdefault(letter, positive_int(size, "output_shape") if size is not None else 0)
    if any(letter not in sizes or not sizes[letter] for letter in kernel + output):
        raise ShapeError("its equation names a size it does not give")
    out = elided + tuple(sizes[letter] for letter in output)
    bias_axes = config.get("bias_axes")
    bias = math.prod(sizes[letter] for letter in bias_axes) if bias_axes else 0
    weights = math.prod(sizes[letter] for letter in kernel) + bias
    return Step(out[1:], 2 * math.prod(elided) * math.prod(sizes.values()), weights)


def _flatten(config: dict, shapes: list[Shape]) -> Step:
    return Step((math.prod(one_input(shapes)),))


def _reshape(config: dict, shapes: list[Shape]) -> Step:
    shape = one_input(shapes)
    if "newshape" in config:  # keras.ops.reshape: the batch axis comes first
        target = list(config["newshape"])
        if not target or target[0] not in (-1, None):
            raise ShapeError("it reshapes across the batch axis")
        return Step(reshaped(shape, target[1:]))
    return Step(reshaped(shape, list(config.get("target_shape"))))


def _permute(config: dict, shapes: list[Shape]) -> Step:
    shape, dims = one_input(shapes), list(config.get("dims"))
    if sorted(dims) != list(range(1, len(shape) + 1)):
        raise ShapeError(f"dims {dims} are not a permutation of its axes")
    return Step(tuple(shape[dim - 1] for dim in dims), math.prod(shape))


def _transpose(config: dict, shapes: list[Shape]) -> Step:
    shape, axes = one_input(shapes), config.get("axes")
    if axes is None:
        raise ShapeError("it would move the batch axis")
    if list(axes)[:1] != [0] or sorted(axes) != list(range(len(shape) + 1)):
        raise ShapeError(f"axes {axes} keep the batch axis first")
    return Step(tuple(shape[axis - 1] for axis in axes[1:]), math.prod(shape))


def _tile(config: dict, shapes: list[Shape]) -> Step:
    shape = one_input(shapes)
    repeats = ints(config.get("repeats"), len(shape) + 1, "repeats")
    if repeats[0] != 1:
        raise ShapeError("it repeats the batch axis")
    out = tuple(size * repeat for size, repeat in zipped(shape, repeats[1:]))
    return Step(out, math.prod(out))


def _repeat_vector(config: dict, shapes: list[Shape]) -> Step:
    shape = one_input(shapes)
    if len(shape) != 1:
        raise ShapeError("it repeats vectors, not tensors of higher rank")
    out = (positive_int(config.get("n"), "n"), shape[0])
    return Step(out, math.prod(out))


def _reduce(config: dict, shapes: list[Shape]) -> Step:
    shape = one_input(shapes)
    if config.get("axis") is None:
        raise ShapeError("it reduces across the batch")
    axes = set(slice_axes(config["axis"], len(shape)))
    keep = bool(config.get("keepdims"))
    out = tuple(1 if i in axes else n for i, n in enumerate(shape) if keep or i not in axes)
    return Step(out, math.prod(shape))


def _upsampling_rule(rank: int) -> Rule:
    def rule(config: dict, shapes: list[Shape]) -> Step:
        spatial, channels, first = split_channels(one_input(shapes), config, rank)
        factors = ints(config.get("size", 2), rank, "size")
        shape = join_channels(tuple(n * f for n, f in zipped(spatial, factors)), channels, first)
        return Step(shape, 4 * math.prod(shape))

    return rule


def _padding_rule(rank: int, sign: int, key: str) -> Rule:
    """ZeroPadding (sign 1) and Cropping (sign -1) in 1, 2 or 3 dimensions."""

    def rule(config: dict, shapes: list[Shape]) -> Step:
        spatial, channels, first = split_channels(one_input(shapes), config, rank)
        value = config.get(key, 1)
        sides = [value] * rank if isinstance(value, int) else list(value)
        if rank == 1 and len(sides) == 2 and all(isinstance(side, int) for side in sides):
            sides = [sides]
        if len(sides) != rank:
            raise ShapeError(f"{key} {value!r} does not have {rank} values")
        totals = [side * 2 if isinstance(side, int) else sum(side) for side in sides]
        if any(not isinstance(total, int) or total < 0 for total in totals):
            raise ShapeError(f"{key} {value!r} is not whole numbers")
        out = tuple(n + sign * total for n, total in zipped(spatial, totals))
        if min(out) < 1:
            raise ShapeError("it crops away its whole input")
        shape = join_channels(out, channels, first)
        return Step(shape, math.prod(shape))

    return rule


def _resize(config: dict, shapes: list[Shape]) -> Step:
    _, channels, first = split_channels(one_input(shapes), config, 2)
    out = (positive_int(config.get("height"), "height"), positive_int(config.get("width"), "width"))
    shape = join_channels(out, channels, first)
    return Step(shape, 4 * math.prod(shape))


def _quantiles(config: dict, shapes: list[Shape]) -> Step:
    """Our IntensityEdgeQuantiles: a histogram of every pixel and edge strength of the slice; an
    explanation's backward pass sorts them (bounded as that sort)."""
    size = math.prod(one_input(shapes))
    quantiles = positive_int(config.get("quantiles", 128), "quantiles")
    return Step((2 * quantiles,), 8 * size * max(size, 2).bit_length())


_ACTIVATION_OPS = _names(
    "Relu Relu6 Sigmoid HardSigmoid Silu Swish HardSilu HardSwish Gelu Elu Selu Celu LeakyRelu "
    "Softplus Softsign Softmax LogSoftmax LogSigmoid Tanh Abs Absolute Negative Exp Expm1 Log "
    "Log1p Sqrt Rsqrt Square Sign Floor Ceil Round Clip Cast Erf Sin Cos Reciprocal StopGradient"
)
BROADCASTING = _names("Add Subtract Multiply Divide TrueDivide Maximum Minimum Power Average")
"""Merges whose inputs broadcast: the only layers a call may also pass constants to."""
_SHAPE_KEEPING = _names(
    "Activation ReLU LeakyReLU ELU Softmax Dropout SpatialDropout1D SpatialDropout2D "
    "SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Identity "
    "Masking Rescaling UnitNormalization RandomFlip RandomRotation RandomZoom RandomTranslation "
    "RandomContrast RandomBrightness"
)


def _spatial_rules() -> dict[str, Rule]:
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


RULES: dict[str, Rule] = {
    **dict.fromkeys((*_SHAPE_KEEPING, *_ACTIVATION_OPS), _elementwise()),
    **dict.fromkeys(BROADCASTING, _merge),
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
RULES.update(_spatial_rules())

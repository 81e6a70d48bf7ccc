"""Shape arithmetic for one slice's tensors, as the layer rules (`layer_rules`) use it.

A shape here has no batch axis; Keras axes (which count the batch axis as 0) are turned into
indices of that shape. A size or a setting that does not fit raises `ShapeError`, whose message
says why in words a visitor can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, ...]
"""One tensor's shape for one slice: no batch axis."""


class ShapeError(ValueError):
    """A layer whose output we cannot work out from its config and its input shapes."""


@dataclass(frozen=True)
class Step:
    """One call of one layer: its output's shape, its floating-point operations and weights."""

    shape: Shape
    flops: int = 0
    parameters: int = 0


def zipped(*sequences: tuple) -> zip:
    """`zip` for sequences already checked to be of one length."""
    return zip(*sequences, strict=True)


def one_input(shapes: list[Shape]) -> Shape:
    if len(shapes) != 1:
        raise ShapeError(f"it takes one input, not {len(shapes)}")
    return shapes[0]


def positive_int(value: object, what: str = "a size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"{what} {value!r} is not a positive whole number")
    return value


def ints(value: object, rank: int, what: str) -> tuple[int, ...]:
    values = [value] * rank if isinstance(value, int) else value
    if not isinstance(values, list | tuple) or len(values) != rank:
        raise ShapeError(f"{what} {value!r} does not have {rank} values")
    return tuple(positive_int(item, what) for item in values)


def slice_axis(value: object, rank: int) -> int:
    """A Keras axis (counting the batch axis as 0) as an index into a per-slice shape."""
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        raise ShapeError(f"axis {value!r} is not an axis of one slice")
    index = value - 1 if value > 0 else rank + value
    if not 0 <= index < rank:
        raise ShapeError(f"axis {value} is outside a tensor of rank {rank + 1}")
    return index


def slice_axes(value: object, rank: int) -> list[int]:
    return [slice_axis(item, rank) for item in (value if isinstance(value, list) else [value])]


def split_channels(shape: Shape, config: dict, rank: int) -> tuple[Shape, int, bool]:
    if len(shape) != rank + 1:
        raise ShapeError(f"it needs inputs of rank {rank + 2}, not {len(shape) + 1}")
    first = config.get("data_format") == "channels_first"
    return (shape[1:], shape[0], first) if first else (shape[:-1], shape[-1], first)


def join_channels(spatial: Shape, channels: int, first: bool) -> Shape:
    return (channels, *spatial) if first else (*spatial, channels)


def window_length(length: int, size: int, stride: int, dilation: int, padding: object) -> int:
    span = dilation * (size - 1) + 1
    if padding == "valid":
        out = (length - span) // stride + 1
    elif padding in ("same", "causal"):
        out = -(-length // stride)
    else:
        raise ShapeError(f"padding {padding!r} is not 'valid' or 'same'")
    if out < 1:
        raise ShapeError("its input is smaller than its window")
    return out


def transposed_length(
    length: int, size: int, stride: int, dilation: int, padding: object, extra: object
) -> int:
    span = dilation * (size - 1) + 1
    if padding not in ("valid", "same"):
        raise ShapeError(f"padding {padding!r} is not 'valid' or 'same'")
    if extra is None:
        return length * stride + (max(span - stride, 0) if padding == "valid" else 0)
    pad = span // 2 if padding == "same" else 0
    return max((length - 1) * stride + span - 2 * pad + int(extra), 1)


def broadcast(shapes: list[Shape]) -> Shape:
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + shape for shape in shapes]
    out = []
    for sizes in zipped(*padded):
        wide = {size for size in sizes if size != 1}
        if len(wide) > 1:
            raise ShapeError(f"its inputs' shapes {shapes} do not broadcast")
        out.append(wide.pop() if wide else 1)
    return tuple(out)


def reshaped(shape: Shape, target: list) -> Shape:
    size, free = math.prod(shape), [i for i, value in enumerate(target) if value in (-1, None)]
    known = math.prod(
        positive_int(value, "a target size") for value in target if value not in (-1, None)
    )
    if len(free) > 1 or (free and size % known) or (not free and known != size):
        raise ShapeError(f"{shape} cannot be reshaped to {target}")
    return tuple(size // known if value in (-1, None) else value for value in target)

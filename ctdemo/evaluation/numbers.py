"""How a reported number is held and shown: an interval, None for undefined, "n/a" for people.

Apart from `metrics` so that a page can show a card's numbers without importing scipy (its
statistics cost the first paint about 60 MB and a second; benchmarks/sklearn_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """For a report or a card: None where undefined (JSON has no NaN)."""
        return {key: defined(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, float | None]) -> Interval:
        """The inverse of `to_dict`: None becomes NaN again."""
        return cls(**{key: math.nan if value is None else value for key, value in values.items()})


def defined(value: float) -> float | None:
    """`value`, or None where it is undefined (NaN or infinite)."""
    return float(value) if math.isfinite(value) else None


def shown(value: float | None, pattern: str = "{:.1%}") -> str:
    """A reported number for a person: "n/a" where it is undefined."""
    return "n/a" if value is None or not math.isfinite(value) else pattern.format(value)

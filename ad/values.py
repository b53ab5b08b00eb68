"""One-line checks of config values (counts, sizes, fractions, seeds). The trainer, the data layer, the
evaluation settings, the launchers and `ad.predict` all check their values here, so a bad value reads the same
wherever it is set: `key=value is not an integer; set key=<integer> >= 1` or `key=value must be >= 1`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, Sequence, Tuple, Type, Union

from ad.errors import ConfigError


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range(low: Optional[float], high: Optional[float], high_open: bool, low_open: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {_fmt(low)}"
    if low is None:
        return f" {'<' if high_open else '<='} {_fmt(high)}"
    return f" in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"


def _parse(value: Any, kind: type):
    """`value` as `kind`, or None when it is not one. Text is parsed (command-line values arrive as text);
    bools are refused (`True` is not a count), and so are floats with a fraction where an int is wanted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if kind is int and isinstance(value, float) and not value.is_integer():
        return None
    return kind(value)


def number(value: Any, key: str, kind: type = int, low: Optional[float] = None, high: Optional[float] = None,
           high_open: bool = False, optional: bool = False, null_means: str = "",
           error: Type[Exception] = ConfigError, low_open: bool = False):
    """`value` as `kind` (int or float) within [low, high] (`low_open`/`high_open`: the bound itself excluded),
    or `error` naming the key and the allowed values. With `optional`, None passes through (`null_means` says
    what null does, for the message)."""
    if value is None and optional:
        return None
    allowed = _range(low, high, high_open, low_open)
    null = f" or null ({null_means})" if optional and null_means else (" or null" if optional else "")
    parsed = _parse(value, kind)
    if parsed is None:
        what = "an integer" if kind is int else "a number"
        raise error(f"{key}={value!r} is not {what}; set {key}=<{'integer' if kind is int else 'number'}>"
                    f"{allowed}{null}")
    if (low is not None and (parsed <= low if low_open else parsed < low)) or \
            (high is not None and (parsed >= high if high_open else parsed > high)):
        raise error(f"{key}={parsed!r} must be{allowed}{null}")
    return parsed


def positive_int(value: Any, key: str, optional: bool = False, null_means: str = "",
                 error: Type[Exception] = ConfigError) -> Optional[int]:
    """A count or size: an integer >= 1 (None passes with `optional`)."""
    return number(value, key, int, low=1, optional=optional, null_means=null_means, error=error)


def boolean(value: Any, key: str, error: Type[Exception] = ConfigError) -> bool:
    """A switch given as text or bool: true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise error(f"{key}={value!r} is not a boolean; use {key}=true or {key}=false")
    return v in ("1", "true", "yes", "on")


def non_negative_int(value: Any, key: str, error: Type[Exception] = ConfigError) -> int:
    """A count where 0 means none (loader workers, decode threads)."""
    return number(value, key, int, low=0, error=error)


@dataclass(frozen=True)
class Range:
    """The allowed interval of a number, declared in a signature: `Annotated[float, Range(0, 1, low_open=True)]`.
    The config schema (`ad.schema`) reads it from the constructor's signature and checks it with `number`."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any, key: str, kind: type, optional: bool = False):
        return number(value, key, kind, low=self.low, high=self.high, low_open=self.low_open,
                      high_open=self.high_open, optional=optional)

    def describe(self) -> str:
        return _range(self.low, self.high, self.high_open, self.low_open).strip()


# The value kinds of the constructors' signatures (one vocabulary for every model, dataset and trainer option).
PositiveInt = Annotated[int, Range(1)]  # a count or size
NonNegativeInt = Annotated[int, Range(0)]  # a count where 0 means none, a seed
PositiveFloat = Annotated[float, Range(0, low_open=True)]  # a learning rate, a regulariser ε, a scale
NonNegativeFloat = Annotated[float, Range(0)]  # a weight decay, a smoothing σ (0 = none)
Fraction = Annotated[float, Range(0, 1, low_open=True)]  # a share of something: (0, 1]
UnitInterval = Annotated[float, Range(0, 1)]  # a probability or weight: [0, 1]
OpenUnitInterval = Annotated[float, Range(0, 1, low_open=True, high_open=True)]  # a quantile: (0, 1)
Momentum = Annotated[float, Range(0, 1, high_open=True)]  # an Adam beta / SGD momentum: [0, 1)


def image_size(value: Any, key: str, error: Type[Exception] = ConfigError) -> Tuple[int, int]:
    """An image side `N` or `[height, width]` of positive integers, as (h, w)."""
    items = list(value) if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict))) else [value]
    if len(items) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise error(f"{key}={_show(value)} is not a positive integer side or [height, width]; "
                    f"set e.g. {key}=256 or {key}=[256,320]")
    return (items[0], items[-1])


def _show(value: Any) -> str:
    try:
        return repr(list(value)) if not isinstance(value, (str, int, float)) else repr(value)
    except TypeError:
        return repr(value)


@dataclass(frozen=True)
class Check:
    """A value check declared in a signature, for kinds a range cannot say: `Annotated[..., Check(image_size)]`.
    `func(value, key)` raises ConfigError with its own one-line message."""

    func: Callable[[Any, str], Any]


ImageSize = Annotated[Union[int, Sequence[int]], Check(image_size)]  # 256 or [height, width]

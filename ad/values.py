"""One-line checks of config values (counts, sizes, fractions, seeds). The trainer, the data layer, the
evaluation settings, the launchers and `ad.predict` all check their values here, so a bad value reads the same
wherever it is set: `key=value is not an integer; set key=<integer> >= 1` or `key=value must be >= 1`."""
from __future__ import annotations

import math
from typing import Any, Optional, Type

from ad.errors import ConfigError


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"  # integers in full: 4294967295, not 4.29497e+09


def _range(low: Optional[float], high: Optional[float], high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" >= {_fmt(low)}"
    if low is None:
        return f" <= {_fmt(high)}"
    return f" in [{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"


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
           error: Type[Exception] = ConfigError):
    """`value` as `kind` (int or float) within [low, high] (or [low, high)), or `error` naming the key and the
    allowed values. With `optional`, None passes through (`null_means` says what null does, for the message)."""
    if value is None and optional:
        return None
    allowed = _range(low, high, high_open)
    null = f" or null ({null_means})" if optional and null_means else (" or null" if optional else "")
    parsed = _parse(value, kind)
    if parsed is None:
        what = "an integer" if kind is int else "a number"
        raise error(f"{key}={value!r} is not {what}; set {key}=<{'integer' if kind is int else 'number'}>"
                    f"{allowed}{null}")
    if (low is not None and parsed < low) or (high is not None and (parsed >= high if high_open else parsed > high)):
        raise error(f"{key}={parsed!r} must be{allowed}{null}")
    return parsed


def positive_int(value: Any, key: str, optional: bool = False, null_means: str = "",
                 error: Type[Exception] = ConfigError) -> Optional[int]:
    """A count or size: an integer >= 1 (None passes with `optional`)."""
    return number(value, key, int, low=1, optional=optional, null_means=null_means, error=error)


def non_negative_int(value: Any, key: str, error: Type[Exception] = ConfigError) -> int:
    """A count where 0 means none (loader workers, decode threads)."""
    return number(value, key, int, low=0, error=error)

"""Command-line overrides checked before Hydra parses them, so the two ways a path trips Hydra's override grammar
get one line with the fix instead of a parser error: a comma (Hydra reads `a,b` as sweep values) and a
character outside the grammar's unquoted set (non-ASCII letters such as `ä`, or `()[]{}`...). Both are fixed by
quoting the value for Hydra inside the shell's quotes: `"dataset.root='/data/a,b'"`."""
from __future__ import annotations

from typing import List, Optional, Sequence

# Hydra flags that take the next argument as their value (it is not an override).
_FLAGS_WITH_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                     "--info", "-i", "--package", "-p")


def overrides_of(argv: Sequence[str]) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in _FLAGS_WITH_VALUE
            continue
        out.append(a)
    return out


def override_problem(argv: Sequence[str]) -> Optional[str]:
    """One line for the first override Hydra cannot take as the user meant, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    multirun = any(a in ("-m", "--multirun") for a in argv)
    parser = OverridesParser.create()
    for text in overrides_of(argv):
        key, sep, value = text.partition("=")
        if not sep:
            continue
        quoted = f"\"{key}='{value}'\""
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException:
            odd = sorted({c for c in value if not c.isascii()} or {c for c in value if c in "()[]{}'\"\\ "})
            what = (f"non-ASCII character(s) {' '.join(odd)}" if odd and not odd[0].isascii()
                    else f"character(s) {' '.join(odd)}" if odd else "characters")
            return (f"{text}: Hydra's override grammar does not take {what} in an unquoted value; quote the value "
                    f"for Hydra inside the shell's quotes: {quoted}")
        if override.is_sweep_override() and not multirun and "," in value:
            return (f"{text}: a comma separates sweep values in a Hydra override; for one value that contains a "
                    f"comma (e.g. a path) quote it for Hydra inside the shell's quotes: {quoted} (or add -m to sweep "
                    "over the values)")
    return None


__all__ = ["override_problem", "overrides_of"]

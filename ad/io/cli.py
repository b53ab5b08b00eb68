"""The `key=value` command lines of the tools that are not Hydra apps (`ad.predict`, `ad.export`, `ad.serve`,
`ad.deploy.predict`, `ad.submission.mvtec_ad2`): one parser, so that every tool refuses an unknown or
misspelled key in one line instead of ignoring it, and one way to print help and errors. Torch-free."""
from __future__ import annotations

import sys
from typing import Callable, Collection, Dict, List, Optional, Sequence

from ad.errors import ADError, ConfigError


def parse_key_values(argv: Sequence[str], keys: Collection[str], required: Sequence[str], usage: str) -> Dict[str, str]:
    """`key=value` arguments as a dict. An argument without `=`, a key not in `keys` or a repeated key is a
    one-line ConfigError with the usage; so is a missing required key."""
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in keys:
            raise ConfigError(f"unknown argument '{a}'; {usage}")
        if key in args:
            raise ConfigError(f"{key}= is given twice ({key}={args[key]} and {a}); {usage}")
        args[key] = value
    for key in required:
        if key not in args:
            raise ConfigError(f"missing {key}=...; {usage}")
    return args


def run_tool(argv: Optional[Sequence[str]], doc: str, usage: str, body: Callable[[List[str]], int],
             error_codes: Optional[Dict[type, int]] = None) -> int:
    """A tool's `main`: `-h`/`--help` prints `doc` and `usage`; `body(argv)` runs, and an `ADError` it raises is
    printed as one line `error: ...` on stderr with exit status 2 (or the first matching `error_codes` entry)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc.strip() + "\n\n" + usage)
        return 0
    try:
        return body(args)
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return next((code for kind, code in (error_codes or {}).items() if isinstance(exc, kind)), 2)

"""`python -m ad.export run_dir=<run> [format=onnx|openvino] [images=<folder>] [out=<dir>]`."""
from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

from ad.errors import ADError, ConfigError

USAGE = "usage: python -m ad.export run_dir=<run dir> [format=onnx|openvino] [images=<image folder for the parity check>] [out=<dir>]"
KEYS = ("run_dir", "format", "images", "out")


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unknown argument '{a}'; {USAGE}")
        args[key] = value
    if "run_dir" not in args:
        raise ConfigError(f"missing run_dir=...; {USAGE}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        from ad.export.run import check_format, describe, export_run

        args = parse_args(argv)
        fmt = check_format(args.get("format", "onnx"))
        out = export_run(args["run_dir"], fmt, images=args.get("images"), out=args.get("out"))
        print(describe(out))
        return 0
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

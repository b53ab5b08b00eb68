"""`python -m ad.export run_dir=<run> [format=onnx|openvino] [images=<folder>] [out=<dir>]`."""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

from ad.io.cli import parse_key_values, run_tool

USAGE = "usage: python -m ad.export run_dir=<run dir> [format=onnx|openvino] [images=<image folder for the parity check>] [out=<dir>]"
KEYS = ("run_dir", "format", "images", "out")


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    return parse_key_values(argv, KEYS, ("run_dir",), USAGE)


def _export(argv: List[str]) -> int:
    from ad.export.run import check_format, describe, export_run

    args = parse_args(argv)
    fmt = check_format(args.get("format", "onnx"))
    out = export_run(args["run_dir"], fmt, images=args.get("images"), out=args.get("out"))
    print(describe(out))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(argv, __doc__, USAGE, _export)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m ad.serve model=<export dir> [host=127.0.0.1] [port=8000] [threads=<n>]`: the scoring service."""
from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

from ad.errors import ADError, ConfigError

USAGE = "usage: python -m ad.serve model=<export dir> [host=127.0.0.1] [port=8000] [threads=<n>]"
KEYS = ("model", "host", "port", "threads")


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unknown argument '{a}'; {USAGE}")
        args[key] = value
    if "model" not in args:
        raise ConfigError(f"missing model=...; {USAGE}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        from ad.values import positive_int

        args = parse_args(argv)
        port = positive_int(args.get("port", "8000"), "port")
        if port > 65535:
            raise ConfigError(f"port={port} is not a TCP port; use 1-65535")
        threads = positive_int(args["threads"], "threads") if "threads" in args else None
        try:
            import uvicorn

            from ad.serve.app import create_app
        except ImportError as exc:
            raise ConfigError(f"the service needs {exc.name}; pip install 'ad[serve]' (fastapi, uvicorn, "
                              "python-multipart)") from None
        app = create_app(args["model"], threads=threads)
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.get("host", "127.0.0.1"), port=port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())

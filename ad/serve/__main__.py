"""`python -m ad.serve model=<export dir> [host=127.0.0.1] [port=8000] [threads=<n>]`: the scoring service."""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

from ad.errors import ConfigError
from ad.io.cli import parse_key_values, run_tool

USAGE = "usage: python -m ad.serve model=<export dir> [host=127.0.0.1] [port=8000] [threads=<n>]"
KEYS = ("model", "host", "port", "threads")


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    return parse_key_values(argv, KEYS, ("model",), USAGE)


def _serve(argv: List[str]) -> int:
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
    uvicorn.run(app, host=args.get("host", "127.0.0.1"), port=port, log_level="info")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(argv, __doc__, USAGE, _serve)


if __name__ == "__main__":
    sys.exit(main())

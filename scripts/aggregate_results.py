#!/usr/bin/env python
"""Tables and plots from sweep directories: scripts/aggregate_results.py SWEEP_DIR... [--out DIR] (see ad.aggregate).

Same as the `ad-aggregate` console script; runs from a checkout without installing the package.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad.aggregate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

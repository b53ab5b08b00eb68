import sys

from ad.aggregate.cli import main

sys.exit(main())

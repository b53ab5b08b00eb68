import sys

from ad.report.build import main

sys.exit(main())

"""`python -m coordinator.cli ...`, the same as `coordinator ...`."""

import sys

from coordinator.cli import main

sys.exit(main())

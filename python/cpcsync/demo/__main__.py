"""``python -m cpcsync.demo``: run the demo."""

import sys

from cpcsync.demo import main

sys.exit(main())

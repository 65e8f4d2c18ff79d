"""``python -m smoothjax.analysis LOG [LOG ...]``: see ``smoothjax.analysis.cli``."""

import sys

from smoothjax.analysis.cli import main

sys.exit(main())

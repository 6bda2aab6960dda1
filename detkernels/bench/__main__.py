"""``python -m detkernels.bench``: see detkernels/bench/__init__.py."""
import sys

from . import main

sys.exit(main())

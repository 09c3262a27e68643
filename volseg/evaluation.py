"""Old import path of :mod:`volseg.training.evaluation`, kept for one release (the README showed it)."""

import sys

from volseg.training import evaluation as _module

sys.modules[__name__] = _module

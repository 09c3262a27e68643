"""Old import path of :mod:`volseg.inference.fast_layers`, kept for one release (the README showed it)."""

import sys

from volseg.inference import fast_layers as _module

sys.modules[__name__] = _module

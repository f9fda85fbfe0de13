"""Deprecated: the datasets moved to `keras_dctsparse.experiments.data`.

This module re-exports that module's public names and warns on import; import
`keras_dctsparse.experiments.data` instead.
"""

import warnings

from keras_dctsparse.experiments.data import *  # noqa: F401,F403
from keras_dctsparse.experiments.data import __all__  # noqa: F401

warnings.warn(
    "keras_dctsparse.data moved to keras_dctsparse.experiments.data; import it from "
    "there (keras_dctsparse.data will be removed)",
    DeprecationWarning,
    stacklevel=2,
)

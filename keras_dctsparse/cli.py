"""Former location of the `dctsparse` command line: see `keras_dctsparse.experiments.cli`.

Kept so that `dctsparse` scripts installed before the command line moved (their
entry point is `keras_dctsparse.cli:main`) keep working; reinstalling the
package points the script at `keras_dctsparse.experiments.cli:main`.
"""

from keras_dctsparse.experiments.cli import main

__all__ = ["main"]

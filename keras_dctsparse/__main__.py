"""`python -m keras_dctsparse`: the `dctsparse` command line."""

import sys

from keras_dctsparse.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())

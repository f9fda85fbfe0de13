"""pytest configuration of the docstring examples (`--doctest-modules keras_dctsparse`).

The examples run as a user reads them: with `np` (numpy), `keras`, `tf`
(TensorFlow backend only) and the public names of `keras_dctsparse`
(`DCTSparseDense`, `sparsify`, ...) already imported.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_imports(request):
    if getattr(request.node, "dtest", None) is None:  # not a docstring example
        return
    import keras
    import numpy as np

    import keras_dctsparse

    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(np=np, keras=keras)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        namespace["tf"] = tf
    for name in keras_dctsparse.__all__:
        namespace[name] = getattr(keras_dctsparse, name)

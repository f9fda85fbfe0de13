"""The library imports neither TensorFlow Datasets nor scikit-learn, nor the application.

Only the command line (`keras_dctsparse.experiments`) uses them: its datasets
import TFDS and scikit-learn when a dataset is loaded. Note that Keras itself
imports scikit-learn when it is installed (`keras.wrappers`), so "not in
`sys.modules`" cannot be asked of a process that imports Keras; what is checked
is that no module of the library imports them, at import time (in a fresh
interpreter where they cannot be imported) and anywhere in its source.
"""

import ast
import json
import os
import subprocess
import sys

import keras_dctsparse

PACKAGE_DIR = os.path.dirname(os.path.abspath(keras_dctsparse.__file__))
# The application: the command line and what only it uses. `keras_dctsparse.cli` and
# `keras_dctsparse.data` are the former locations (re-exports) of two of its modules.
APPLICATION = ("keras_dctsparse.experiments", "keras_dctsparse.cli", "keras_dctsparse.data",
               "keras_dctsparse.__main__")
BLOCKED = ("sklearn", "tensorflow_datasets")


def _is_in(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def library_modules():
    """(module name, path) of every module of keras_dctsparse outside the application."""
    found = []
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            if not _is_in(name, APPLICATION):
                found.append((name, path))
    return sorted(found)


_SCRIPT = """
import importlib, json, sys

blocked, library = json.loads(sys.argv[1]), json.loads(sys.argv[2])
attempts = []


class Block:
    # As if these packages were not installed; records which module imported them.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in blocked:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("importlib", "_frozen_importlib")
        ):
            frame = frame.f_back
        attempts.append([name, frame.f_globals.get("__name__") if frame else None])
        raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


sys.meta_path.insert(0, Block())
import keras_dctsparse

for name in library:
    importlib.import_module(name)
application_loaded = sorted(m for m in sys.modules if m.startswith("keras_dctsparse.experiments"))
library_attempts = list(attempts)

# Control: the command line's digits do import scikit-learn (and fail here).
from keras_dctsparse.experiments import data
try:
    data.load_dataset("digits")
    loaded_digits = True
except ImportError:
    loaded_digits = False
print(json.dumps({"library_attempts": library_attempts, "application": application_loaded,
                  "all_attempts": attempts, "loaded_digits": loaded_digits}))
"""


def test_library_modules_import_neither_tfds_nor_sklearn_nor_the_application():
    names = [name for name, _ in library_modules()]
    for module in ("keras_dctsparse", "keras_dctsparse.layers.dense",
                   "keras_dctsparse.ops.sparse_matmul", "keras_dctsparse.export.tflite",
                   "keras_dctsparse.models.lenet", "keras_dctsparse.convert",
                   "keras_dctsparse.report", "keras_dctsparse.callbacks",
                   "keras_dctsparse.dynamic_sparsity", "keras_dctsparse.training"):
        assert module in names
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(BLOCKED), json.dumps(names)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [[module, importer] for module, importer in result["library_attempts"]
            if importer and importer.startswith("keras_dctsparse")]
    assert ours == []
    assert result["application"] == []
    # The check sees an import of a blocked package by one of our modules.
    assert not result["loaded_digits"]
    assert ["sklearn", "keras_dctsparse.experiments.data"] in result["all_attempts"]


def _imported_names(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_library_source_has_no_import_of_tfds_sklearn_or_the_application():
    # Also the imports inside functions, which the import-time check cannot see.
    forbidden = BLOCKED + APPLICATION
    found = []
    for name, path in library_modules():
        with open(path) as file:
            tree = ast.parse(file.read(), path)
        found += [(name, imported) for imported in _imported_names(tree)
                  if _is_in(imported, forbidden)]
    assert found == []
    # The scan finds such imports where they are.
    with open(os.path.join(PACKAGE_DIR, "experiments", "data.py")) as file:
        names = set(_imported_names(ast.parse(file.read())))
    assert {"sklearn.datasets", "tensorflow_datasets"} <= names


_IMPORT_CHECK = """
import importlib, json, sys

import keras  # Keras itself imports scikit-learn when it is installed (keras.wrappers).

def blocked():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "tensorflow_datasets"))

before = blocked()
import keras_dctsparse
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
assert "tensorflow_datasets" not in sys.modules, "tensorflow_datasets imported"
assert blocked() == before, sorted(set(blocked()) - set(before))
import keras_dctsparse.data  # the deprecated re-export: the application, imported on demand
print(json.dumps({"before": before, "after_data": blocked()}))
"""


def test_importing_the_library_loads_neither_tfds_nor_sklearn():
    # In a fresh interpreter where both may be installed: nothing of ours imports them.
    names = [name for name, _ in library_modules()]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _IMPORT_CHECK,
         json.dumps(names)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Only Keras's own scikit-learn import (if any) was there before ours.
    assert all(m.split(".")[0] == "sklearn" for m in result["before"])


def test_tfds_and_sklearn_are_an_extra_not_a_requirement():
    import configparser

    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(PACKAGE_DIR), "setup.cfg"))

    def requirements(text):
        return {line.split(">")[0].split("=")[0].strip() for line in text.strip().splitlines()
                if line.strip() and not line.strip().startswith("#")}

    required = requirements(config["options"]["install_requires"])
    assert {"tensorflow", "keras", "numpy"} <= required
    assert not required & {"tensorflow-datasets", "scikit-learn"}
    extras = config["options.extras_require"]
    assert {"tensorflow-datasets", "scikit-learn"} <= requirements(extras["experiments"])
    # The tests exercise keras_dctsparse.experiments, and the README's main command
    # installs the dctsparse command line with the cli extra.
    assert {"tensorflow-datasets", "scikit-learn"} <= requirements(extras["test"])
    assert {"tensorflow-datasets", "scikit-learn"} <= requirements(extras["cli"])

"""The application side of keras_dctsparse: the `dctsparse` command line.

The library (`import keras_dctsparse`: the layers, ops, `sparsify`, the report,
the callbacks, export) never imports this subpackage; it holds what the
command line needs on top:

* `cli`: argument parsing and `main`, the `dctsparse` command
  (also `python -m keras_dctsparse`).
* `recipe`: the choices of the command line and the default training recipe.
* `common`: the command line's error type and the helpers its commands share
  (loading data and models, output folders, atomic writes).
* `train`: the `train` command.
* `saved_models`: the `evaluate` and `export` commands.
* `sweep`: the `sweep` command.
* `tables`: a sweep's summary, Markdown/CSV tables and plot.
* `runs`: the stored configuration and progress of a `train` run.
* `data`: datasets (scikit-learn digits, MNIST/Fashion-MNIST IDX files, CIFAR
  binaries, TensorFlow Datasets) and `tf.data` input pipelines.

Importing this package imports neither TensorFlow nor Keras: the command line
parses its arguments first.
"""

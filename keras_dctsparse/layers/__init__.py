"""The DCT-plus-sparse Keras layers."""

from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.layers.dense import DCTSparseDense

"""The DCT-plus-sparse Keras layers."""

from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.layers.dense import DCTSparseDense
from keras_dctsparse.layers.conv import DCTSparseConv1D
from keras_dctsparse.layers.conv import DCTSparseConv2D
from keras_dctsparse.layers.conv import DCTSparseDepthwiseConv2D
from keras_dctsparse.layers.einsum_dense import DCTSparseEinsumDense

__all__ = [
    "DCTSparseLayer",
    "DCTSparseDense",
    "DCTSparseConv1D",
    "DCTSparseConv2D",
    "DCTSparseDepthwiseConv2D",
    "DCTSparseEinsumDense",
]

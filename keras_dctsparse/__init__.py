"""keras_dctsparse: dense for the price of sparse (Price & Tanner, ICML 2021).

Every weight matrix is ``W = alpha * D + S``: a fixed orthonormal DCT-II block
``D`` applied by a fast transform, plus a trainable sparse matrix ``S``.
"""

__version__ = "0.1.0"

from keras_dctsparse.layers import DCTSparseDense
from keras_dctsparse.layers import DCTSparseConv1D
from keras_dctsparse.layers import DCTSparseConv2D
from keras_dctsparse.layers import DCTSparseDepthwiseConv2D
from keras_dctsparse.callbacks import EnforceSparsity
from keras_dctsparse.allocation import Allocation
from keras_dctsparse.allocation import allocate_densities
from keras_dctsparse.export import builtin_ops_mode
from keras_dctsparse.export import export_tflite
from keras_dctsparse.convert import sparsify
from keras_dctsparse.report import sparsity_report
from keras_dctsparse import models

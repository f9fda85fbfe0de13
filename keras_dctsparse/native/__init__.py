"""Native CPU kernels: compiled TensorFlow ops for the DCTpS products.

Hand-written C++ (`src/`): the fast DCT-II/III of any length (mixed-radix FFT,
Makhoul's algorithm) and the sparse products `x @ S`, `dy @ S^T` and the sampled
`x^T dy`, vectorized over tiles of batch rows and run on TensorFlow's intra-op
threads. They are compiled on first use for this machine (`build`), loaded as an
op library (`library`), and used only where their graphs are never saved
(`policy`: `set_native_kernels`).
"""

from keras_dctsparse.native.build import BuildError
from keras_dctsparse.native.library import NativeKernelsUnavailable
from keras_dctsparse.native.library import available
from keras_dctsparse.native.library import load
from keras_dctsparse.native.library import unavailable_reason
from keras_dctsparse.native.policy import MODES
from keras_dctsparse.native.policy import allowed_here
from keras_dctsparse.native.policy import get_native_kernels
from keras_dctsparse.native.policy import native_kernels
from keras_dctsparse.native.policy import set_native_kernels

__all__ = [
    "BuildError",
    "NativeKernelsUnavailable",
    "MODES",
    "available",
    "load",
    "unavailable_reason",
    "allowed_here",
    "get_native_kernels",
    "native_kernels",
    "set_native_kernels",
]
